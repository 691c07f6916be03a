"""A network namespace joined to the host by a veth pair: another host for network tests,
with addresses that exist only on that pair (never the machine's own network)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
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

    resolv: str = ""  # a file that is b's /etc/resolv.conf (see `run_b`)

    def run_b(self, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """`cmd` in b, its /etc/resolv.conf replaced by the test's own (a bind mount in a
        private mount namespace: the machine's /etc is never written)."""
        return _in(self.b, (*_with_resolv(self.resolv), *cmd), **kw)

    @contextlib.contextmanager
    def sniff(self) -> Iterator[list[dict]]:
        """Every IP packet b sends towards a, recorded on a's side of the link: what a
        process in b tried to reach. Filled in when the block ends."""
        seen: list[dict] = []
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.a, sys.executable, "-c", SNIFFER, self.a_if],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the sniffer did not start")
        try:
            yield seen
        finally:
            time.sleep(0.2)  # the last packets in flight
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
            seen.extend(json.loads(line) for line in out.splitlines() if line)

    def leaving(self, seen: list[dict]) -> list[dict]:
        """The packets of `seen` addressed beyond the link: neither a, b nor link-local
        (multicast such as mDNS, neighbour discovery)."""
        local = {
            self.a_addr,
            self.b_addr,
            "255.255.255.255",
            self.a_addr.rsplit(".", 1)[0] + ".255",
        }
        out = []
        for p in seen:
            dst = ipaddress.ip_address(p["dst"])
            link_local = dst.is_link_local or (
                dst.is_multicast
                and (dst in ipaddress.ip_network("224.0.0.0/24") or str(dst).startswith("ff02:"))
            )
            if p["dst"] not in local and not link_local:
                out.append(p)
        return out

    def popen_a(self, *cmd: str, **kw: object) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.a, *cmd], **kw)  # type: ignore[call-overload]


# in namespace a: print "ready", then a JSON line per IPv4/IPv6 packet arriving on the
# interface (source, destination, protocol, destination port)
SNIFFER = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind((sys.argv[1], 0))
print("ready", flush=True)
while True:
    frame, addr = s.recvfrom(65535)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    kind = struct.unpack("!H", frame[12:14])[0]
    if kind == 0x0800:
        ihl = (frame[14] & 15) * 4
        proto, src, dst = frame[23], frame[26:30], frame[30:34]
        ports = frame[14 + ihl : 18 + ihl]
        family = socket.AF_INET
    elif kind == 0x86DD:
        proto, src, dst, ports = frame[20], frame[22:38], frame[38:54], frame[54:58]
        family = socket.AF_INET6
    else:
        continue
    port = struct.unpack("!H", ports[2:4])[0] if proto in (6, 17) and len(ports) == 4 else None
    print(json.dumps({"src": socket.inet_ntop(family, src), "dst": socket.inet_ntop(family, dst),
                      "proto": proto, "port": port}), flush=True)
"""


def _with_resolv(resolv: str) -> tuple[str, ...]:
    if not resolv:
        return ()
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return ("unshare", "-m", "--propagation", "private", "sh", "-c", script, resolv)


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
    """Namespaces `al-<tag>-a-<pid>` / `-b-`, multicast on, b's default route via a (and
    nothing beyond a: a has no route out).

    `resolv_b` is b's /etc/resolv.conf for `run_b` (empty: no name server at all), kept in
    a temporary folder.
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
    folder = tempfile.mkdtemp(prefix="al-netns-")
    link.resolv = os.path.join(folder, "resolv.conf")
    with open(link.resolv, "w") as f:
        f.write(resolv_b)
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
        yield link
    finally:
        for ns in (link.a, link.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def lone_namespace(tag: str) -> Iterator[str]:
    """A network namespace with only its own loopback (`al-<tag>-<pid>`): servers in it
    may take the well-known ports (80, 3142) of names the test resolves to 127.0.0.x."""
    _need_namespaces()
    ns = f"al-{tag}-{os.getpid() % 100000}"
    try:
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def with_hosts(ns: str, hosts: str) -> tuple[str, ...]:
    """The prefix that runs a command in `ns` with `hosts` as its /etc/hosts (a private
    mount namespace: the machine's file is not touched)."""
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    unshare = ("unshare", "-m", "--propagation", "private")
    return ("ip", "netns", "exec", ns, *unshare, "sh", "-c", script, hosts)
