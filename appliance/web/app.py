"""Build the aiohttp application; `cli.py` only runs it.

Resources (fetcher, store, engine) live in one `cleanup_ctx` generator under
typed `AppKey`s. Every request goes through `handle`: route (403/400 decided
by `apt.routing`), ask the engine, deliver.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from appliance import __version__
from appliance.apt.paths import BadPath
from appliance.apt.routing import Forbidden, Route, Router
from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher, UpstreamFailure
from appliance.cache.store import FilesystemStore
from appliance.config import Config
from appliance.web.deliver import deliver
from appliance.web.tunnel import tunnel

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
ROUTER = web.AppKey("router", Router)
ENGINE = web.AppKey("engine", CacheEngine)

# Request limits: a slow or hostile client cannot hold much.
SERVER_LIMITS = {
    "keepalive_timeout": 30.0,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 100,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    fetcher = Fetcher()
    engine = CacheEngine(
        FilesystemStore(config.cache.dir),
        fetcher,
        max_size=config.cache.max_size,
        ttl=config.apt.index_ttl,
    )
    await engine.start()
    app[ENGINE] = engine
    yield
    await engine.close()
    await fetcher.close()


def _route(request: web.Request, router: Router) -> Route:
    target = request.raw_path
    if target.startswith(("http://", "https://")) or "://" in target.split("/", 1)[0]:
        return router.route_url(target)
    return router.route_path(target)


async def handle(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    if request.raw_path == "/":
        return _index(request.app)
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
    try:
        route = _route(request, router)
    except BadPath as exc:
        raise web.HTTPBadRequest(text=f"bad request: {exc}\n") from None
    except Forbidden as exc:
        raise web.HTTPForbidden(text=f"forbidden: {exc}\n") from None
    engine = request.app[ENGINE]
    result = await engine.get(route.key, route.urls, route.freshness, route.sha256)
    if isinstance(result, UpstreamFailure):
        return web.Response(status=result.status, text=f"upstream: {result.reason}\n")
    return await deliver(request, engine, result)


@web.middleware
async def connect_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CONNECT never matches a route (its target is host:port), so it is caught here."""
    if request.method != "CONNECT":
        return await handler(request)
    host, _, port = request.raw_path.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise web.HTTPBadRequest(text="CONNECT needs host:port\n")
    if not request.app[ROUTER].allow_connect(host, int(port)):
        raise web.HTTPForbidden(text=f"forbidden: CONNECT to {request.raw_path}\n")
    return await tunnel(request, host, int(port))


def _index(app: web.Application) -> web.Response:
    config = app[CONFIG]
    names = "\n".join(
        f"  /{n}/ -> {', '.join(config.apt.remaps[n])}" for n in app[ROUTER].remap_names
    )
    return web.Response(
        text=f"archive-local {__version__}: apt cache\n\nremaps:\n{names}\n"
        f'\nforward proxy: Acquire::http::Proxy "http://<this host>:{config.listen.port}";\n'
    )


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[connect_middleware], client_max_size=64 * 1024)
    app[CONFIG] = config
    app[ROUTER] = Router(config.apt.remaps, config.apt.allow)
    app.cleanup_ctx.append(_engine_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
