"""What a request is counted as comes from what the cache did (`deliver.CACHE_STATUS`),
never from the `X-Cache` header parsed back: a layer that rewrites the header changes
what the client reads, not the metrics nor the access log."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import UpstreamFailure
from appliance.cache.results import CacheStatus
from appliance.cache.route import Freshness, Route
from appliance.metrics import RESULTS, Metrics
from appliance.web.accesslog import AccessLog, Tally, logger_class
from appliance.web.deliver import deliver
from tests.inprocess.conftest import Origin


@pytest.mark.parametrize(
    ("status", "result", "upstream"),
    [
        (CacheStatus.HIT, "hit", False),
        (CacheStatus.MISS, "miss", True),
        (CacheStatus.PASS, "miss", True),  # relayed, not stored: from upstream all the same
        (CacheStatus.REVALIDATED, "revalidated", False),
        (CacheStatus.STALE, "stale", False),
    ],
)
def test_each_status_is_counted_once_as(status: CacheStatus, result: str, upstream: bool) -> None:
    assert (status.result, status.upstream) == (result, upstream)
    assert status.result in RESULTS


class Served:
    """The handler of the appliance's cache path (route, engine, deliver) behind a layer
    that sends every answer out as `X-Cache: HIT`, with the real access logger."""

    def __init__(self, engine: CacheEngine, origin: Origin, log: Path) -> None:
        self.engine, self.origin = engine, origin
        self.metrics = Metrics()
        self.access = AccessLog(str(log))
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        app.on_response_prepare.append(self.relabel)
        self.server = TestServer(app, host="127.0.0.1")

    async def start(self) -> None:
        self.access.start()
        tally = Tally(self.metrics, self.access)
        await self.server.start_server(access_log_class=logger_class(tally))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = Route(f"o{request.path}", (self.origin.url(request.path),), Freshness.IMMUTABLE)
        result = await self.engine.get(route)
        if isinstance(result, UpstreamFailure):
            return web.Response(status=result.status, text=f"upstream: {result.reason}\n")
        return await deliver(request, self.engine, result)

    @staticmethod
    async def relabel(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Cache"] = "HIT"

    async def get(self, path: str) -> tuple[int, str | None, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.server.make_url(path), headers={"User-Agent": "t"}) as r,
        ):
            return r.status, r.headers.get("X-Cache"), await r.read()

    async def counted(self, n: int) -> dict[str, int]:
        """The apt requests counted, once `n` of them are (the logger runs after the
        response is out, maybe after the client has read it)."""
        for _ in range(1000):
            if sum(self.metrics.totals.requests["apt"].values()) >= n:
                break
            await asyncio.sleep(0.01)
        return {k: v for k, v in self.metrics.totals.requests["apt"].items() if v}


@pytest.fixture
async def served(engine: CacheEngine, origin: Origin, tmp_path: Path) -> AsyncIterator[Served]:
    s = Served(engine, origin, tmp_path / "access.log")
    await s.start()
    yield s
    await s.server.close()
    await s.access.close()


async def test_a_rewritten_x_cache_header_does_not_change_what_is_counted(
    served: Served, origin: Origin, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    origin.files["/pool/a.deb"] = data
    assert await served.get("/pool/a.deb") == (200, "HIT", data)  # the header lies: a miss
    assert await served.counted(1) == {"miss": 1}
    assert (served.metrics.totals.bytes_upstream, served.metrics.totals.bytes_cache) == (
        len(data),
        0,
    )
    await served.engine.idle()
    assert await served.get("/pool/a.deb") == (200, "HIT", data)
    assert await served.counted(2) == {"miss": 1, "hit": 1}
    assert served.metrics.totals.bytes_cache == len(data)
    # never delivered (upstream's 404 passed on): no cache status, whatever the header
    status, header, _ = await served.get("/pool/gone.deb")
    assert (status, header) == (404, "HIT")
    assert await served.counted(3) == {"miss": 1, "hit": 1, "error": 1}
    assert served.metrics.totals.bytes_upstream == len(data)
    served.access.flush()
    log = (tmp_path / "access.log").read_text()
    assert re.findall(r'"t" (\S+) \d+', log) == ["MISS", "HIT", "-"]


async def test_a_busy_second_is_written_before_the_second_is_up(tmp_path: Path) -> None:
    """Thousands of requests a second would hold a second's lines (megabytes of small
    strings, memory the process keeps): FLUSH_LINES waiting are written at once."""
    from appliance.web.accesslog import FLUSH_LINES, Answered

    log = tmp_path / "access.log"
    access = AccessLog(str(log))
    access.start()
    try:
        line = Answered("GET", "/x", "HTTP/1.1", "127.0.0.1", "", 200, 1, None, 0.0, None)
        for _ in range(FLUSH_LINES - 1):
            access.write(line)
        await asyncio.sleep(0.2)
        assert not log.read_text()  # fewer: the once-a-second write
        access.write(line)
        for _ in range(20):
            await asyncio.sleep(0.02)
            if len(log.read_text().splitlines()) == FLUSH_LINES:
                break
        assert len(log.read_text().splitlines()) == FLUSH_LINES  # within 0.4 s, not 1
    finally:
        await access.close()
