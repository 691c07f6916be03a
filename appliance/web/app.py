"""The HTTP service: one handler that routes, asks the cache engine and delivers.

It runs on aiohttp's low-level `web.Server`: routing is ours (`apt.routing`
decides 403/400), so aiohttp's URL dispatcher and middleware chain would only add
cost to every cache hit. `cli.py` only runs it.
"""

from __future__ import annotations

import ipaddress
import logging

from aiohttp import web

from appliance import __version__
from appliance.apt.paths import BadPath
from appliance.apt.routing import Forbidden, Router
from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher, UpstreamFailure
from appliance.cache.store import FilesystemStore
from appliance.config import Config
from appliance.streams.scheduler import Scheduler
from appliance.streams.serve import ImageRoutes, NotFound, curated_route
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


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Service:
    """Owns the fetcher and engine; `handle` is the aiohttp request handler."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config.apt.remaps, config.apt.allow)
        self.fetcher = Fetcher.from_config(config.upstream)
        self.engine = CacheEngine(
            FilesystemStore(config.cache.dir),
            self.fetcher,
            max_size=config.cache.max_size,
            ttl=config.apt.index_ttl,
        )
        self.images = ImageRoutes(self.engine)
        self.scheduler = Scheduler(config, self.engine, self.fetcher)

    async def start(self) -> None:
        await self.engine.start()
        self.scheduler.start()

    async def close(self) -> None:
        await self.scheduler.close()
        await self.engine.close()
        await self.fetcher.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        method = request.method
        if method == "CONNECT":
            return await self._connect(request)
        target = request.raw_path
        if target == "/":
            return self._index()
        if target.startswith("/admin/"):
            return await self._admin(request)
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

    async def _admin(self, request: web.BaseRequest) -> web.StreamResponse:
        """Loopback only for now (tokens come with the admin API)."""
        if not _is_loopback(request.remote):
            raise web.HTTPForbidden(text="admin endpoints answer on the loopback address only\n")
        if request.raw_path == "/admin/seed":
            return await self._admin_seed(request)
        if request.raw_path != "/admin/sync":
            raise web.HTTPNotFound(text="not found\n")
        if request.method == "POST":
            if not self.config.images.feeds:
                raise web.HTTPConflict(text="no feeds configured (images.feeds)\n")
            self.scheduler.trigger()
            return web.json_response({"status": "started"}, status=202)
        if request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        return web.json_response(
            {
                "running": self.scheduler.running,
                "last_run": self.scheduler.last_run,
                "feeds": {name: o.as_dict() for name, o in self.scheduler.last.items()},
            }
        )

    async def _admin_seed(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            if not self.config.seed.targets:
                raise web.HTTPConflict(text="no seed targets configured (seed.targets)\n")
            started = self.scheduler.trigger_seed()
            return web.json_response({"status": "started" if started else "running"}, status=202)
        if request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        return web.json_response(
            {
                "running": self.scheduler.seeding,
                "targets": {n: o.as_dict() for n, o in self.scheduler.seed_last.items()},
            }
        )

    def _index(self) -> web.Response:
        remaps = self.config.apt.remaps
        port = self.config.listen.port
        names = "\n".join(f"  /{n}/ -> {', '.join(remaps[n])}" for n in self.router.remap_names)
        return web.Response(
            text=f"archive-local {__version__}: apt cache\n\nremaps:\n{names}\n"
            f'\nforward proxy: Acquire::http::Proxy "http://<this host>:{port}";\n'
        )
