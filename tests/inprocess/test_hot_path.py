"""The hot path (`web.hotpath`, `web.server._Handler`) answers plain hits of small files
from the connection's bytes; every other request is aiohttp's. Over real sockets to the
whole service (`runtime.serving`, one process: the hot path is per process): a hot answer
is the bytes aiohttp sends; pipelined requests, hot or not, are answered in the order
asked and each is counted once (those behind one aiohttp answers are aiohttp's until it
is idle: a pipeline of misses keeps aiohttp's pipelining); `Connection: close`, the idle
timer and a client that does not read its answers keep their rules."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance import config
from appliance.cache.engine import PREFETCH_LIMIT
from appliance.runtime.appliance import Appliance
from appliance.runtime.service import serving
from appliance.web.server import LOOK_AHEAD, _Handler
from tests.inprocess.conftest import Origin

A = "/debian/pool/main/a/a_1_all.deb"
B = "/debian/pool/main/b/b_1_all.deb"


@dataclass
class Service:
    app: Appliance
    port: int
    log: Path

    @property
    def answered(self) -> int:
        hot = self.app.server.hot
        assert hot is not None
        return hot.answered

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    def lines(self) -> list[str]:
        self.app.access_log.flush()
        return self.log.read_text().splitlines()


@pytest.fixture
async def service(tmp_path: Path, origin: Origin) -> AsyncIterator[Service]:
    origin.files[A] = b"a" * 2048
    origin.files[B] = b"b" * 3000
    log = tmp_path / "access.log"
    cfg = config.parse(
        {
            "cache": {"dir": str(tmp_path / "cache")},
            "apt": {"remaps": {"debian": [origin.url("/debian")]}},
            "logging": {"access_log": str(log)},
            "admin": {"token_file": str(tmp_path / "token")},
            "images": {"gnupg_home": str(tmp_path / "gnupg")},
            "discovery": {"mdns": False},
        },
        "test",
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    listeners = SimpleNamespace(plain=[sock], tls=[])
    async with serving(cfg, None, None, lambda: listeners) as app:
        yield Service(app, sock.getsockname()[1], log)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def read_answer(
    reader: asyncio.StreamReader, head_only: bool = False, timeout: float = 10
) -> Answer:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    status = int(lines[0].split(" ")[1])
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    answer = Answer(status, headers, b"")  # type: ignore[arg-type]
    length = int(answer.header("Content-Length") or 0)
    if not head_only and status != 304:
        answer.body = await asyncio.wait_for(reader.readexactly(length), timeout)
    return answer


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: t", *headers, "", ""]).encode()


async def warm(service: Service, *paths: str) -> None:
    reader, writer = await service.connect()
    for path in paths:
        writer.write(get(path))
        assert (await read_answer(reader)).status == 200
    await service.app.engine.idle()
    for path in paths:  # a hit memoises the small file: the next one is hot
        writer.write(get(path))
        assert (await read_answer(reader)).header("X-Cache") == "HIT"
    writer.close()


async def test_a_hot_answer_is_what_aiohttp_sends(service: Service) -> None:
    await warm(service, A)
    before = service.answered
    reader, writer = await service.connect()
    writer.write(get(A, "User-Agent: t"))
    hot = await read_answer(reader)
    assert service.answered == before + 1
    # a byte the hot path does not read (not ASCII): this connection is aiohttp's
    writer.write(get(A, "User-Agent: t").replace(b": t", b": t\xe9"))
    writer.write(get(A, "User-Agent: t"))  # and stays aiohttp's
    plain = [await read_answer(reader), await read_answer(reader)]
    assert service.answered == before + 1
    writer.close()

    def without_date(a: Answer) -> list[tuple[str, str]]:
        return [h for h in a.headers if h[0] != "Date"]

    assert (hot.status, hot.body) == (200, b"a" * 2048)
    assert without_date(hot) == without_date(plain[0]) == without_date(plain[1])
    assert [a.body for a in plain] == [hot.body] * 2
    # that User-Agent's byte is logged escaped (it stopped the log's writer once)
    assert any('"t\\udce9" HIT' in line for line in service.lines())


async def test_pipelined_requests_are_answered_in_order_and_each_counted_once(
    service: Service, origin: Origin
) -> None:
    await warm(service, A)
    logged, before = len(service.lines()), service.answered
    reader, writer = await service.connect()
    asked = [
        (get(A, "User-Agent: p"), False),  # hot
        (get(B, "User-Agent: p"), False),  # a miss: aiohttp's, and so is the rest,
        (get(A, "User-Agent: p", "Range: bytes=0-9"), False),  # pipelined behind it
        (get(A, "User-Agent: p", method="HEAD"), True),
        (get("/healthz", "User-Agent: p"), False),  # the appliance's own page
        (get("/nowhere/x.deb", "User-Agent: p"), False),  # refused (no such remap)
        (get(A, "User-Agent: p"), False),
    ]
    writer.write(b"".join(raw for raw, _ in asked))  # one write: all pipelined
    answers = [await read_answer(reader, head_only) for _, head_only in asked]
    assert service.answered == before + 1
    writer.write(get(A, "User-Agent: p"))  # aiohttp idle again: the hot path answers
    answers.append(await read_answer(reader))
    writer.close()
    assert [a.status for a in answers] == [200, 200, 206, 200, 200, 403, 200, 200]
    assert [a.header("X-Cache") for a in answers] == ["HIT", "MISS", "HIT", "HIT", None, None,
                                                      "HIT", "HIT"]  # fmt: skip
    assert [a.body for a in answers] == [b"a" * 2048, b"b" * 3000, b"a" * 10, b"", answers[4].body,
                                         answers[5].body, b"a" * 2048, b"a" * 2048]  # fmt: skip
    assert service.answered == before + 2
    assert origin.count(B) == 1
    for _ in range(100):
        if len(lines := service.lines()) >= logged + 8:
            break
        await asyncio.sleep(0.05)
    mine = [line for line in lines[logged:] if '"p"' in line]
    assert [re.search(r'"(\w+) (\S+) HTTP/1.1" (\d+)', line).groups() for line in mine] == [  # type: ignore[union-attr]
        ("GET", A, "200"), ("GET", B, "200"), ("GET", A, "206"), ("HEAD", A, "200"),
        ("GET", "/healthz", "200"), ("GET", "/nowhere/x.deb", "403"), ("GET", A, "200"),
        ("GET", A, "200"),
    ]  # fmt: skip
    requests = service.app.metrics.totals.requests["apt"]
    assert (requests["hit"], requests["miss"], requests["refused"]) == (2 + 4, 2, 1)


async def test_connection_close_is_the_last_answer(service: Service) -> None:
    await warm(service, A)
    before = service.answered
    reader, writer = await service.connect()
    writer.write(get(A, "Connection: close") + get(A))  # the second is never answered
    answer = await read_answer(reader)
    assert (answer.status, answer.header("Connection")) == (200, "close")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert service.answered == before + 1
    writer.close()


async def test_the_idle_timer_counts_from_the_last_hot_answer(service: Service) -> None:
    await warm(service, A)
    service.app.server._kwargs["keepalive_timeout"] = 0.6  # for connections made from now
    before = service.answered
    reader, writer = await service.connect()
    for _ in range(3):  # 0.4 s apart: past the first 0.6 s only if each answer restarts it
        writer.write(get(A))
        assert (await read_answer(reader)).status == 200
        await asyncio.sleep(0.4)
    assert service.answered == before + 3
    assert await asyncio.wait_for(reader.read(), 5) == b""  # idle: closed
    writer.close()


@pytest.mark.parametrize("hot", [True, False], ids=["hot", "aiohttp"])
async def test_a_client_not_reading_its_answers_is_read_no_further(
    service: Service, hot: bool
) -> None:
    """10,000 small answers are 20 MB: a client sending that many requests and reading
    nothing makes the service buffer no more than a few answers (it stops reading the
    client's requests), whether the hot path or aiohttp answers them."""
    await warm(service, A)
    before, n = service.answered, 10_000
    if not hot:
        service.app.server.hot = None  # connections made from now are aiohttp's
    reader, writer = await service.connect()
    writer.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024
    )
    writer.write(get(A) * n)
    await asyncio.sleep(1.0)
    buffered = sum(
        h.transport.get_write_buffer_size() for h in service.app.server.connections if h.transport
    )
    assert buffered < 4 * 1024 * 1024  # (a read of requests: their answers; 20 MB before)
    first = await read_answer(reader)  # then it reads: every answer comes, in order
    assert (first.status, first.body) == (200, b"a" * 2048)
    size = len(first.body) + sum(len(k) + len(v) + 4 for k, v in first.headers) + 19
    rest = await asyncio.wait_for(reader.readexactly(size * (n - 1)), 30)
    assert rest.count(b"HTTP/1.1 200 OK\r\n") == n - 1 and rest.endswith(b"a" * 2048)
    writer.close()
    if hot:
        assert service.answered == before + n


