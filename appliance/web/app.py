"""The HTTP side: one handler that routes, asks the cache engine and delivers.

It runs on aiohttp's low-level `web.Server`: routing is ours (`apt.routing`
decides 403/400), so aiohttp's URL dispatcher and middleware chain would only add
cost to every cache hit. The running appliance (`runtime.Appliance`) is what it
reads, through `Parts`; `runtime.serving` builds it and listens with it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import unquote

from aiohttp import HttpVersion11, web

from appliance import __version__
from appliance.apt.paths import BadPath
from appliance.apt.routing import Forbidden, Router
from appliance.cache.egress import EgressPolicy
from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import UpstreamFailure
from appliance.cache.results import CacheStatus, FromPeer, Hit, Miss
from appliance.cache.route import NO_EXPECTATION
from appliance.config import Config
from appliance.discovery.wellknown import WELL_KNOWN, Certificate, WellKnown
from appliance.metrics import TOP_PACKAGES, Metrics
from appliance.streams.serve import ImageRoutes, NotFound, curated_route
from appliance.web import glance, status, use
from appliance.web.admin import Actions, Admin
from appliance.web.deliver import answers_read, deliver
from appliance.web.holdings import Holdings
from appliance.web.peers import FLIGHT, PeerStreams
from appliance.web.tls import PEM_PATH, Certificates
from appliance.web.tunnel import tunnel
from appliance.web.workers import (
    CACHE_EVENTS,
    TO_ALL,
    TO_PRIMARY,
    Workers,
    is_internal,
    merge_metrics,
    merge_status,
)

# Request limits: a slow or hostile client cannot hold much. aiohttp's keep-alive
# timer also bounds how long a client may take to send its request headers.
SERVER_LIMITS = {
    "keepalive_timeout": 30.0,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 100,
}


class Healthz(Protocol):
    """`GET /healthz`: (status, document)."""

    async def check(self) -> tuple[int, dict[str, Any]]: ...


class Parts(Protocol):
    """What the handler reads of the running appliance; `config` and `router` are
    replaced whole by a reload."""

    config: Config
    router: Router
    engine: CacheEngine
    images: ImageRoutes
    egress: EgressPolicy
    metrics: Metrics
    admin: Admin
    inventory: status.Inventory
    holdings: Holdings  # counts the hits of each cached file

    workers: Workers | None  # the sibling processes of `workers: N`, else None
    peer_streams: PeerStreams | None  # how this process reaches the others' downloads
    tls: Certificates | None  # the HTTPS listener's certificate, when `tls` is set
    discovery: WellKnown  # the well-known document's remembered inputs
    health: Healthz

    source: status.Source  # what the status page, /api/status and /metrics read
    actions: Actions  # what the admin API may do


def status_reason(text: str) -> str:
    """A status line's reason phrase from a message that may hold what a client sent:
    printable ASCII only (no CR/LF to split the response), bounded."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]


def _fetched_ahead(request: web.BaseRequest, key: str) -> bool:
    """Whether the connection downloaded `key` ahead for this request, the client having
    queued it behind others (`server._Handler.fetched_ahead`; not on the TLS port)."""
    fetched_ahead = getattr(request.protocol, "fetched_ahead", None)
    return fetched_ahead is not None and bool(fetched_ahead(key))


