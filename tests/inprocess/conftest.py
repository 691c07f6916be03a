"""The in-process layer: the engine, the store and the fetcher in the test's own event
loop, against aiohttp's test server on a real 127.0.0.1 socket, with an injectable
clock (TTLs pass without sleeping). The end-to-end tests drive the real process."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.cache.egress import EgressPolicy
from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher
from appliance.cache.results import Hit, Miss, Result
from appliance.cache.store import FilesystemStore


class Clock:
    """Wall-clock seconds the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Origin:
    """A small upstream: files with ETags, answers it can hold back or replace."""

    files: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)  # path -> forced status
    hold_headers: asyncio.Event | None = None  # set(): answer
    hold_body: asyncio.Event | None = None  # set(): send the second half
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path, If-None-Match)
    server: TestServer | None = None

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.seen if p == path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.seen.append((path, request.headers.get("If-None-Match")))
        if self.hold_headers is not None:
            await self.hold_headers.wait()
        if path in self.status:
            return web.Response(status=self.status[path], text="forced\n")
        data = self.files.get(path)
        if data is None:
            raise web.HTTPNotFound()
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        resp = web.StreamResponse(headers={"ETag": etag, "Content-Length": str(len(data))})
        await resp.prepare(request)
        half = len(data) // 2
        await resp.write(data[:half])
        if self.hold_body is not None:
            await self.hold_body.wait()
        await resp.write(data[half:])
        await resp.write_eof()
        return resp


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    o = Origin()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", o.handle)
    o.server = TestServer(app, host="127.0.0.1")
    await o.server.start_server()
    yield o
    if o.hold_headers is not None:
        o.hold_headers.set()
    if o.hold_body is not None:
        o.hold_body.set()
    await o.server.close()


@pytest.fixture
async def engine(tmp_path: Path, clock: Clock) -> AsyncIterator[CacheEngine]:
    fetcher = Fetcher(policy=EgressPolicy(lambda _hostport: True))
    eng = CacheEngine(
        FilesystemStore(tmp_path / "cache"), fetcher, max_size=1 << 30, ttl=300, clock=clock
    )
    await eng.start()
    yield eng
    await eng.close()
    await fetcher.close()


async def settle(result: Result, engine: CacheEngine | None = None) -> Result:
    """A MISS read to its end (the download committed; with `engine`, its bookkeeping
    done too), anything else as it is."""
    if isinstance(result, Miss):
        await result.download.finished()
    if engine is not None:
        await engine.idle()
    return result


def status(result: Result) -> str:
    return result.status if isinstance(result, Hit | Miss) else type(result).__name__