@pytest.mark.parametrize("hot", [True, False], ids=["hot", "aiohttp"])
async def test_more_heads_than_aiohttps_queue_behind_a_miss_are_all_answered(
    service: Service, hot: bool
) -> None:
    """aiohttp queues 32 parsed requests and re-reads the rest (`data_received(b"")`) as
    its queue drains: 60 heads behind a miss are all answered, in order."""
    await warm(service, A)
    if not hot:
        service.app.server.hot = None
    reader, writer = await service.connect()
    writer.write(get(B) + get(A) * 60)
    answers = [await read_answer(reader) for _ in range(61)]
    writer.close()
    assert [a.body for a in answers] == [b"b" * 3000] + [b"a" * 2048] * 60


@pytest.mark.parametrize(
    "raw",
    [
        f"GET {A} HTTP/1.1\r\n\r\n".encode(),  # no Host
        get(A, "User-Agent: a", "User-Agent: b"),  # a singleton header twice
        get("http://[127.0.0.1]:8080/debian/pool/main/a/a_1_all.deb"),  # urlsplit raises
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),  # TLS hello
        b"GET / HTTP/1.1\nHost: t\n\n",  # bare LF
    ],
    ids=["no-host", "twice", "bad-url", "tls-hello", "bare-lf"],
)
@pytest.mark.parametrize("hot", [True, False], ids=["hot", "aiohttp"])
async def test_bad_heads_get_aiohttps_400_at_once(
    service: Service, hot: bool, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """What aiohttp refuses is refused with or without the hot path: its 400, at once (not
    after the idle timer), and nothing logged as an error."""
    await warm(service, A)
    before = service.answered
    if not hot:
        service.app.server.hot = None
    reader, writer = await service.connect()
    writer.write(raw)
    got = await asyncio.wait_for(reader.read(200), 2)
    writer.close()
    assert got.startswith(b"HTTP/1.") and got.split(b" ", 2)[1] == b"400"
    if hot:
        assert service.answered == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("hot", [True, False], ids=["hot", "aiohttp"])
async def test_a_client_reading_later_than_the_idle_timer_gets_every_answer(
    service: Service, hot: bool
) -> None:
    """A client that pipelines 2000 requests and reads nothing for longer than the idle
    timer is not idle: it gets every answer once it reads (the stall limit is deliver's)."""
    await warm(service, A)
    service.app.server._kwargs["keepalive_timeout"] = 0.5
    if not hot:
        service.app.server.hot = None
    n = 2000
    reader, writer = await service.connect()
    writer.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024
    )
    writer.write(get(A) * n)
    await asyncio.sleep(1.5)
    first = await read_answer(reader)
    size = len(first.body) + sum(len(k) + len(v) + 4 for k, v in first.headers) + 19
    with contextlib.suppress(asyncio.IncompleteReadError):  # (its partial: counted below)
        rest = await asyncio.wait_for(reader.readexactly(size * (n - 1)), 30)
    writer.close()
    assert rest.count(b"HTTP/1.1 200 OK\r\n") == n - 1