def _secure(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is not None and transport.get_extra_info("sslcontext") is not None


class Handler:
    """`handle` is the aiohttp request handler of the plain port."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not await answers_read(request):  # closed: this answer goes nowhere
            return web.Response(status=408, text="the answers before this one were not read\n")
        if request.version < HttpVersion11 and "Transfer-Encoding" in request.headers:
            # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing
            # (a smuggling vector behind proxies that read it otherwise): refuse, close
            refused = web.Response(status=400, text="Transfer-Encoding in HTTP/1.0\n")
            refused.force_close()
            return refused
        parts = self.parts
        method = request.method
        target = request.raw_path
        if (method == "CONNECT" or not target.startswith("/")) and _secure(request):
            raise web.HTTPBadRequest(
                text="the forward proxy and CONNECT are on the plain port, not HTTPS\n"
            )
        if method == "CONNECT":
            return await self._connect(request)
        siblings = parts.workers if parts.workers and not is_internal(request) else None
        if target.startswith("/api/admin/"):
            if siblings is None:
                return await parts.admin.handle(request, parts.actions)  # POST only, own checks
            return await self._admin_for_all(request, siblings)
        if target == CACHE_EVENTS and method == "POST" and is_internal(request):
            return await self._cache_events(request)
        if method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(method, ["GET", "HEAD"])
        if target == "/":
            return await self._index(request, siblings)
        if target.startswith("/api/"):
            return await self._api(request, siblings)
        if target == "/metrics":
            return await self._metrics(siblings)
        if target == "/healthz":
            code, doc = await parts.health.check()
            return web.json_response(doc, status=code, headers={"Cache-Control": "no-store"})
        if target == "/favicon.ico":  # browsers on the status page ask for it
            return web.Response(status=204)
        if target == PEM_PATH:
            if parts.tls is None:
                raise web.HTTPNotFound(text="not found: HTTPS is not configured (tls)\n")
            return web.Response(
                body=parts.tls.pem,
                content_type="application/x-pem-file",
                headers={"Cache-Control": "max-age=60"},
            )
        if target.startswith(FLIGHT):
            return await self._flight(request, unquote(target.removeprefix(FLIGHT)), siblings)
        if target == WELL_KNOWN:
            return await self._well_known(request)
        try:
            if target.startswith("/images/"):
                route = await parts.images.route(target)
            elif target.startswith(("/streams/", "/keys/")):
                route = curated_route(target)
            else:
                route = parts.router.route(target)
        except BadPath as exc:
            raise web.HTTPBadRequest(text=f"bad request: {exc}\n") from None
        except Forbidden as exc:
            raise web.HTTPForbidden(
                reason=status_reason(str(exc)), text=f"forbidden: {exc}\n"
            ) from None
        except NotFound as exc:
            raise web.HTTPNotFound(text=f"not found: {exc}\n") from None
        engine = parts.engine
        result = await engine.get(route)
        ahead = method == "GET" and _fetched_ahead(request, route.key)  # (asked once)
        if isinstance(result, UpstreamFailure):
            return web.Response(status=result.status, text=f"upstream: {result.reason}\n")
        if ahead and isinstance(result, Hit):
            result = replace(result, status=CacheStatus.MISS)  # downloaded for this request
        elif isinstance(result, Hit) and method == "GET":
            parts.holdings.hit(route.key)
        return await deliver(request, engine, result)

    async def _well_known(self, request: web.BaseRequest) -> web.Response:
        parts = self.parts
        tls = parts.tls
        certificate = Certificate(tls.fingerprint, PEM_PATH) if tls is not None else None
        host, secure = request.headers.get("Host"), _secure(request)
        remaps = parts.router.remap_names
        doc = await parts.discovery.document(parts.config, remaps, host, secure, certificate)
        return web.json_response(doc, headers={"Cache-Control": "max-age=60"})

    async def _cache_events(self, request: web.BaseRequest) -> web.Response:
        """A sibling worker's changes to the cache both count (see `Workers.tell`)."""
        try:
            events = json.loads(await request.read())
            for e in events:
                self.parts.engine.learned(str(e["op"]), str(e["key"]), int(e["size"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise web.HTTPBadRequest(text=f"bad cache events: {exc}\n") from None
        return web.Response(status=204)

    async def _flight(
        self, request: web.BaseRequest, key: str, siblings: Workers | None
    ) -> web.StreamResponse:
        """A download in progress here, for a worker or unit waiting on our lease (never
        a new fetch: only what this unit is downloading anyway). A unit of several workers
        asks its siblings when the download is not this one's."""
        engine = self.parts.engine
        download = await engine.flight(key)
        if download is not None:
            return await deliver(request, engine, Miss(download))
        streams = self.parts.peer_streams
        if siblings is not None and streams is not None:
            for i in siblings.others:
                holder = f"worker-{i}"
                if (response := await streams.open(holder, key)) is not None:
                    relayed = FromPeer(response, NO_EXPECTATION, holder, engine.limits)
                    return await deliver(request, engine, relayed)
        raise web.HTTPNotFound(text="not downloading that file\n")

    async def _connect(self, request: web.BaseRequest) -> web.StreamResponse:
        host, _, port = request.raw_path.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise web.HTTPBadRequest(text="CONNECT needs host:port\n")
        if not self.parts.router.allow_connect(host, int(port)):
            why = f"CONNECT to {request.raw_path}: only to configured upstreams, on port 443"
            raise web.HTTPForbidden(reason=status_reason(why), text=f"forbidden: {why}\n")
        return await tunnel(request, host, int(port), self.parts.egress)

    async def _api(self, request: web.BaseRequest, siblings: Workers | None) -> web.StreamResponse:
        target = request.raw_path
        if target.split("?")[0] == "/api/status":
            return web.json_response(await self._snapshot(request, siblings))
        raise web.HTTPNotFound(text="not found\n")

    async def _snapshot(self, request: web.BaseRequest, siblings: Workers | None) -> dict[str, Any]:
        """The status document: this worker's, or (a client asking) every worker's. A
        sibling asking gets every package it counted, to add them up (`merge_status`)."""
        busiest = TOP_PACKAGES if is_internal(request) else status.BUSIEST
        doc = await status.snapshot(self.parts.source, self.parts.inventory, busiest)
        if self.parts.workers is not None:
            doc["worker"] = self.parts.workers.index
        if siblings is not None:
            others = [json.loads(b) for b in await siblings.gather("/api/status")]
            doc = merge_status(doc, others)
        if not is_internal(request):  # the service's (merged) figures, as a client sees them
            configured = len(siblings.sockets) if siblings is not None else 1
            disk = await asyncio.to_thread(glance.disk_usage, self.parts.config.cache.dir)
            doc["glance"] = glance.figures(doc, disk, configured)
        # the lines to paste name the host this asker used
        published = [p["feed"] for p in doc.get("images", [])]
        doc["use"] = use.lines(
            doc.get("use"), request.headers.get("Host"), _secure(request), published
        )
        return doc

    async def _metrics(self, siblings: Workers | None) -> web.Response:
        if not self.parts.config.metrics:
            raise web.HTTPNotFound(text="metrics are disabled (metrics.enabled)\n")
        body = self.parts.metrics.exposition()
        if siblings is not None:
            others = await siblings.gather("/metrics")
            body = merge_metrics([body.decode(), *(o.decode() for o in others)])
        return web.Response(
            body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def _admin_for_all(
        self, request: web.BaseRequest, siblings: Workers
    ) -> web.StreamResponse:
        """An admin call for the whole service: checked here, then applied by every
        worker (drain, reload) or by the primary (the jobs), else by this one."""
        parts = self.parts
        parts.admin.check(request)
        body = await request.read()  # kept: admin.handle reads it again
        action = request.raw_path.removeprefix("/api/admin/").strip("/")
        if action in TO_PRIMARY and not siblings.primary:
            return await siblings.forward(0, request, body)
        response = await parts.admin.handle(request, parts.actions)
        if action in TO_ALL and response.status < 300:
            await siblings.broadcast(request, body)
        return response

    async def _index(self, request: web.BaseRequest, siblings: Workers | None) -> web.Response:
        parts = self.parts
        if request.headers.get("X-Status-Fragment"):  # the page's own refresh
            snap = await self._snapshot(request, siblings)
            return web.Response(text=status.render_main(snap), content_type="text/html")
        if "text/html" in request.headers.get("Accept", ""):  # a browser: the status page
            snap = await self._snapshot(request, siblings)
            return web.Response(text=status.render_page(snap), content_type="text/html")
        port = parts.config.listen.port
        accepted = "\n".join(f"  {line}" for line in parts.router.accepted())
        # `406 Usage Information`, as apt-cacher-ng answers apt's own GET /: what
        # auto-apt-proxy probes for. Browsers got the status page above.
        return web.Response(
            status=406,
            reason="Usage Information",
            text=f"archive-local {__version__}: apt cache\n\n"
            f'forward proxy: Acquire::http::Proxy "http://<this host>:{port}";\n'
            f"path form: deb http://<this host>:{port}/<remap>/ <suite> <components>\n"
            f"\naccepted upstreams (remaps, and the hosts proxy-form requests may name):\n"
            f"{accepted}\n\nstatus page: open this address in a browser\n",
        )
