"""The engine's named pieces, in process: the single-flight phases, offline answers,
and the lease that pins what is being served (the pure rules they rest on are tables
in tests/unit/test_cache_rules.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from appliance.cache.download import Phase
from appliance.cache.egress import EgressPolicy
from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher, UpstreamFailure
from appliance.cache.results import Hit, Miss
from appliance.cache.route import Freshness, Route
from appliance.cache.store import FilesystemStore
from tests.inprocess.conftest import Clock, Origin, settle, status

V = Freshness.VOLATILE


async def test_a_volatile_copy_is_asked_again_only_after_its_ttl(
    engine: CacheEngine, origin: Origin, clock: Clock
) -> None:
    origin.files["/dists/x/InRelease"] = b"Origin: x\n" * 10
    key, urls = "o/dists/x/InRelease", (origin.url("/dists/x/InRelease"),)
    assert status(await settle(await engine.get(Route(key, urls, V)))) == "MISS"
    clock.advance(299)
    assert status(await engine.get(Route(key, urls, V))) == "HIT"
    assert origin.count("/dists/x/InRelease") == 1
    clock.advance(2)  # no sleep: the TTL is over
    assert status(await engine.get(Route(key, urls, V))) == "REVALIDATED"
    assert origin.seen[-1][1] is not None  # a conditional request, answered 304
    assert status(await engine.get(Route(key, urls, V))) == "HIT"
    assert origin.count("/dists/x/InRelease") == 2


async def test_volatile_index_revalidated_after_ttl(
    engine: CacheEngine, origin: Origin, clock: Clock
) -> None:
    """An index past its TTL: asked conditionally, kept on 304, replaced by new bytes on
    200 and a HIT again after that (was an end-to-end test sleeping through the TTL)."""
    path = "/dists/test/InRelease"
    origin.files[path] = b"version 1\n"
    key, urls = "o/dists/test/InRelease", (origin.url(path),)

    async def body() -> tuple[str, bytes]:
        result = await settle(await engine.get(Route(key, urls, V)), engine)
        entry = result.entry if isinstance(result, Hit) else result.download.entry  # type: ignore[union-attr]
        return status(result), engine.store.read_bytes(entry)

    assert await body() == ("MISS", b"version 1\n")
    assert await body() == ("HIT", b"version 1\n")
    clock.advance(301)
    assert await body() == ("REVALIDATED", b"version 1\n")
    assert origin.seen[-1][1] is not None  # conditional: If-None-Match sent, 304 back
    origin.files[path] = b"version 2\n"
    clock.advance(301)
    assert (await body())[1] == b"version 2\n"
    assert await body() == ("HIT", b"version 2\n")
    assert origin.count(path) == 3


async def test_one_flight_through_its_phases(engine: CacheEngine, origin: Origin) -> None:
    data = os.urandom(2_000_000)
    origin.files["/pool/a.deb"] = data
    origin.hold_headers, origin.hold_body = asyncio.Event(), asyncio.Event()
    key, urls = "o/pool/a.deb", (origin.url("/pool/a.deb"),)
    waiting = [
        asyncio.create_task(engine.get(Route(key, urls, Freshness.IMMUTABLE))) for _ in range(5)
    ]
    for _ in range(10_000):  # until the one request is out
        if engine.flights.phase(key) is not None:
            break
        await asyncio.sleep(0.001)
    assert engine.flights.phase(key) is Phase.REVALIDATING
    origin.hold_headers.set()
    results = await asyncio.gather(*waiting)
    assert {status(r) for r in results} == {"MISS"}
    assert len({id(r.download) for r in results if isinstance(r, Miss)}) == 1  # one download
    assert engine.flights.phase(key) is Phase.DOWNLOADING
    late = await engine.get(Route(key, urls, Freshness.IMMUTABLE))  # joins the same download
    assert isinstance(late, Miss) and late.download is results[0].download  # type: ignore[union-attr]
    origin.hold_body.set()
    await settle(late)
    assert engine.flights.phase(key) is None
    assert origin.count("/pool/a.deb") == 1
    hit = await engine.get(Route(key, urls, Freshness.IMMUTABLE))
    assert isinstance(hit, Hit) and engine.store.read_bytes(hit.entry) == data


async def test_offline_the_copy_beats_a_5xx_but_not_a_404(
    engine: CacheEngine, origin: Origin, clock: Clock
) -> None:
    origin.files["/dists/y/InRelease"] = b"y" * 100
    key, urls = "o/dists/y/InRelease", (origin.url("/dists/y/InRelease"),)
    await settle(await engine.get(Route(key, urls, V)))
    clock.advance(3600)
    origin.status["/dists/y/InRelease"] = 503
    stale = await engine.get(Route(key, urls, V))
    assert isinstance(stale, Hit) and stale.status == "STALE" and stale.warning
    origin.status["/dists/y/InRelease"] = 404
    gone = await engine.get(Route(key, urls, V))
    assert isinstance(gone, UpstreamFailure) and gone.status == 404


async def test_a_leased_file_is_not_evicted_under_its_reader(
    tmp_path: Path, origin: Origin, clock: Clock
) -> None:
    for name in ("a", "b", "c"):
        origin.files[f"/pool/{name}.deb"] = os.urandom(100_000)
    fetcher = Fetcher(policy=EgressPolicy(lambda _hostport: True))
    engine = CacheEngine(
        FilesystemStore(tmp_path / "small"), fetcher, max_size=150_000, ttl=300, clock=clock
    )

    async def get(name: str) -> Miss:
        result = await settle(
            await engine.get(Route(f"o/pool/{name}.deb", (origin.url(f"/pool/{name}.deb"),), V)),
            engine,
        )
        assert isinstance(result, Miss) and result.download.entry is not None
        return result

    try:
        first = await get("a")
        async with engine.lease(first.download.entry) as file:  # type: ignore[arg-type]
            assert file is not None
            await get("b")  # over the cap: the oldest goes, unless it is being served
            assert engine.store.lookup("o/pool/a.deb") is not None
            assert engine.store.lookup("o/pool/b.deb") is None  # the one that could go
            assert file.read() == origin.files["/pool/a.deb"]
        await get("c")  # released: now a is the oldest and goes
        assert engine.store.lookup("o/pool/a.deb") is None
        assert engine.store.lookup("o/pool/c.deb") is not None
    finally:
        await engine.close()
        await fetcher.close()


async def test_engines_on_one_directory_revalidate_an_index_once(
    tmp_path: Path, engine: CacheEngine, origin: Origin, clock: Clock
) -> None:
    """Two engines on one cache directory stand for two worker processes (each its own
    lock descriptor): a stale index is asked upstream once for both, whether upstream
    confirms it (304) or has new bytes, and the one that waited serves what the other
    brought. No peers here: the waiting one reads the disk once the lock is let go."""
    path = "/dists/x/InRelease"
    origin.files[path] = b"Origin: x\n" * 10
    key, urls = "o/dists/x/InRelease", (origin.url(path),)
    fetcher = Fetcher(policy=EgressPolicy(lambda _hostport: True))
    sibling = CacheEngine(
        FilesystemStore(tmp_path / "cache"), fetcher, max_size=1 << 30, ttl=300, clock=clock
    )
    engines = [engine, sibling]

    async def together() -> list[bytes]:
        """Four clients of each engine at once, the upstream answering only once all
        of them asked; each client's bytes."""
        origin.hold_headers = asyncio.Event()
        asked = len(origin.seen)
        clients = [asyncio.create_task(engines[i % 2].get(Route(key, urls, V))) for i in range(8)]
        for _ in range(5_000):  # until the one request is out
            if len(origin.seen) > asked:
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.3)  # FLEET_POLL and more: a second request would be out
        origin.hold_headers.set()
        bodies = []
        for result in await asyncio.gather(*clients):
            await settle(result)
            assert isinstance(result, Hit | Miss), result
            got = result.entry if isinstance(result, Hit) else result.download.entry
            assert got is not None
            bodies.append(engine.store.read_bytes(got))
        await engine.idle()
        await sibling.idle()
        return bodies

    try:
        await settle(await engine.get(Route(key, urls, V)), engine)  # both memoise the copy
        assert status(await sibling.get(Route(key, urls, V))) == "HIT"
        clock.advance(301)
        assert await together() == [origin.files[path]] * 8  # upstream: 304
        assert origin.count(path) == 2 and origin.seen[-1][1] is not None
        clock.advance(301)
        assert status(await engine.get(Route(key, urls, V))) == "REVALIDATED"
        assert status(await sibling.get(Route(key, urls, V))) == "HIT"  # not what it had in memory
        assert origin.count(path) == 3
        clock.advance(301)
        origin.files[path] = b"Origin: x, new\n" * 10
        assert await together() == [origin.files[path]] * 8  # upstream: new bytes
        assert origin.count(path) == 4
    finally:
        await sibling.close()
        await fetcher.close()