async def test_a_client_gone_mid_pipeline_is_answered_no_further(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """300 pipelined hot requests from a client that closes at once: the answers stop at
    the first failed send (none counted as served after it, no warning per answer)."""
    await warm(service, A)
    before = service.answered
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.sendall(get(A) * 300)
    sock.close()
    await asyncio.sleep(0.5)
    assert service.answered - before < 10
    assert not [r for r in caplog.records if "socket.send() raised" in r.getMessage()]


async def _seen(origin: Origin, count: int, timeout: float = 5.0) -> list[str]:
    """The paths the origin was asked, once it was asked `count` (or the time is up)."""
    for _ in range(int(timeout / 0.02)):
        if len(origin.seen) >= count:
            break
        await asyncio.sleep(0.02)
    return [path for path, _ in origin.seen]


async def test_files_pipelined_behind_a_miss_are_fetched_while_it_is_answered(
    service: Service, origin: Origin
) -> None:
    """apt asks up to ten files ahead: their downloads start while the first is still
    coming (the upstream round-trips overlap), and each is still a MISS for its request,
    counted once; the same file asked again on the connection is a hit."""
    c = "/debian/pool/main/c/c_1_all.deb"
    origin.files[c] = b"c" * 5000
    origin.hold_body = asyncio.Event()  # every body stops half way until set
    reader, writer = await service.connect()
    writer.write(get(A) + get(B) + get(c) + get(B))
    assert sorted(await _seen(origin, 3)) == sorted([A, B, c])  # A's body not done yet
    origin.hold_body.set()
    answers = [await read_answer(reader) for _ in range(4)]
    writer.close()
    assert [a.body for a in answers] == [b"a" * 2048, b"b" * 3000, b"c" * 5000, b"b" * 3000]
    assert [a.header("X-Cache") for a in answers] == ["MISS", "MISS", "MISS", "HIT"]
    assert [origin.count(p) for p in (A, B, c)] == [1, 1, 1]
    requests = service.app.metrics.totals.requests["apt"]
    assert (requests["miss"], requests["hit"]) == (3, 1)


async def test_the_look_ahead_is_bounded(service: Service, origin: Origin) -> None:
    """At most LOOK_AHEAD downloads start ahead of the request being answered: a client
    pipelining many misses does not open as many upstream requests at once."""
    paths = [f"/debian/pool/main/p/p{i}_1_all.deb" for i in range(9)]
    for i, path in enumerate(paths):
        origin.files[path] = bytes([65 + i]) * 1000
    origin.hold_body = asyncio.Event()
    reader, writer = await service.connect()
    writer.write(b"".join(get(p) for p in paths))
    await _seen(origin, LOOK_AHEAD + 1)
    await asyncio.sleep(0.3)  # time for any more to be asked
    assert sorted(await _seen(origin, 0)) == paths[: LOOK_AHEAD + 1]
    origin.hold_body.set()
    answers = [await read_answer(reader) for _ in paths]
    writer.close()
    assert [a.body for a in answers] == [bytes([65 + i]) * 1000 for i in range(9)]
    assert [origin.count(p) for p in paths] == [1] * 9


async def test_the_look_ahead_asks_no_host_the_router_refuses(
    service: Service, origin: Origin
) -> None:
    """A forward-proxy request for a host nobody configured, pipelined behind a miss, is
    refused as ever, and nothing connects to that host meanwhile."""
    stranger = socket.socket()
    stranger.bind(("127.0.0.1", 0))
    stranger.listen(8)
    stranger.setblocking(False)
    port = stranger.getsockname()[1]
    origin.hold_body = asyncio.Event()
    reader, writer = await service.connect()
    try:
        writer.write(get(A) + get(f"http://127.0.0.1:{port}/debian/pool/main/x/x_1_all.deb"))
        await _seen(origin, 1)
        await asyncio.sleep(0.3)
        origin.hold_body.set()
        answers = [await read_answer(reader) for _ in range(2)]
        with pytest.raises(BlockingIOError):
            stranger.accept()
    finally:
        writer.close()
        stranger.close()
    assert [a.status for a in answers] == [200, 403]


async def test_nothing_behind_an_index_is_fetched_before_the_index_is_answered(
    service: Service, origin: Origin
) -> None:
    """An index teaches what the files after it must be (a Packages file's digests): a
    file queued behind one is fetched only once the index is answered, as without the
    look-ahead; so is one behind a page of the appliance's own."""
    packages = "/debian/dists/stable/main/binary-amd64/Packages"
    c = "/debian/pool/main/c/c_1_all.deb"
    origin.files[packages] = b"Package: a\n\n"
    origin.files[c] = b"c" * 100
    origin.hold_body = asyncio.Event()
    reader, writer = await service.connect()
    writer.write(get(A) + get(packages) + get(B) + get("/healthz") + get(c))
    await _seen(origin, 1)
    await asyncio.sleep(0.3)  # time for anything else to be asked
    assert await _seen(origin, 0) == [A]  # neither the index nor B behind it
    origin.hold_body.set()
    answers = [await read_answer(reader) for _ in range(5)]
    writer.close()
    assert [a.status for a in answers] == [200] * 5
    assert [origin.count(p) for p in (A, packages, B, c)] == [1, 1, 1, 1]


async def test_files_behind_an_index_are_checked_against_it(
    service: Service, origin: Origin
) -> None:
    """Files a client pipelined behind an index that lists them are checked against it:
    the index is parsed in a thread after its commit, and a file's expectation waits for
    that parse (`IndexCatalog.expect`), so a mirror's wrong bodies are neither served as
    whole files nor stored, fetched ahead or not."""
    good = b"good" * 100
    paths = [f"/debian/pool/main/c/c{i}_1_all.deb" for i in range(4)]
    packages = "/debian/dists/stable/main/binary-amd64/Packages"
    origin.files[packages] = "".join(
        f"Package: c{i}\nFilename: pool/main/c/c{i}_1_all.deb\nSize: {len(good)}\n"
        f"SHA256: {hashlib.sha256(good).hexdigest()}\n\n"
        for i in range(4)
    ).encode()
    for path in paths:
        origin.files[path] = b"evil" * 100  # the right size, the wrong bytes
    reader, writer = await service.connect()
    writer.write(get(A) + get(packages) + b"".join(get(p) for p in paths))
    served = []
    for _ in range(2 + len(paths)):
        try:
            served.append((await read_answer(reader)).status)
        except (asyncio.IncompleteReadError, ConnectionError):
            break  # a refused file ends its connection (its length was announced)
    writer.close()
    await service.app.engine.idle()
    assert served[:2] == [200, 200] and 200 not in served[2:]
    assert origin.server is not None
    for path in paths:
        assert await service.app.engine.lookup(f"127.0.0.1:{origin.server.port}{path}") is None


def _handlers(service: Service) -> list[_Handler]:
    return [h for h in service.app.server.connections if isinstance(h, _Handler)]


async def test_what_is_fetched_ahead_is_forgotten_once_answered(
    service: Service, origin: Origin
) -> None:
    """A connection keeps nothing of the files it fetched ahead once their requests are
    answered, failures too (a 404): one keep-alive connection cannot grow it."""
    reader, writer = await service.connect()
    for r in range(20):
        origin.files[f"/debian/pool/main/m/m{r}_1_all.deb"] = b"m" * 100
        paths = [f"/debian/pool/main/m/m{r}_1_all.deb"]
        paths += [f"/debian/pool/main/n/nothere{r}_{i}_all.deb" for i in range(4)]
        writer.write(b"".join(get(p) for p in paths))
        answers = [await read_answer(reader) for _ in paths]
        assert [a.status for a in answers] == [200, 404, 404, 404, 404]
    (handler,) = _handlers(service)
    writer.close()
    assert not handler.ahead


async def test_nothing_behind_connection_close_is_fetched(service: Service, origin: Origin) -> None:
    """aiohttp answers nothing after a `Connection: close` (a 400): nothing there is
    fetched ahead, nor the request that closes."""
    origin.hold_body = asyncio.Event()
    paths = [f"/debian/pool/main/z/z{i}_1_all.deb" for i in range(3)]
    for path in paths:
        origin.files[path] = b"z" * 1000
    reader, writer = await service.connect()
    writer.write(get(A) + get(B, "Connection: close") + b"".join(get(p) for p in paths))
    await _seen(origin, 1)
    await asyncio.sleep(0.3)
    assert await _seen(origin, 0) == [A]
    origin.hold_body.set()
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            await read_answer(reader)
    writer.close()
    await service.app.engine.idle()
    assert not any(origin.count(p) for p in paths)


async def test_clients_that_hang_up_leave_a_bounded_look_ahead(
    service: Service, origin: Origin
) -> None:
    """Clients that pipeline misses and hang up at once leave at most PREFETCH_LIMIT
    downloads started ahead, every connection together (their first requests are
    misses as any client's)."""
    origin.hold_headers = asyncio.Event()
    queued = set()
    for r in range(10):
        paths = [f"/debian/pool/main/q/q{r}_{i}_all.deb" for i in range(5)]
        queued.update(paths[1:])
        for path in paths:
            origin.files[path] = b"q" * 1000
        _, writer = await service.connect()
        writer.write(b"".join(get(p) for p in paths))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
    await asyncio.sleep(0.3)
    ahead = [path for path in await _seen(origin, 0) if path in queued]
    origin.hold_headers.set()
    await service.app.engine.idle()
    assert 0 < len(ahead) <= PREFETCH_LIMIT
