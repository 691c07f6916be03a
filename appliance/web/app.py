"""The HTTP service: one handler that routes, asks the cache engine and delivers.

It runs on aiohttp's low-level `web.Server`: routing is ours (`apt.routing`
decides 403/400), so aiohttp's URL dispatcher and middleware chain would only add
cost to every cache hit. `cli.py` only runs it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance import __version__
from appliance import config as configuration
from appliance.apt.paths import BadPath
from appliance.apt.routing import Forbidden, Router
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
        self.router = Router(config.apt.remaps, config.apt.allow)
        self.fetcher = Fetcher.from_config(config.upstream)
        self.engine = CacheEngine.from_config(config, self.fetcher)
        self.images = ImageRoutes(self.engine)
        self.scheduler = Scheduler(config, self.engine, self.fetcher)
        self.fetcher.monitor = self.metrics.upstream
        if config.metrics:
            self.metrics.add_source(lambda: status.scrape(self))

    async def start(self) -> None:
        await self.engine.start()
        self.access_log.start()
        self.scheduler.start()
        await self._advertise()

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
        await self.scheduler.close()
        await self.engine.close()
        await self.fetcher.close()
        await self.access_log.close()

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
        self.engine.ttl = new.apt.index_ttl
        self.engine.lru.max_size = new.cache.max_size
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
        if method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(method, ["GET", "HEAD"])
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
        return await tunnel(request, host, int(port))

    async def _api(self, request: web.BaseRequest) -> web.StreamResponse:
        target = request.raw_path
        if target.startswith("/api/admin/"):
            return await self.admin.handle(request, self)
        if target.split("?")[0] == "/api/status" and request.method in ("GET", "HEAD"):
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
