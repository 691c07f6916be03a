"""Who may be proxied: remap names and allowed hosts -> cache keys and upstream URLs.

Not an open proxy: a forward-proxy request is served only when it falls under a
remap's upstream or an `apt.allow` entry; a path request only under a configured
remap name. Everything else is `Forbidden` (403).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from appliance.apt.paths import BadPath, encode_path, expectation, freshness, split_path
from appliance.cache.keys import UpstreamBase, hostport
from appliance.cache.route import Route

CONNECT_PORTS = frozenset({443})
# Routes of recent request targets are remembered, bounded by bytes (targets are chosen by
# clients: 8192 entries of 8 KB paths with their mirror URLs would be hundreds of MB).
ROUTE_MEMO_BYTES = 4 * 1024 * 1024
ROUTE_MEMO_TARGET = 1024  # longer targets are routed every time, never remembered


class Forbidden(PermissionError):
    """A request for an upstream that is not configured; answered with 403."""


def _host_only(hostport: str) -> str:
    if hostport.startswith("["):
        return hostport[: hostport.index("]") + 1]
    return hostport.split(":", 1)[0]


class Router:
    def __init__(self, remaps: Mapping[str, tuple[str, ...]], allow: tuple[str, ...] = ()) -> None:
        self._remaps = {
            name: tuple(UpstreamBase.parse(u) for u in urls) for name, urls in remaps.items()
        }
        self._allowed = {a.lower() for a in allow}
        self._allowed |= {m.hostport for mirrors in self._remaps.values() for m in mirrors}
        self._allowed_hosts = {_host_only(hp) for hp in self._allowed}
        self._memo: dict[str, Route] = {}
        self._memo_bytes = 0

    @property
    def remap_names(self) -> list[str]:
        return sorted(self._remaps)

    def route(self, target: str) -> Route:
        """A request target in either form; answers are memoised (they are pure)."""
        route = self._memo.get(target)
        if route is None:
            is_url = target.startswith("http://") or "://" in target.split("/", 1)[0]
            route = self.route_url(target) if is_url else self.route_path(target)
            if len(target) <= ROUTE_MEMO_TARGET:
                cost = 2 * len(target) + len(route.key) + sum(map(len, route.urls)) + 400
                if self._memo_bytes + cost > ROUTE_MEMO_BYTES:
                    self._memo.clear()
                    self._memo_bytes = 0
                self._memo[target] = route
                self._memo_bytes += cost
        return route

    def route_path(self, raw_path: str) -> Route:
        """`/NAME/rest` (path-remap form)."""
        segments = split_path(raw_path)
        if not segments or segments[0] not in self._remaps:
            raise Forbidden(f"no remap named {segments[0]!r}" if segments else "no remap given")
        return self._remap_route(self._remaps[segments[0]], segments[1:], first=None)

    def route_url(self, url: str) -> Route:
        """`http://host[:port]/path` (forward-proxy form)."""
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise BadPath(f"only http:// URLs can be proxied, got {parts.scheme}://")
        try:
            target = hostport(parts.hostname or "", parts.port)
        except ValueError:
            raise BadPath("bad port in URL") from None
        raw_path = url.split("://", 1)[1]
        raw_path = raw_path[raw_path.find("/") :] if "/" in raw_path else "/"
        segments = split_path(raw_path)
        # A URL under a remap's mirror shares that remap's cache entries.
        for mirrors in self._remaps.values():
            for i, m in enumerate(mirrors):
                if m.hostport == target and segments[: len(m.base)] == m.base:
                    return self._remap_route(mirrors, segments[len(m.base) :], first=i)
        if target not in self._allowed:
            raise Forbidden(f"{target} is not a configured upstream")
        if not segments:
            raise BadPath("no file named")
        return Route(
            key=f"{target}/{'/'.join(segments)}",
            urls=(f"http://{target}/{encode_path(segments)}",),
            freshness=freshness(segments),
            expect=expectation(segments),
        )

    def allow_connect(self, host: str, port: int) -> bool:
        """CONNECT (https tunnels) only to configured hosts, only on 443."""
        return port in CONNECT_PORTS and hostport(host, None) in self._allowed_hosts

    def _remap_route(
        self, mirrors: tuple[UpstreamBase, ...], rest: tuple[str, ...], first: int | None
    ) -> Route:
        if not rest:
            raise BadPath("no file named")
        order = list(mirrors)
        if first:
            order.insert(0, order.pop(first))
        canonical = mirrors[0]
        return Route(
            key="/".join((canonical.hostport, *canonical.base, *rest)),
            urls=tuple(m.url(rest) for m in order),
            freshness=freshness(rest),
            expect=expectation(rest),
        )
