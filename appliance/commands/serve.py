"""`archive-local serve`: the running service on the plain port until SIGTERM/SIGINT;
SIGHUP reloads the configuration file. `runtime.serving` builds and tears down the
service; this command claims the ports and handles the signals."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from pathlib import Path

from appliance import __version__, runtime
from appliance.commands.claim import Listeners
from appliance.config import Config
from appliance.web.admin import ReloadError

log = logging.getLogger("appliance")


def raise_file_limit() -> None:
    """Open files up to the hard limit: every client and download holds descriptors
    (systemd's default soft limit of 1024 would cap the appliance at a few hundred clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d: %s", soft, exc)


async def serve(
    config: Config,
    config_path: Path | None = None,
    worker: int | None = None,
    inherited: Listeners | None = None,
) -> None:
    """Serve until SIGTERM. `worker`: this process's index among `config.workers` (the
    master started it): it serves the master's listening sockets (`inherited`) with its
    siblings, a Unix socket reaches it, and only worker 0 runs the jobs. Without
    `inherited` the port is bound once the service is ready to answer (a port taken
    meanwhile is a `Refused`)."""
    raise_file_limit()

    def listeners() -> Listeners:
        return inherited if inherited is not None else Listeners.bind(config)

    async with runtime.serving(config, config_path, worker, listeners) as app:
        log.info(
            "archive-local %s serving on %s (cache %s)%s",
            __version__,
            config.listen,
            config.cache.dir,
            f" as worker {worker} of {config.workers}" if worker is not None else "",
        )
        await _until_stopped(app, reloads=config_path is not None)


async def _until_stopped(app: runtime.Appliance, reloads: bool) -> None:
    """Wait for SIGTERM or SIGINT; on SIGHUP (with a file to read again) reload."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if reloads:
        running: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = asyncio.create_task(_reload(app))
            running.add(task)
            task.add_done_callback(running.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()


async def _reload(app: runtime.Appliance) -> None:
    try:
        await app.actions.reload()
    except ReloadError as exc:  # a bad file: the old configuration stays
        log.warning("SIGHUP: reload: %s", exc)
