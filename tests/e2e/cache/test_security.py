"""Not an open proxy, no path escapes, CONNECT only where allowed, bounded requests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Appliance, StartAppliance
from tests.upstream import Upstream


def raw(port: int, request: bytes, timeout: float = 5) -> bytes:
    """Send bytes exactly as given (no client-side normalisation) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and request.startswith(b"CONNECT"):
                    break
        except TimeoutError:
            pass
    return data


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def app(upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance) -> Appliance:
    (upstream_root / "debian/pool").mkdir(parents=True)
    (upstream_root / "debian/pool/ok.deb").write_bytes(b"ok")
    (upstream_root / "secret").write_text("outside the remap")
    return start_appliance({"debian": [f"{upstream.url}/debian"]}, allow=["127.0.0.1:1"])


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: archive.local\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.parametrize(
    "target",
    [
        "http://example.invalid/debian/pool/x.deb",  # host not configured
        "http://127.0.0.1:9/debian/pool/x.deb",  # configured host, other port
        "/ubuntu/pool/x.deb",  # remap not configured
        "/nothing",
    ],
)
def test_unconfigured_targets_are_forbidden(
    app: Appliance, upstream: Upstream, target: str
) -> None:
    before = len(upstream.requests)
    assert status(raw(app.port, get(target))) == 403
    assert len(upstream.requests) == before


def test_forward_request_under_remap_is_served(app: Appliance, upstream: Upstream) -> None:
    answer = raw(app.port, get(f"{upstream.url}/debian/pool/ok.deb"))
    assert status(answer) == 200 and answer.endswith(b"\r\n\r\nok")


def test_remap_hosts_are_allowed_for_forward_requests(app: Appliance, upstream: Upstream) -> None:
    """A remap's upstream host may be used as a forward-proxy target beyond the remap path."""
    answer = raw(app.port, get(f"{upstream.url}/secret"))
    assert status(answer) == 200 and answer.endswith(b"outside the remap")


@pytest.mark.parametrize(
    "path",
    [
        "/debian/../secret",
        "/debian/pool/../../secret",
        "/debian/%2e%2e/secret",
        "/debian/%2E%2E/%2E%2E/secret",
        "/debian/pool%2f..%2f..%2fsecret",
        "/debian/pool/x%00.deb",
        "/debian/pool/..%5c..%5csecret",
        "/debian/pool/.ok.deb.meta",
        "/debian/pool/%2eok.deb.meta",
        "http://127.0.0.1:1/%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_traversal_is_refused(app: Appliance, upstream: Upstream, path: str) -> None:
    before = len(upstream.requests)
    assert status(raw(app.port, get(path))) == 400
    assert len(upstream.requests) == before


def test_only_get_and_head(app: Appliance) -> None:
    req = b"POST /debian/pool/ok.deb HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    assert status(raw(app.port, req)) == 405


def test_oversized_request_line_and_headers_refused(app: Appliance) -> None:
    long_path = "/debian/pool/" + "a" * 10000
    assert status(raw(app.port, get(long_path))) in (400, 414)
    req = b"GET /debian/pool/ok.deb HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10000 + b"\r\n\r\n"
    assert status(raw(app.port, req)) in (400, 431)


@pytest.fixture
def tls_port_echo() -> Iterator[int]:
    """An echo server standing in for an https upstream on 127.0.0.1:443."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind(("127.0.0.1", 443))
    except PermissionError:
        pytest.fail("binding 127.0.0.1:443 needs root (the tests run as root in CI)")
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    yield 443
    srv.close()


def test_connect_tunnels_to_allowed_host_on_443(
    tls_port_echo: int, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    app = start_appliance({"debian": [f"{upstream.url}/debian"]}, allow=["127.0.0.1"])
    with socket.create_connection(("127.0.0.1", app.port), 5) as s:
        s.sendall(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n")
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        s.sendall(b"hello through the tunnel")
        assert s.recv(4096) == b"HELLO THROUGH THE TUNNEL"
    time.sleep(0.3)
    # a tunnel is not a cache hit: not counted in the request metrics
    assert app.status()["requests"]["apt"]["hit"] == 0


@pytest.mark.parametrize("target", ["example.invalid:443", "127.0.0.1:22", "127.0.0.1:80"])
def test_connect_refused_elsewhere(
    target: str, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    app = start_appliance({"debian": [f"{upstream.url}/debian"]}, allow=["127.0.0.1"])
    req = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    assert status(raw(app.port, req)) == 403


def test_transfer_encoding_in_http_1_0_is_refused_and_the_connection_closed(
    app: Appliance,
) -> None:
    """RFC 9112 §6.1: faulty framing. A request behind it on the same connection (what a
    smuggler would hide there) is never answered."""
    smuggled = (
        b"GET /debian/pool/ok.deb HTTP/1.0\r\nHost: archive.local\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /debian/pool/ok.deb HTTP/1.1\r\nHost: archive.local\r\n\r\n"
    )
    started = time.monotonic()
    answer = raw(app.port, smuggled, timeout=10)
    assert time.monotonic() - started < 5  # closed by the server, not by our timeout
    assert status(answer) == 400 and b" 200 OK" not in answer, answer
    assert b"\r\nok" not in answer
    ok = b"GET /debian/pool/ok.deb HTTP/1.0\r\nHost: archive.local\r\n\r\n"
    assert status(raw(app.port, ok)) == 200  # HTTP/1.0 without it: served
