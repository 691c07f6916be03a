"""Who may be proxied: remap names and allowed hosts -> cache keys and upstream URLs.

Not an open proxy: a forward-proxy request is served only when it falls under a
remap's upstream, an official mirror of a remap's archive (`apt.mirrors`, see `mirrors`),
a host of the machine's own apt sources or an `apt.allow` entry; a path request only
under a configured remap name. Everything else is `Forbidden` (403), and the status line
says why: apt shows it and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from appliance.apt.mirrors import Mirrors
from appliance.apt.paths import BadPath, encode_path, expectation, freshness, split_path
from appliance.cache.keys import UpstreamBase, hostport
from appliance.cache.route import Route

CONNECT_PORTS = frozenset({443})
# Routes of recent request targets are remembered, bounded by bytes (targets are chosen by
# clients: 8192 entries of 8 KB paths with their mirror URLs would be hundreds of MB).
ROUTE_MEMO_BYTES = 4 * 1024 * 1024
ROUTE_MEMO_TARGET = 1024  # longer targets are routed every time, never remembered


class Forbidden(PermissionError):
    """A request for an upstream that is not configured; answered with 403 and the
    message as the status line's reason (what apt prints)."""


def _host_only(hostport: str) -> str:
    if hostport.startswith("["):
        return hostport[: hostport.index("]") + 1]
    return hostport.split(":", 1)[0]


class Router:
    def __init__(
        self,
        remaps: Mapping[str, tuple[str, ...]],
        allow: tuple[str, ...] = (),
        mirrors: Mirrors | None = None,
    ) -> None:
        self.mirrors = mirrors or Mirrors()
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

    def accepted(self) -> list[str]:
        """What proxy-form requests may name, for people (`GET /`): each remap's upstreams
        and official mirrors, the machine's own apt hosts, `apt.allow`."""
        lines = []
        for name in self.remap_names:
            lines.append(f"/{name}/: {', '.join(m.url(()) for m in self._remaps[name])}")
            lines += [f"  and mirrors: {where}" for where in self.mirrors.sources.get(name, ())]
        if self.mirrors.machine_hosts:
            lines.append(
                f"this machine's apt sources: {', '.join(sorted(self.mirrors.machine_hosts))}"
            )
        remap_hosts = {m.hostport for mirrors in self._remaps.values() for m in mirrors}
        if allowed := sorted(self._allowed - remap_hosts):
            lines.append(f"apt.allow: {', '.join(allowed)}")
        return lines

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
            names = ", ".join(f"/{n}/" for n in self.remap_names) or "none"
            what = f"No remap named {segments[0]}" if segments else "No remap given"
            raise Forbidden(f"{what} (remaps: {names})")
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
        found = self.mirrors.match(target, segments)
        if found is not None:  # an official mirror of a remap's archive: its entries
            name, n = found
            via = UpstreamBase("http", target, segments[:n])
            return self._remap_route(self._remaps[name], segments[n:], first=None, via=via)
        if target not in self._allowed and target not in self.mirrors.machine_hosts:
            raise Forbidden(
                f"Not a configured upstream: {target} (add it with --remap or apt.allow)"
            )
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
        if port not in CONNECT_PORTS:
            return False
        target = hostport(host, None)
        return target in self._allowed_hosts or self.mirrors.accepts_host(target)

    def _remap_route(
        self,
        mirrors: tuple[UpstreamBase, ...],
        rest: tuple[str, ...],
        first: int | None,
        via: UpstreamBase | None = None,
    ) -> Route:
        """The remap's entry; asked of `via` first (the mirror the client named: it may be
        the only one its network reaches), then of the remap's upstreams in order."""
        if not rest:
            raise BadPath("no file named")
        order = list(mirrors)
        if first:
            order.insert(0, order.pop(first))
        if via is not None:
            order = [via, *(m for m in order if m != via)]
        canonical = mirrors[0]
        return Route(
            key="/".join((canonical.hostport, *canonical.base, *rest)),
            urls=tuple(m.url(rest) for m in order),
            freshness=freshness(rest),
            expect=expectation(rest),
        )
