"""Where the appliance may connect: configured hosts only, never metadata or itself.

Every upstream connection goes through the fetcher's session, so these rules hold for
apt files, feed documents and images alike:

- a redirect may lead only to the host it came from or to another configured host
  (the same rule as forward-proxy requests), over http or https;
- no connection, whatever name led to it, goes to a link-local or cloud metadata
  address (169.254.0.0/16, fe80::/10, fd00:ec2::254), nor to the appliance's own
  listening port: a hostile mirror cannot make the cache fetch the admin API or the
  instance's credentials and store them as a `.deb`.

Names are checked after resolution (`GuardedResolver`), so a name that resolves to a
forbidden address is refused before any connection is attempted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from appliance.cache.keys import hostport
from appliance.config import Config

_METADATA = (
    ipaddress.ip_network("169.254.0.0/16"),  # IPv4 link-local: EC2/OpenStack/GCE metadata
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("fd00:ec2::254/128"),  # EC2's IPv6 metadata endpoint
)


class EgressRefused(OSError):
    """A connection or redirect the rules above forbid; the message says which and why."""


_local_cache: dict[str, bool] = {}


def is_local_address(ip: str) -> bool:
    """True for an address of this machine (one a socket can be bound to)."""
    if ip in _local_cache:
        return _local_cache[ip]
    addr = ipaddress.ip_address(ip)
    local = addr.is_loopback or addr.is_unspecified
    if not local:
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
            local = True
    if len(_local_cache) < 1024:
        _local_cache[ip] = local
    return local


class EgressPolicy:
    """The rules; the service tells it which hosts are configured and where it listens."""

    def __init__(
        self,
        allowed: Callable[[str], bool] | None = None,
        own_ports: Iterable[int] = (),
        public_only: Callable[[str], bool] | None = None,
    ) -> None:
        # hostport (as `keys.hostport` writes it) -> configured?
        self.allowed: Callable[[str], bool] = allowed or (lambda _hp: False)
        self.own_ports = frozenset(own_ports)
        # hosts that may only resolve to public addresses (known from a mirror list alone:
        # a lapsed domain re-registered must not reach the LAN through the cache)
        self.public_only: Callable[[str], bool] = public_only or (lambda _host: False)

    def allow(
        self, allowed: Callable[[str], bool], public_only: Callable[[str], bool] | None = None
    ) -> None:
        """The configured upstream hosts of a new configuration (reload)."""
        self.allowed = allowed
        self.public_only = public_only or (lambda _host: False)

    def address_problem(self, ip: str, port: int) -> str | None:
        """Why a connection to ip:port is forbidden, or None."""
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return f"{ip} is not an address"
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in net for net in _METADATA):
            return f"{addr} is a link-local/metadata address"
        if port in self.own_ports and is_local_address(str(addr)):
            return f"{addr}:{port} is this appliance"
        return None

    def resolved_problem(self, host: str, ip: str, port: int) -> str | None:
        """Why connecting to `ip`, an address `host` resolved to, is forbidden, or None."""
        problem = self.address_problem(ip, port)
        if problem is None and self.public_only(host.lower()) and not _is_public(ip):
            problem = f"{ip} is not a public address (a host known from a mirror list)"
        return problem

    def redirect_problem(self, origin: str, target: str) -> str | None:
        """Why following a redirect from `origin` to `target` is forbidden, or None."""
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"redirect to {target[:200]!r}: only http(s) URLs are followed"
        try:
            to = hostport(parts.hostname, parts.port, parts.scheme)
        except ValueError:
            return f"redirect to {target[:200]!r}: bad port"
        src = urlsplit(origin)
        try:
            same = to == hostport(src.hostname or "", src.port, src.scheme)
        except ValueError:
            same = False
        if not same and not self.allowed(to):
            return f"redirect to {to}, which is not a configured upstream (add it to apt.allow)"
        if problem := self.literal_problem(target):
            return f"redirect to {to}: {problem}"
        return None

    def literal_problem(self, url: str) -> str | None:
        """For a URL whose host is an address (no resolver runs for it): why it is forbidden."""
        parts = urlsplit(url)
        try:
            ipaddress.ip_address(parts.hostname or "")
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        return self.address_problem(parts.hostname or "", port)


def configured_hosts(config: Config, extra_urls: Iterable[str] = ()) -> frozenset[str]:
    """host[:port] of every configured upstream: remaps, apt.allow and image feeds."""
    urls = [u for mirrors in config.apt.remaps.values() for u in mirrors]
    urls += [f.url for f in config.images.feeds]
    urls += list(extra_urls)
    hosts = set(config.apt.allow)
    for url in urls:
        parts = urlsplit(url)
        with contextlib.suppress(ValueError):
            hosts.add(hostport(parts.hostname or "", parts.port, parts.scheme))
    return frozenset(hosts)


def policy_for(config: Config, extra_urls: Iterable[str] = ()) -> EgressPolicy:
    """The rules for this configuration (CLI commands; the service updates its own)."""
    hosts = configured_hosts(config, extra_urls)
    return EgressPolicy(hosts.__contains__, own_ports=(config.listen.port,))


def _is_public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global


class GuardedResolver(AbstractResolver):
    """getaddrinfo, minus the addresses the policy forbids (all of them: refused)."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        usable, problems = [], []
        for r in found:
            problem = self.policy.resolved_problem(host, r["host"], r["port"] or port)
            if problem is None:
                usable.append(r)
            else:
                problems.append(problem)
        if not usable:
            raise EgressRefused(f"{host}: {'; '.join(sorted(set(problems)))}")
        return usable

    async def close(self) -> None:
        await self._inner.close()
