"""One address holding thousands of connections that never finish: TLS handshakes on the
HTTPS port, request headers on the plain port (slowloris). It holds at most its share of
sockets and buffers, a handshake is cut off after a few seconds, the service's memory
stays near idle and the other clients are served as fast as before.

The attacker is 127.0.0.1 and the other client ::1 (both ports listen on `[::]`): two
addresses, each with its own `limits.connections_per_client`. One process (`workers: 1`,
as `start_appliance` sets): its VmRSS is the whole service, and every connection from an
address meets the same count (each worker counts its own)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Appliance, StartAppliance, free_port

ATTACK = 2000  # connections from the one address
CAP = 256  # limits.connections_per_client, the default
HANDSHAKE_TIMEOUT = 10  # s: the service's (appliance/web/server.py)
ROUNDS = 30  # requests of each kind from the other client while the attack holds


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _client_hello() -> bytes:
    """The first flight of a real TLS client: the attack sends half of it."""
    out = ssl.MemoryBIO()
    tls = _unverified().wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def _get(port: int, context: ssl.SSLContext | None = None, host: str = "::1") -> int:
    """`GET /healthz` on a new connection (the other client: ::1)."""
    conn = (
        http.client.HTTPSConnection(host, port, timeout=5, context=context)
        if context is not None
        else http.client.HTTPConnection(host, port, timeout=5)
    )
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _still_open(held: list[socket.socket]) -> int:
    """Connections the service keeps waiting (nothing received, not closed)."""
    count = 0
    for sock in held:
        sock.setblocking(False)
        try:
            sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


@contextlib.contextmanager
def _flood(port: int, first: Callable[[int], bytes]) -> Iterator[list[socket.socket]]:
    """ATTACK connections from 127.0.0.1, the n-th sending `first(n)` and then nothing."""
    held: list[socket.socket] = []
    try:
        for n in range(ATTACK):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(sock)
            with contextlib.suppress(OSError):  # turned away already
                if data := first(n):
                    sock.send(data)
        yield held
    finally:
        for sock in held:
            sock.close()


def _start(start_appliance: StartAppliance) -> tuple[Appliance, int]:
    port, tls_port = free_port(), free_port()
    extra = {"listen": f"[::]:{port}", "tls": {"listen": f"[::]:{tls_port}"}}
    app = start_appliance({}, port=port, extra=extra)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert _get(tls_port, _unverified()) == 200
            break
        except OSError:
            assert time.monotonic() < deadline, app.log_text()
            time.sleep(0.1)
    return app, tls_port


def _served_meanwhile(app: Appliance, tls_port: int) -> tuple[float, float, float]:
    """(p50 HTTPS ms, p50 plain ms, highest VmRSS MiB) of the other client's requests."""
    https, plain, rss = [], [], []
    context = _unverified()
    for _ in range(ROUNDS):
        started = time.perf_counter()
        assert _get(tls_port, context) == 200
        https.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert _get(app.port) == 200
        plain.append(time.perf_counter() - started)
        rss.append(_rss_mib(app.proc.pid))
    return statistics.median(https) * 1000, statistics.median(plain) * 1000, max(rss)


def _idle(app: Appliance, tls_port: int) -> float:
    _served_meanwhile(app, tls_port)  # warm: imports, caches, the first handshakes
    time.sleep(0.3)
    return _rss_mib(app.proc.pid)


