"""The composition root: the one place that builds the appliance from a `Config`.

`core()` gives every command what it needs to touch the cache (egress policy, fetcher,
engine on the configured store); `serving()` builds the whole running service on it
(apt index table, access log, metrics, jobs, background maintenance, mDNS). Each
resource is entered in order and torn down in reverse by one `AsyncExitStack`, so
nothing a command or the service opens is left open, whatever fails.

The HTTP side (`web.app.Handler`) gets the running `Appliance`; the status page, admin
API and well-known document get narrow views of it (`status.Source`, `admin.Actions`,
plain values). Reload builds a new, immutable `Config` and hands it to each part that
derives something from it (`apply`): nothing edits another part's fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance import config as configuration
from appliance.apt import expire, mirrors
from appliance.apt.catalog import IndexCatalog
from appliance.apt.routing import Router
from appliance.cache import verify
from appliance.cache.egress import EgressPolicy, configured_hosts
from appliance.cache.engine import CacheEngine, Figures
from appliance.cache.fetcher import Fetcher
from appliance.cache.keys import UpstreamBase
from appliance.cache.store import Store
from appliance.cache.stores import open_store, sweep, sweep_dead
from appliance.config import Config
from appliance.discovery import wellknown
from appliance.jobs.scheduler import Scheduler
from appliance.metrics import HISTORY_STEP, Metrics, history_path, load_history, save_history
from appliance.streams import layout
from appliance.streams.gpg import SignatureError, Signer
from appliance.streams.serve import ImageRoutes
from appliance.web import holdings, status
from appliance.web.accesslog import AccessLog
from appliance.web.admin import Admin
from appliance.web.clients import Clients
from appliance.web.events import Events
from appliance.web.tls import PEM_PATH, Certificates, TlsError

log = logging.getLogger(__name__)

FEEDS_TTL = 30.0  # seconds the well-known document's feed list is reused
HEALTH_TTL = 2.0  # seconds a store check answers /healthz (load balancers poll often)


@dataclass
class Core:
    """What every command that touches the cache needs."""

    config: Config
    egress: EgressPolicy
    fetcher: Fetcher
    engine: CacheEngine
    mirrors: mirrors.Mirrors

    @property
    def store(self) -> Store:
        return self.engine.store


def apt_mirrors(config: Config) -> mirrors.Mirrors:
    """The official mirrors of the remaps' archives and the machine's own apt hosts."""
    apt = config.apt
    return mirrors.load(apt.remaps, apt.mirrors, apt.sources)


def upstream_rule(
    config: Config, official: mirrors.Mirrors, extra_urls: Iterable[str] = ()
) -> tuple[Callable[[str], bool], Callable[[str], bool]]:
    """Whether the appliance may connect to a host[:port] (configured, or an official
    mirror), and whether a host may resolve to public addresses only (one that only a
    mirror list names: not the operator's choice)."""
    hosts = configured_hosts(config, extra_urls)
    return (
        lambda target: target in hosts or official.accepts_host(target),
        lambda host: host not in hosts and official.listed_only(host),
    )


@contextlib.asynccontextmanager
async def core(
    config: Config,
    *,
    extra_urls: Iterable[str] = (),
    own_port_allowed: bool = False,
    worker: int | None = None,
) -> AsyncIterator[Core]:
    """The engine on the configured store, fetching only from configured hosts (and
    `extra_urls`: an ad hoc feed). `own_port_allowed`: `query` reads this appliance.
    `worker`: this process's index among `workers: N`."""
    own = () if own_port_allowed else (config.listen.port,)
    official = await asyncio.to_thread(apt_mirrors, config)
    allowed, public_only = upstream_rule(config, official, extra_urls)
    egress = EgressPolicy(allowed, own_ports=own, public_only=public_only)
    async with contextlib.AsyncExitStack() as stack:
        fetcher = Fetcher.from_config(config.upstream, egress)
        stack.push_async_callback(fetcher.close)
        engine = CacheEngine(
            open_store(config.cache, worker),
            fetcher,
            max_size=config.cache.max_size,
            ttl=config.apt.index_ttl,
            min_free=config.cache.min_free,
        )
        stack.push_async_callback(engine.close)
        yield Core(config, egress, fetcher, engine, official)


class Appliance:
    """The running service's parts, and the narrow views the web side reads."""

    def __init__(self, base: Core, config_path: Path | None) -> None:
        config = base.config
        self.config = config
        self.config_path = config_path
        self.core = base
        self.engine = base.engine
        self.fetcher = base.fetcher
        self.egress = base.egress
        self.store = base.store
        self.metrics = Metrics(enabled=config.metrics)
        self.access_log = AccessLog(config.logging.access_log, config.logging.access_log_format)
        self.events = Events()  # the status page's recent warnings, errors and refusals
        self.clients = Clients()  # who uses the cache, over the last 24 hours
        self.admin = Admin(config.admin)
        self.router = Router(config.apt.remaps, config.apt.allow, base.mirrors)
        self.catalog = IndexCatalog(config.cache.dir, self.store)  # what apt indexes list
        self.engine.rules.append(self.catalog)
        self.images = ImageRoutes(self.engine)
        self.scheduler = Scheduler(config, self.engine, self.fetcher)
        self.jobs: status.Jobs = self.scheduler
        self.inventory = status.Inventory()
        self.holdings = holdings.Holdings()  # what is cached, and this process's hits
        self.server: Any = None  # the listening web.Server: its refused-connection count
        self.workers: Any = None  # web.workers.Workers when `workers: N` runs several
        self.peer_streams: Any = None  # web.peers.PeerStreams: the others' downloads
        self.tls: Certificates | None = None  # the HTTPS listener's, when `tls` is set
        self.maintenance_lock = asyncio.Lock()  # one verify or expiry run at a time
        self.last_verify: dict[str, Any] | None = None
        self.last_expiry: dict[str, Any] | None = None
        self._fingerprint: str | None = None
        self._fingerprint_at: int | None = -1  # the key folder's mtime at the last look
        self._feeds: tuple[float, list[str]] = (-FEEDS_TTL, [])
        self.draining = False  # /healthz answers 503: load balancers send no new clients
        self._store_check: tuple[float, str | None] = (-HEALTH_TTL, None)
        self.history_file: Path | None = None  # where `serving` keeps this process's history
        self._history_saved = 0  # `metrics.history_changes` at the last save
        self._history_failing = False  # a failed save was logged (once until one works)
        self.fetcher.monitor = self.metrics.upstream
        if config.metrics:
            self.metrics.add_source(lambda: status.scrape(self))

    # -- status.Source ----------------------------------------------------------------
    def cache_figures(self) -> Figures:
        return self.engine.figures()

    def client_figures(self, n: int) -> list[dict[str, Any]]:
        return self.clients.figures(n)

    def recent_events(self) -> list[dict[str, Any]]:
        return self.events.recent()

    async def cached(self) -> dict[str, Any]:
        """What the cache holds per remap, suite and feed (`holdings`): looked at again
        when the size cap's count, the apt index table or the mirrored images moved."""
        lru = self.engine.lru  # what the size cap counts, siblings' files included
        prefixes = holdings.remap_prefixes(
            {n: UpstreamBase.parse(urls[0]).key() for n, urls in self.config.apt.remaps.items()}
        )
        table = self.catalog.path.with_name(self.catalog.path.name + "-wal")
        try:
            written = table.stat().st_mtime_ns  # another worker's parse moves it too
        except OSError:
            written = None
        generation = (
            len(lru),
            lru.total,
            self.jobs.last_run,
            self.catalog.parsed,
            written,
            tuple(prefixes),
        )
        store, listing = self.store, self.catalog.listed_by
        return await self.holdings.get(
            generation, lambda: holdings.compute(store, listing, prefixes)
        )

    def usage(self) -> dict[str, Any]:
        """What a client is told to configure; `web.use` writes the lines for the host
        the asker used."""
        config = self.config
        return {
            "port": config.listen.port,
            "name": config.discovery.name,
            "tls_port": config.tls.listen.port if config.tls is not None else None,
            "remaps": {name: list(config.apt.remaps[name]) for name in self.router.remap_names},
            "feeds": [feed.name for feed in config.images.feeds],
            "accepted": self.router.accepted(),
        }

    def integrity(self) -> dict[str, Any]:
        return {
            "connections_refused": getattr(self.server, "refused", 0),
            "apt_indexes": self.catalog.stats(),
            "last_verify": self.last_verify,
            "last_expiry": self.last_expiry,
        }

    # -- admin.Actions ----------------------------------------------------------------
    def sync(self) -> bool:
        return self.scheduler.trigger()

    def seed(self) -> bool | None:
        if not self.config.seed.targets:
            return None
        return self.scheduler.trigger_seed()

    async def purge_remap(self, name: str) -> int | None:
        mirrors = self.config.apt.remaps.get(name)
        if not mirrors:
            return None
        return sum([await self.engine.purge(UpstreamBase.parse(u).key()) for u in mirrors])

    async def purge(self, path: str) -> int:
        route = self.router.route(path)
        if await self.engine.lookup(route.key) is None:
            return 0
        await self.engine.remove(route.key)
        return 1

    def maintenance_busy(self) -> bool:
        return self.maintenance_lock.locked()

    async def expire(self, dry_run: bool) -> dict[str, Any]:
        """Remove (or list) pool/by-hash files no cached index has listed for a while."""
        async with self.maintenance_lock:
            report = await expire.expire(
                self.engine, self.catalog, self.config.cache.expire_after, dry_run
            )
        result = {"at": time.time(), **vars(report)}
        self.last_expiry = {k: v for k, v in result.items() if k != "removed"}
        return result

    async def verify(self, fix: bool) -> dict[str, Any]:
        """Re-read every entry; with `fix`, remove those that are wrong."""
        async with self.maintenance_lock:
            report = await verify.verify(self.engine, self.catalog.lookup, fix)
        result = {"at": time.time(), **report.as_dict()}
        self.last_verify = {k: v for k, v in result.items() if k != "problems"}
        return result

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration file and hand it to every part that uses it; what
        cannot change while running is reported."""
        if self.config_path is None:
            raise web.HTTPConflict(text="reload: running on the embedded default configuration\n")
        try:
            new = await asyncio.to_thread(configuration.load, self.config_path)
        except configuration.ConfigError as exc:
            raise web.HTTPBadRequest(text=f"reload: {exc} (nothing changed)\n") from None
        restart = configuration.restart_needed(self.config, new)
        official = await asyncio.to_thread(apt_mirrors, new)
        self.config = new
        self.router = Router(new.apt.remaps, new.apt.allow, official)
        self.egress.allow(*upstream_rule(new, official))
        self.engine.apply(new)
        if self.server is not None:
            self.server.cap = new.limits.connections_per_client
        self.scheduler.apply(new)
        self.admin.configure(new.admin)
        self.inventory.invalidate()
        self._feeds = (-FEEDS_TTL, [])
        self._fingerprint_at = -1
        done: dict[str, Any] = {"reloaded": str(self.config_path), "restart_needed_for": restart}
        if self.tls is not None and new.tls is not None:
            try:  # an operator's renewed certificate: new handshakes get it
                await asyncio.to_thread(self.tls.load, new)
            except TlsError as exc:
                log.warning("reload: %s (the certificate in use stays)", exc)
                done["tls_error"] = str(exc)
        log.info("configuration reloaded from %s", self.config_path)
        return done

    def drain(self, on: bool) -> dict[str, Any]:
        """Turn draining on or off (admin API); transfers in progress are not touched."""
        if on != self.draining:
            log.info("drain %s: /healthz answers %s", "on" if on else "off", 503 if on else 200)
        self.draining = on
        return {"draining": on}

    async def health(self) -> tuple[int, dict[str, Any]]:
        """`GET /healthz`: 200 while serving; 503 while draining or when the store cannot
        take entries (the directory is gone or read-only)."""
        at, problem = self._store_check
        if time.monotonic() - at > HEALTH_TTL:
            problem = await asyncio.to_thread(self.store.problem)
            self._store_check = (time.monotonic(), problem)
        problems = [problem] if problem else []
        state = "draining" if self.draining else "unhealthy" if problems else "serving"
        doc: dict[str, Any] = {
            "status": state,
            "problems": problems,
            "downloads": len(self.engine.in_flight()),
        }
        if (shared := self.store.shared_status()) is not None:  # degraded, still serving
            doc["shared_store"] = "up" if shared["up"] else f"unavailable: {shared['problem']}"
        return (200 if state == "serving" else 503), doc

    # -- the well-known document -----------------------------------------------------
    async def well_known(self, host_header: str | None, secure: bool = False) -> dict[str, Any]:
        """Built from values read in threads and remembered: a request never runs gpg
        or walks the store on the event loop."""
        # read until the key exists (a sync or `keys` makes it): gpg runs only when the
        # key folder changed since the last look, not on every request
        if not self._fingerprint:
            marker = _key_marker(self.config.images.gnupg_home)
            if marker != self._fingerprint_at:
                self._fingerprint_at = marker
                self._fingerprint = await asyncio.to_thread(_fingerprint, self.config)
        at, feeds = self._feeds
        if time.monotonic() - at > FEEDS_TTL:
            feeds = await asyncio.to_thread(layout.synced_feeds, self.store)
            self._feeds = (time.monotonic(), feeds)
        config = self.config
        base = wellknown.base_url(host_header, config.discovery.name, config.listen.port)
        tls = None
        if self.tls is not None and config.tls is not None:
            name = config.discovery.name
            https = wellknown.url_on("https", host_header, name, config.tls.listen.port)
            if secure:  # asked over HTTPS: the plain port's URLs on the same host
                base = wellknown.url_on("http", host_header, name, config.listen.port)
            tls = {
                "url": f"{https}/",
                "certificate": f"{base}{PEM_PATH}",
                "sha256_fingerprint": self.tls.fingerprint,
                "lxd_remote": f"lxc remote add archive-local {https} --protocol simplestreams",
            }
        return wellknown.document(base, self.router.remap_names, feeds, self._fingerprint, tls)

    # -- background work ---------------------------------------------------------------
    async def rebuild_catalog(self, cached: list[str]) -> None:
        """Learn the cached indexes the table does not know (a new or lost table)."""
        try:
            n = await self.catalog.rebuild(cached)
            log.info("apt indexes: %d cached index files checked", n)
        except Exception as exc:  # the table is rebuilt at the next start; serving goes on
            log.warning("apt indexes: cannot read the cached indexes: %s", exc)

    async def restore_history(self, path: Path) -> None:
        """The charts' history of the previous run of this process (a bad file: none)."""
        self.history_file = path
        self.metrics.restore(await asyncio.to_thread(load_history, path))

    async def save_history(self) -> None:
        """Write the history when it moved since the last write (a minute's last request
        is recorded first); a failure is logged once, until a write works again."""
        if self.history_file is None:
            return
        self.metrics.settle()
        changes = self.metrics.history_changes
        if changes == self._history_saved:
            return
        try:
            points = list(self.metrics.history)
            await asyncio.to_thread(save_history, self.history_file, points, changes)
        except OSError as exc:
            if not self._history_failing:
                log.warning("history: cannot write %s: %s", self.history_file, exc)
            self._history_failing = True
            return
        self._history_saved, self._history_failing = changes, False

    async def keep_history(self) -> None:
        """At most one write a minute; the last at shutdown (`serving`)."""
        while True:
            await asyncio.sleep(HISTORY_STEP)
            await self.save_history()

    async def expire_periodically(self) -> None:
        await asyncio.sleep(min(3600.0, self.config.cache.expire_interval))
        while True:
            try:
                await self.expire(dry_run=False)
            except Exception as exc:  # disk trouble or a damaged table: next time
                log.warning("expiry failed: %s", exc)
            await asyncio.sleep(self.config.cache.expire_interval)


def _key_marker(home: Path) -> int | None:
    """When the secret keys of `home` last changed (None: no keys yet)."""
    try:
        return (home / "private-keys-v1.d").stat().st_mtime_ns
    except OSError:
        return None


def _fingerprint(config: Config) -> str | None:
    try:
        return Signer(config.images.gnupg_home).fingerprint
    except (OSError, SignatureError):
        return None


@contextlib.asynccontextmanager
async def serving(
    config: Config, config_path: Path | None = None, worker: int | None = None
) -> AsyncIterator[Appliance]:
    """The running service, torn down in reverse order on exit. `worker`: this process's
    index among `workers: N`; only the primary (the only process, or worker 0) runs the
    jobs (syncs, seeds, expiry) and advertises by mDNS."""
    primary = worker in (None, 0)
    async with contextlib.AsyncExitStack() as stack:
        base = await stack.enter_async_context(core(config, worker=worker))
        app = Appliance(base, config_path)
        logging.getLogger("appliance").addHandler(app.events)
        stack.callback(logging.getLogger("appliance").removeHandler, app.events)
        stack.push_async_callback(asyncio.to_thread, app.catalog.close)
        await app.restore_history(history_path(config.cache.dir, worker))
        stack.push_async_callback(app.save_history)  # after the last transfer: unwound late
        if config.tls is not None:
            try:
                app.tls = await asyncio.to_thread(Certificates, config)
            except TlsError as exc:
                raise configuration.ConfigError(str(exc)) from None
        cached = await app.engine.start(sweep=worker is None)
        app.access_log.start()
        stack.push_async_callback(app.access_log.close)
        jobs = [app.rebuild_catalog(cached), app.keep_history()]
        if primary:
            app.scheduler.start()
            stack.push_async_callback(app.scheduler.close)
            jobs.append(app.expire_periodically())
        for job in jobs:
            stack.push_async_callback(_cancel, asyncio.create_task(job))
        advertiser = await _advertise(config) if primary else None
        if advertiser is not None:
            stack.push_async_callback(advertiser.close)
        yield app


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _advertise(config: Config) -> Any:
    """mDNS, unless turned off or listening on loopback only (nobody else could use it)."""
    host, discovery = config.listen.host, config.discovery
    if not discovery.mdns or host in ("127.0.0.1", "::1", "localhost"):
        return None
    from appliance.discovery.mdns import Advertiser

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


def sweep_dead_worker(config: Config, pid: int) -> int:
    """The temp files a dead worker left (the master, when it starts it again)."""
    return sweep_dead(config.cache, pid)


def sweep_cache(config: Config) -> int:
    """The start-up sweep of this unit's disk, for the master of several workers (they
    only index it); the entries found."""
    return sweep(config.cache)
