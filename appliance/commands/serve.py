"""`archive-local serve`: the running service on the plain port until SIGTERM/SIGINT;
SIGHUP reloads the configuration file."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from pathlib import Path

from aiohttp import web

from appliance import __version__, runtime
from appliance.config import Config
from appliance.web.accesslog import logger_class
from appliance.web.app import SERVER_LIMITS, Handler
from appliance.web.server import Server, listening_socket

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


async def serve(config: Config, config_path: Path | None = None) -> None:
    raise_file_limit()
    async with runtime.serving(config, config_path) as app:
        server = Server(
            Handler(app).handle,
            connections_per_client=config.limits.connections_per_client,
            access_log=logging.getLogger("appliance.access"),
            access_log_class=logger_class(app.metrics, app.access_log),
            **SERVER_LIMITS,
        )
        app.server = server
        # on SIGTERM: stop listening, let handlers (transfers) finish this long, then go
        runner = web.ServerRunner(server, shutdown_timeout=config.limits.drain_timeout)
        await runner.setup()
        try:
            sock = listening_socket(config.listen)
            site: web.BaseSite = (
                web.SockSite(runner, sock)
                if sock is not None
                else web.TCPSite(runner, config.listen.host, config.listen.port, backlog=1024)
            )
            await site.start()
            log.info(
                "archive-local %s serving on %s (cache %s)",
                __version__,
                config.listen,
                config.cache.dir,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            if config_path is not None:
                reloads: set[asyncio.Task[None]] = set()

                def on_hup() -> None:
                    task = asyncio.create_task(_reload(app))
                    reloads.add(task)
                    task.add_done_callback(reloads.discard)

                loop.add_signal_handler(signal.SIGHUP, on_hup)
            await stop.wait()
            app.drain(True)
            transfers = len(server.connections)
            log.info(
                "shutting down: draining %d connections (at most %s s)",
                transfers,
                config.limits.drain_timeout,
            )
        finally:
            await runner.cleanup()


async def _reload(app: runtime.Appliance) -> None:
    try:
        await app.reload()
    except web.HTTPException as exc:  # a bad file: the old configuration stays
        log.warning("SIGHUP: %s", exc.text.strip() if exc.text else exc.reason)
