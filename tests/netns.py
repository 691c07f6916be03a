"""A network namespace joined to the host by a veth pair: another host for network tests,
with addresses that exist only on that pair (never the machine's own network)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import IN_CI


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


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def veth_pair(tag: str, subnet: int) -> Iterator[Pair]:
    """Namespace `al-<tag>-<pid>`, host side 10.231.<subnet>.1/24, namespace side .2."""
    if os.geteuid() != 0 or subprocess.run(["ip", "-V"], capture_output=True).returncode:
        msg = "network namespaces need root and iproute2"
        pytest.fail(msg) if IN_CI else pytest.skip(msg)
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
