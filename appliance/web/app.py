"""The HTTP service: one handler that routes, asks the cache engine and delivers.

It runs on aiohttp's low-level `web.Server`: routing is ours (`apt.routing`
decides 403/400), so aiohttp's URL dispatcher and middleware chain would only add
cost to every cache hit. `cli.py` only runs it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance import __version__
from appliance import config as configuration
from appliance.apt import expire
from appliance.apt.catalog import IndexCatalog
from appliance.apt.paths import BadPath
from appliance.apt.routing import Forbidden, Router
from appliance.cache import verify
from appliance.cache.egress import EgressPolicy, configured_hosts
from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher, UpstreamFailure
from appliance.config import Config
from appliance.discovery import wellknown
from appliance.discovery.wellknown import WELL_KNOWN
from appliance.metrics import Metrics
from appliance.streams.gpg import SignatureError, Signer
from appliance.streams.scheduler import Scheduler
from appliance.streams.serve import ImageRoutes, NotFound, curated_route
from appliance.web import status
from appliance.web.accesslog import AccessLog
from appliance.web.admin import Admin
from appliance.web.deliver import deliver
from appliance.web.tunnel import tunnel

log = logging.getLogger(__name__)

# Request limits: a slow or hostile client cannot hold much. aiohttp's keep-alive
# timer also bounds how long a client may take to send its request headers.
SERVER_LIMITS = {
    "keepalive_timeout": 30.0,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 100,
}


class Service:
    """Owns the fetcher and engine; `handle` is the aiohttp request handler."""

    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics(enabled=config.metrics)
        self.access_log = AccessLog(config.logging.access_log, config.logging.access_log_format)
        self.admin = Admin(config.admin)
        self.inventory = status.Inventory()
        self._fingerprint: str | None = None  # of the appliance key, once it exists
        self.advertiser: Any = None
        self.server: Any = None  # the listening web.Server (its connection counts)
        self.router = Router(config.apt.remaps, config.apt.allow)
        self.egress = EgressPolicy(
            configured_hosts(config).__contains__, own_ports=(config.listen.port,)
        )
        self.fetcher = Fetcher.from_config(config.upstream, self.egress)
        self.engine = CacheEngine.from_config(config, self.fetcher)
        self.catalog = IndexCatalog(config.cache.dir)  # what cached apt indexes list
        self.engine.rules.append(self.catalog)
        self.maintenance_lock = asyncio.Lock()  # one verify or expiry run at a time
        self.last_verify: dict[str, Any] | None = None
        self.last_expiry: dict[str, Any] | None = None
        self._jobs: list[asyncio.Task[Any]] = []
        self.images = ImageRoutes(self.engine)
        self.scheduler = Scheduler(config, self.engine, self.fetcher)
        self.fetcher.monitor = self.metrics.upstream
        if config.metrics:
            self.metrics.add_source(lambda: status.scrape(self))

    async def start(self) -> None:
        cached = await self.engine.start()
        self.access_log.start()
        self.scheduler.start()
        self._jobs = [
            asyncio.create_task(self._rebuild_catalog(cached)),
            asyncio.create_task(self._expire_periodically()),
        ]
        await self._advertise()

    async def _rebuild_catalog(self, cached: list[str]) -> None:
        """Learn the cached indexes the table does not know (a new or lost table)."""
        try:
            n = await self.catalog.rebuild(self.engine.store, cached)
            log.info("apt indexes: %d cached index files checked", n)
        except Exception as exc:
            log.warning("apt indexes: cannot read the cached indexes: %s", exc)

    async def _expire_periodically(self) -> None:
        await asyncio.sleep(min(3600.0, self.config.cache.expire_interval))
        while True:
            try:
                await self.expire(dry_run=False)
            except Exception as exc:  # disk trouble or a damaged table: next time
                log.warning("expiry failed: %s", exc)
            await asyncio.sleep(self.config.cache.expire_interval)

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

    async def _advertise(self) -> None:
        """mDNS, unless turned off or listening on loopback only (nobody else could use it)."""
        host, discovery = self.config.listen.host, self.config.discovery
        if not discovery.mdns or host in ("127.0.0.1", "::1", "localhost"):
            return
        from appliance.discovery.mdns import Advertiser

        if host not in ("0.0.0.0", "::", "") and not discovery.interfaces:
            discovery = replace(discovery, interfaces=(host,))  # only where we listen
        self.advertiser = Advertiser(discovery, self.config.listen.port)
        try:
            await self.advertiser.start()
        except OSError as exc:  # no multicast here: the appliance still serves
            log.warning("mDNS: cannot advertise (%s)", exc)

    async def close(self) -> None:
        if self.advertiser is not None:
            await self.advertiser.close()
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self.scheduler.close()
        await self.engine.close()
        await self.fetcher.close()
        await self.access_log.close()
        await asyncio.to_thread(self.catalog.close)

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration file; what cannot change while running is reported."""
        if self.config_path is None:
            raise web.HTTPConflict(text="reload: running on the embedded default configuration\n")
        try:
            new = configuration.load(self.config_path)
        except configuration.ConfigError as exc:
            raise web.HTTPBadRequest(text=f"reload: {exc} (nothing changed)\n") from None
        old = self.config
        restart = [
            name
            for name, a, b in (
                ("listen", old.listen, new.listen),
                ("cache.dir", old.cache.dir, new.cache.dir),
                ("upstream", old.upstream, new.upstream),
                ("logging", old.logging, new.logging),
                ("metrics", old.metrics, new.metrics),
            )
            if a != b
        ]
        self.config = new
        self.router = Router(new.apt.remaps, new.apt.allow)
        self.egress.allowed = configured_hosts(new).__contains__
        self.engine.ttl = new.apt.index_ttl
        self.engine.lru.max_size = new.cache.max_size
        self.engine.min_free = new.cache.min_free
        if self.server is not None:
            self.server.cap = new.limits.connections_per_client
        self.scheduler.config = new
        self.admin.configure(new.admin)
        self.inventory.invalidate()
        log.info("configuration reloaded from %s", self.config_path)
        return {"reloaded": str(self.config_path), "restart_needed_for": restart}

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        method = request.method
        if method == "CONNECT":
            return await self._connect(request)
        target = request.raw_path
        if target.startswith("/api/admin/"):
            return await self.admin.handle(request, self)  # POST only, its own checks
        if method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(method, ["GET", "HEAD"])
        if target == "/":
            return await self._index(request)
        if target.startswith("/api/"):
            return await self._api(request)
        if target == "/metrics":
            return self._metrics()
        if target == "/favicon.ico":  # browsers on the status page ask for it
            return web.Response(status=204)
        if target == WELL_KNOWN:
            return await self._well_known(request)
        try:
            if target.startswith("/images/"):
                route = await self.images.route(target)
            elif target.startswith(("/streams/", "/keys/")):
                route = curated_route(target)
            else:
                route = self.router.route(target)
        except BadPath as exc:
            raise web.HTTPBadRequest(text=f"bad request: {exc}\n") from None
        except Forbidden as exc:
            raise web.HTTPForbidden(text=f"forbidden: {exc}\n") from None
        except NotFound as exc:
            raise web.HTTPNotFound(text=f"not found: {exc}\n") from None
        result = await self.engine.get(route.key, route.urls, route.freshness, route.expect)
        if isinstance(result, UpstreamFailure):
            return web.Response(status=result.status, text=f"upstream: {result.reason}\n")
        return await deliver(request, self.engine, result)

    async def _connect(self, request: web.BaseRequest) -> web.StreamResponse:
        host, _, port = request.raw_path.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise web.HTTPBadRequest(text="CONNECT needs host:port\n")
        if not self.router.allow_connect(host, int(port)):
            raise web.HTTPForbidden(text=f"forbidden: CONNECT to {request.raw_path}\n")
        return await tunnel(request, host, int(port), self.egress)

    async def _api(self, request: web.BaseRequest) -> web.StreamResponse:
        target = request.raw_path
        if target.split("?")[0] == "/api/status":
            return web.json_response(await status.snapshot(self))
        raise web.HTTPNotFound(text="not found\n")

    def _metrics(self) -> web.Response:
        if not self.config.metrics:
            raise web.HTTPNotFound(text="metrics are disabled (metrics.enabled)\n")
        return web.Response(
            body=self.metrics.exposition(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _well_known(self, request: web.BaseRequest) -> web.Response:
        if not self._fingerprint:  # read until the key exists (the first sync makes it)
            signer = Signer(self.config.images.gnupg_home)
            try:
                self._fingerprint = await asyncio.to_thread(lambda: signer.fingerprint)
            except (OSError, SignatureError):
                self._fingerprint = None
        doc = wellknown.document(self, request.headers.get("Host"), self._fingerprint)
        return web.json_response(doc, headers={"Cache-Control": "max-age=60"})

    async def _index(self, request: web.BaseRequest) -> web.Response:
        if request.headers.get("X-Status-Fragment"):  # the page's own refresh
            snap = await status.snapshot(self)
            return web.Response(text=status.render_main(snap), content_type="text/html")
        if "text/html" in request.headers.get("Accept", ""):  # a browser: the status page
            snap = await status.snapshot(self)
            return web.Response(text=status.render_page(snap), content_type="text/html")
        remaps = self.config.apt.remaps
        port = self.config.listen.port
        names = "\n".join(f"  /{n}/ -> {', '.join(remaps[n])}" for n in self.router.remap_names)
        # `406 Usage Information`, as apt-cacher-ng answers apt's own GET /: what
        # auto-apt-proxy probes for. Browsers got the status page above.
        return web.Response(
            status=406,
            reason="Usage Information",
            text=f"archive-local {__version__}: apt cache\n\nremaps:\n{names}\n"
            f'\nforward proxy: Acquire::http::Proxy "http://<this host>:{port}";\n'
            "status page: open this address in a browser\n",
        )
