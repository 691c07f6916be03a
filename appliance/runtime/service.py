"""`serving()`: the running service, built in order and torn down in reverse by one
`AsyncExitStack`, whatever fails: the core, the apt index table, the parts
(`assemble`), the start-up index of the disk, the access log, the background jobs, mDNS,
the sibling workers and peers, and last the listeners (plain port, HTTPS port, a
worker's Unix socket). On the way out the service drains first: /healthz answers 503
and the transfers under way get `limits.drain_timeout` to finish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from appliance import config as configuration
from appliance.config import Config
from appliance.runtime.appliance import Appliance, assemble
from appliance.runtime.core import core, index_catalog
from appliance.web.server import TlsListener, TlsSite
from appliance.web.tls import Certificates, TlsError

if TYPE_CHECKING:
    from appliance.discovery.mdns import Advertiser

log = logging.getLogger(__name__)


class Sockets(Protocol):
    """The listening sockets, bound by the command (`commands.claim.Listeners`)."""

    plain: list[socket.socket]
    tls: list[socket.socket]


@contextlib.asynccontextmanager
async def serving(
    config: Config,
    config_path: Path | None,
    worker: int | None,
    listeners: Callable[[], Sockets],
) -> AsyncIterator[Appliance]:
    """The service, answering on `listeners()` (called once it is ready to: a port
    bound then is not answered before). `worker`: this process's index among
    `workers: N`; only the primary (the only process, or worker 0) runs the jobs
    (syncs, seeds, expiry) and advertises by mDNS."""
    primary = worker in (None, 0)
    async with contextlib.AsyncExitStack() as stack:
        base = await stack.enter_async_context(core(config, worker=worker))
        catalog = await stack.enter_async_context(index_catalog(base))
        app = assemble(base, catalog, config_path, worker, await _certificates(config))
        logging.getLogger("appliance").addHandler(app.events)
        stack.callback(logging.getLogger("appliance").removeHandler, app.events)
        await app.history.restore()
        stack.push_async_callback(app.history.save)  # after the last transfer: unwound late
        cached = await app.engine.start(sweep=worker is None)
        app.access_log.start()
        stack.push_async_callback(app.access_log.close)
        jobs = [app.maintenance.rebuild_catalog(cached), app.history.keep()]
        if primary:
            app.scheduler.start()
            stack.push_async_callback(app.scheduler.close)
            jobs.append(app.maintenance.expire_periodically(lambda: app.config.cache))
        for job in jobs:
            stack.push_async_callback(_cancel, asyncio.create_task(job))
        advertiser = await _advertise(config) if primary else None
        if advertiser is not None:
            stack.push_async_callback(advertiser.close)
        _join(stack, app)
        await _listen(stack, app, listeners)
        yield app


async def _certificates(config: Config) -> Certificates | None:
    """The HTTPS listener's certificate (made or loaded), when `tls` is set."""
    if config.tls is None:
        return None
    try:
        return await asyncio.to_thread(Certificates, config)
    except TlsError as exc:
        raise configuration.ConfigError(str(exc)) from None


def _join(stack: contextlib.AsyncExitStack, app: Appliance) -> None:
    """The engine tells its siblings what enters and leaves the size cap, and streams
    the lease holders' downloads; both closed after the listeners."""
    if app.workers is not None:
        app.engine.tell = app.workers.tell  # every worker counts the whole directory
        stack.push_async_callback(app.workers.close)
    if app.peer_streams is not None:
        app.engine.peers = app.peer_streams
        stack.push_async_callback(app.peer_streams.close)


async def _listen(
    stack: contextlib.AsyncExitStack, app: Appliance, listeners: Callable[[], Sockets]
) -> None:
    """Answer on the plain and HTTPS sockets, and a worker's own Unix socket."""
    config = app.config
    # on the way out: stop listening, let handlers (transfers) finish this long, then go
    runner = web.ServerRunner(app.server, shutdown_timeout=config.limits.drain_timeout)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    sockets = listeners()
    for sock in sockets.plain:
        await web.SockSite(runner, sock, backlog=1024).start()
    if config.tls is not None and app.tls is not None:
        certificates = app.tls  # read at each accept: a reload's certificate is used
        listener = TlsListener(app.server, lambda: certificates.context)
        for sock in sockets.tls:
            await TlsSite(runner, listener, config.tls.listen, sock).start()
        log.info("HTTPS on %s (certificate sha256 %s)", config.tls.listen, app.tls.fingerprint)
    if app.workers is not None:
        own = app.workers.sockets[app.workers.index]
        own.parent.mkdir(parents=True, exist_ok=True)
        own.unlink(missing_ok=True)
        await web.UnixSite(runner, str(own)).start()
        own.chmod(0o600)
    stack.push_async_callback(_drain, app, config.limits.drain_timeout)  # the first step out


async def _drain(app: Appliance, timeout: float) -> None:
    app.health.drain(True)
    transfers = len(app.server.connections)
    log.info("shutting down: draining %d connections (at most %s s)", transfers, timeout)


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _advertise(config: Config) -> Advertiser | None:
    """mDNS, unless turned off or listening on loopback only (nobody else could use it)."""
    host, discovery = config.listen.host, config.discovery
    if not discovery.mdns or host in ("127.0.0.1", "::1", "localhost"):
        return None
    from appliance.discovery.mdns import Advertiser  # zeroconf: only when it is used

    if host not in ("0.0.0.0", "::", "") and not discovery.interfaces:
        discovery = replace(discovery, interfaces=(host,))  # only where we listen
    advertiser = Advertiser(discovery, config.listen.port)
    try:
        await advertiser.start()
    except OSError as exc:  # no multicast here: the appliance still serves
        log.warning("mDNS: cannot advertise (%s)", exc)
        await advertiser.close()
        return None
    return advertiser
