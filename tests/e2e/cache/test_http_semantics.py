"""HEAD, Range, If-Modified-Since and ETag answered from the cache."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Appliance, StartAppliance
from tests.upstream import Upstream

DATA = os.urandom(100_000)


@pytest.fixture
def app(upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance) -> Appliance:
    (upstream_root / "debian/pool").mkdir(parents=True)
    (upstream_root / "debian/pool/f.deb").write_bytes(DATA)
    return start_appliance({"debian": [f"{upstream.url}/debian"]})


async def req(app: Appliance, method: str = "GET", **headers: str):  # type: ignore[no-untyped-def]
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{app.url}/debian/pool/f.deb", headers=headers) as r,
    ):
        return r.status, r.headers, await r.read()


@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
async def test_head_and_ranges(app: Appliance, upstream: Upstream, warm: bool) -> None:
    if warm:
        await req(app)
    st, h, body = await req(app, "HEAD")
    assert (st, body, h["Content-Length"]) == (200, b"", str(len(DATA)))
    st, h, body = await req(app, Range="bytes=10-19")
    assert (st, body, h["Content-Range"]) == (206, DATA[10:20], f"bytes 10-19/{len(DATA)}")
    st, h, body = await req(app, Range="bytes=-5")
    assert (st, body) == (206, DATA[-5:])
    st, h, body = await req(app, Range="bytes=99990-")
    assert (st, body) == (206, DATA[99990:])
    st, h, _ = await req(app, Range=f"bytes={len(DATA)}-")
    assert (st, h["Content-Range"]) == (416, f"bytes */{len(DATA)}")
    assert upstream.count("f.deb") == 1


async def test_conditional_requests(app: Appliance) -> None:
    for _ in range(50):  # until the download is committed (with its checksum ETag)
        st, h, _ = await req(app)
        if h["X-Cache"] == "HIT":
            break
        await asyncio.sleep(0.05)
    assert h["X-Cache"] == "HIT"
    st, _, body = await req(app, **{"If-None-Match": h["ETag"]})
    assert (st, body) == (304, b"")
    st, _, _ = await req(app, **{"If-None-Match": '"something-else"'})
    assert st == 200
    st, _, _ = await req(app, **{"If-Modified-Since": h["Last-Modified"]})
    assert st == 304
    st, _, _ = await req(app, **{"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert st == 200
    st, _, body = await req(app, Range="bytes=0-1", **{"If-Range": '"stale"'})
    assert (st, body) == (200, DATA)
