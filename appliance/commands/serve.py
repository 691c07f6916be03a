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
from appliance.commands.claim import Listeners
from appliance.config import Config
from appliance.web.accesslog import logger_class
from appliance.web.app import SERVER_LIMITS, Handler
from appliance.web.peers import PeerStreams
from appliance.web.server import Server, TlsListener, TlsSite
from appliance.web.workers import Workers, socket_path

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
    siblings = None
    if worker is not None:
        siblings = Workers(
            worker, [socket_path(config.cache.dir, i) for i in range(config.workers)]
        )
    async with runtime.serving(config, config_path, worker) as app:
        app.workers = siblings
        if siblings is not None:
            app.engine.tell = siblings.tell  # every worker counts the whole directory
        if siblings is not None or config.cache.store is not None:
            timeout = config.upstream.read_timeout
            streams = PeerStreams(siblings, lambda: _peers(app.config), timeout)
            app.peer_streams = app.engine.peers = streams
        server = Server(
            Handler(app).handle,
            connections_per_client=config.limits.connections_per_client,
            access_log=logging.getLogger("appliance.access"),
            access_log_class=logger_class(app.metrics, app.access_log, app.events, app.clients),
            **SERVER_LIMITS,
        )
        app.server = server
        # on SIGTERM: stop listening, let handlers (transfers) finish this long, then go
        runner = web.ServerRunner(server, shutdown_timeout=config.limits.drain_timeout)
        await runner.setup()
        try:
            listeners = inherited if inherited is not None else Listeners.bind(config)
            for sock in listeners.plain:
                await web.SockSite(runner, sock, backlog=1024).start()
            if config.tls is not None and app.tls is not None:
                tls = config.tls.listen
                certificates = app.tls  # read at each accept: a reload's certificate is used
                listener = TlsListener(server, lambda: certificates.context)
                for sock in listeners.tls:
                    await TlsSite(runner, listener, tls, sock).start()
                log.info("HTTPS on %s (certificate sha256 %s)", tls, app.tls.fingerprint)
            if siblings is not None:
                own = siblings.sockets[siblings.index]
                own.parent.mkdir(parents=True, exist_ok=True)
                own.unlink(missing_ok=True)
                inner = web.UnixSite(runner, str(own))
                await inner.start()
                own.chmod(0o600)
            log.info(
                "archive-local %s serving on %s (cache %s)%s",
                __version__,
                config.listen,
                config.cache.dir,
                f" as worker {worker} of {config.workers}" if worker is not None else "",
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
            if app.peer_streams is not None:
                await app.peer_streams.close()
            if siblings is not None:
                await siblings.close()


def _peers(config: Config) -> tuple[str, ...]:
    return config.cache.store.peers if config.cache.store is not None else ()


async def _reload(app: runtime.Appliance) -> None:
    try:
        await app.reload()
    except web.HTTPException as exc:  # a bad file: the old configuration stays
        log.warning("SIGHUP: %s", exc.text.strip() if exc.text else exc.reason)
