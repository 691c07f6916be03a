"""A network namespace joined to the host by a veth pair: another host for network tests,
with addresses that exist only on that pair (never the machine's own network)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from tests.conftest import unavailable


@dataclass
class Pair:
    ns: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str

    def run(self, *cmd: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,  # type: ignore[call-overload]
        )


def _need_namespaces() -> None:
    if os.geteuid() != 0 or subprocess.run(["ip", "-V"], capture_output=True).returncode:
        unavailable("network namespaces need root and iproute2")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def veth_pair(tag: str, subnet: int) -> Iterator[Pair]:
    """Namespace `al-<tag>-<pid>`, host side 10.231.<subnet>.1/24, namespace side .2."""
    _need_namespaces()
    suffix = f"{os.getpid() % 100000}"
    pair = Pair(
        f"al-{tag}-{suffix}",
        f"alh{subnet}{suffix}"[:15],
        f"aln{subnet}{suffix}"[:15],
        f"10.231.{subnet}.1",
        f"10.231.{subnet}.2",
    )
    try:
        _ip("netns", "add", pair.ns)
        _ip("link", "add", pair.host_if, "type", "veth", "peer", "name", pair.ns_if)
        _ip("link", "set", pair.ns_if, "netns", pair.ns)
        _ip("addr", "add", f"{pair.host_addr}/24", "dev", pair.host_if)
        _ip("link", "set", pair.host_if, "up")
        for args in (
            ("addr", "add", f"{pair.ns_addr}/24", "dev", pair.ns_if),
            ("link", "set", pair.ns_if, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("-n", pair.ns, *args)
        yield pair
    finally:
        subprocess.run(["ip", "netns", "del", pair.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", pair.host_if], capture_output=True)


@dataclass
class Link:
    """Two namespaces joined by a veth pair: `a` (10.231.<subnet>.1) and `b` (.2)."""

    a: str
    b: str
    a_addr: str
    b_addr: str
    a_if: str
    b_if: str

    def run_a(self, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return _in(self.a, cmd, **kw)

    def run_b(self, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return _in(self.b, cmd, **kw)

    def popen_a(self, *cmd: str, **kw: object) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.a, *cmd], **kw)  # type: ignore[call-overload]


def _in(
    ns: str, cmd: tuple[str, ...], timeout: float = 120, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,  # type: ignore[call-overload]
    )


@contextlib.contextmanager
def linked_namespaces(tag: str, subnet: int, resolv_b: str = "") -> Iterator[Link]:
    """Namespaces `al-<tag>-a-<pid>` / `-b-`, multicast on, b's default route via a.

    `resolv_b` becomes b's /etc/resolv.conf (ip netns exec mounts /etc/netns/<ns>/ files).
    """
    _need_namespaces()
    pid = os.getpid() % 100000
    link = Link(
        f"al-{tag}-a-{pid}",
        f"al-{tag}-b-{pid}",
        f"10.231.{subnet}.1",
        f"10.231.{subnet}.2",
        f"ala{subnet}{pid}"[:15],
        f"alb{subnet}{pid}"[:15],
    )
    etc_b = f"/etc/netns/{link.b}"
    try:
        for ns in (link.a, link.b):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            "-n",
            link.a,
            "link",
            "add",
            link.a_if,
            "type",
            "veth",
            "peer",
            "name",
            link.b_if,
            "netns",
            link.b,
        )
        for ns, dev, addr in ((link.a, link.a_if, link.a_addr), (link.b, link.b_if, link.b_addr)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", "dev", dev, "multicast", "on", "up")
        _ip("-n", link.b, "route", "add", "default", "via", link.a_addr)
        _ip("-n", link.a, "route", "add", "224.0.0.0/4", "dev", link.a_if)
        os.makedirs(etc_b, exist_ok=True)
        with open(f"{etc_b}/resolv.conf", "w") as f:
            f.write(resolv_b)
        yield link
    finally:
        for ns in (link.a, link.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        with contextlib.suppress(OSError):
            os.unlink(f"{etc_b}/resolv.conf")
            os.rmdir(etc_b)