def test_thousands_of_unfinished_handshakes_from_one_address(
    start_appliance: StartAppliance,
) -> None:
    app, tls_port = _start(start_appliance)
    idle = _idle(app, tls_port)
    hello = _client_hello()
    started = time.monotonic()
    with _flood(tls_port, lambda n: hello[: len(hello) // 2] if n % 2 else b"") as held:
        time.sleep(0.5)
        waiting = _still_open(held)
        https, plain, peak = _served_meanwhile(app, tls_port)
        print(f"\nidle {idle:.1f} MiB, peak {peak:.1f} MiB, {waiting} held")
        print(f"p50 https {https:.1f} ms, plain {plain:.1f} ms")
        assert 0 < waiting <= CAP, waiting  # counted at the TCP accept, before the handshake
        assert peak - idle < 30, (idle, peak)
        assert https < 50 and plain < 50, (https, plain)
        # the first connections are cut off at the handshake timeout, not a minute later
        first = held[0]
        first.setblocking(True)
        first.settimeout(max(0.1, started + HANDSHAKE_TIMEOUT + 5 - time.monotonic()))
        with contextlib.suppress(ConnectionResetError):
            assert first.recv(1) == b""
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT + 5
    # every count was given back: the address is served again
    deadline = time.monotonic() + 5
    while _still_served(tls_port) is False:
        assert time.monotonic() < deadline, app.log_text()
        time.sleep(0.1)
    assert app.proc.poll() is None
    assert "Traceback" not in app.log_text()


def _still_served(tls_port: int) -> bool:
    try:
        return _get(tls_port, _unverified(), host="127.0.0.1") == 200
    except OSError:
        return False


def test_slowloris_on_the_plain_port_from_one_address(start_appliance: StartAppliance) -> None:
    app, tls_port = _start(start_appliance)
    idle = _idle(app, tls_port)
    head = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: "
    with _flood(app.port, lambda n: head) as held:
        time.sleep(0.5)
        waiting = _still_open(held)
        https, plain, peak = _served_meanwhile(app, tls_port)
        print(f"\nidle {idle:.1f} MiB, peak {peak:.1f} MiB, {waiting} held")
        print(f"p50 https {https:.1f} ms, plain {plain:.1f} ms")
        assert 0 < waiting <= CAP, waiting
        assert peak - idle < 30, (idle, peak)
        assert https < 50 and plain < 50, (https, plain)
    assert app.proc.poll() is None
    assert "Traceback" not in app.log_text()


def test_a_request_sent_with_the_last_handshake_flight_is_answered(
    start_appliance: StartAppliance,
) -> None:
    """The client's Finished and its request in one segment: the request arrives while the
    connection passes from the handshake to the HTTP handler, and is not lost."""
    app, tls_port = _start(start_appliance)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = _unverified().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("::1", tls_port), timeout=5) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        sock.sendall(outgoing.read())
        answer = b""
        while True:  # until the service's close_notify (Connection: close)
            try:
                if not (plain := tls.read(65536)):
                    break
                answer += plain
            except ssl.SSLWantReadError:
                if not (data := sock.recv(65536)):
                    break
                incoming.write(data)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert "Traceback" not in app.log_text()


async def test_idle_handshakes_cannot_shut_out_the_clients_that_finish_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every handshake slot taken by connections that send nothing (from several hosts,
    each under its own cap): a client that completes its handshake is still served, the
    oldest idle one cut to make room. In process, with the global cap made small (8) so
    that one address (127.0.0.1) can fill it under its own cap of 32."""
    from aiohttp import web

    from appliance.config import Listen
    from appliance.web import server as listening
    from appliance.web.sockets import bind
    from appliance.web.tls import make_self_signed

    monkeypatch.setattr(listening, "HANDSHAKES", 8)
    cert, key = make_self_signed(["localhost"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    async def hello(_request: web.BaseRequest) -> web.Response:
        return web.Response(text="hello\n")

    server = listening.Server(hello, connections_per_client=256)
    runner = web.ServerRunner(server)
    await runner.setup()
    listener = listening.TlsListener(server, lambda: context)
    port = free_port()
    listen = Listen("127.0.0.1", port)
    site = listening.TlsSite(runner, listener, listen, bind(listen)[0])
    await site.start()
    idle = []
    try:
        for _ in range(8):
            idle.append(await asyncio.open_connection("127.0.0.1", port))
        for _ in range(50):  # accepted
            if len(listener.gates) == 8:
                break
            await asyncio.sleep(0.02)
        assert len(listener.gates) == 8
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=_unverified(), server_hostname="localhost"
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n")
        writer.close()
        assert len(listener.gates) <= 8 and server.refused >= 1
        assert await asyncio.wait_for(idle[0][0].read(), 5) == b""  # the oldest was cut
    finally:
        for _reader, w in idle:
            w.close()
        await runner.cleanup()
    for _ in range(100):  # the aborted handshakes' ends run on the next turns of the loop
        if not listener.gates and not server.per_client:
            break
        await asyncio.sleep(0.02)
    assert listener.gates == {} and not server.per_client  # every count given back
