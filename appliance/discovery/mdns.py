"""Advertise the appliance over multicast DNS (python-zeroconf).

Two things are published: the host name (`archive.local` by default, A/AAAA records
for the appliance's own addresses) and the service `_apt_proxy._tcp` on the proxy
port, the convention auto-apt-proxy and squid-deb-proxy-client look for. The
records are withdrawn (goodbye packets) on clean shutdown.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

import ifaddr
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from appliance.config import DiscoveryConfig

log = logging.getLogger(__name__)

SERVICE_TYPE = "_apt_proxy._tcp.local."


def own_addresses(interfaces: tuple[str, ...]) -> list[str]:
    """Addresses to advertise: those of the named interfaces (or given addresses),
    else every non-loopback, non-link-local address of the machine."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        named = not interfaces or adapter.nice_name in interfaces or adapter.name in interfaces
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            address = ipaddress.ip_address(text.split("%")[0])
            if text in interfaces or (
                named and not address.is_loopback and not address.is_link_local
            ):
                found.append(str(address))
    return sorted(set(found), key=lambda a: (":" in a, a))


class Advertiser:
    def __init__(self, config: DiscoveryConfig, port: int) -> None:
        self.config = config
        self.port = port
        self.zeroconf: AsyncZeroconf | None = None
        self.info: AsyncServiceInfo | None = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        self.addresses = own_addresses(self.config.interfaces)
        if not self.addresses:
            log.warning(
                "mDNS: no address to advertise on %s", self.config.interfaces or "any interface"
            )
            return
        host = self.config.name.removesuffix(".") + "."
        instance = self.config.name.split(".")[0]
        self.info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            port=self.port,
            properties={"path": "/", "service": "archive-local"},
            server=host,
            addresses=[socket.inet_pton(_family(a), a) for a in self.addresses],
        )
        self.zeroconf = AsyncZeroconf(
            interfaces=self.addresses, ip_version=_ip_version(self.addresses)
        )
        # `_apt_proxy` has an underscore in the service name, which RFC 6763 strictness refuses
        await self.zeroconf.async_register_service(self.info, strict=False)
        log.info(
            "mDNS: %s and %s on port %d at %s",
            host,
            SERVICE_TYPE,
            self.port,
            ", ".join(self.addresses),
        )

    async def close(self) -> None:
        if self.zeroconf is None:
            return
        if self.info is not None:
            # the call returns the task that sends the goodbye packets: wait for them
            await (await self.zeroconf.async_unregister_service(self.info))
        await self.zeroconf.async_close()
        self.zeroconf = None


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _ip_version(addresses: list[str]) -> IPVersion:
    v6 = any(":" in a for a in addresses)
    v4 = any(":" not in a for a in addresses)
    return IPVersion.All if v4 and v6 else IPVersion.V6Only if v6 else IPVersion.V4Only
