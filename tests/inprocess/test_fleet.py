"""Two engines on one Swift, in process: a kept (mirrored) file another unit fetched is
copied in, counts against this disk's cap and may be evicted here, since the store keeps
it; on a plain disk a kept file is never evicted. And who a waiting process may stream
another's download from."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from appliance.cache.egress import EgressPolicy
from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher
from appliance.cache.results import Hit
from appliance.cache.route import Expect, Freshness, Route
from appliance.cache.store import FilesystemStore
from appliance.cache.stripes import stripe_of
from appliance.web.peers import PeerStreams
from appliance.web.workers import Workers
from tests.conftest import object_store
from tests.inprocess.conftest import Clock, Origin, settle, status


def _image(key: str, url: str, expect: Expect) -> Route:
    return Route(key, (url,), Freshness.IMMUTABLE, expect)


async def test_kept_files_copied_from_the_store_may_leave_this_disk(
    swift: Any, origin: Origin, tmp_path: Path, clock: Clock
) -> None:
    origin.files.update({f"/img/{n}.img": os.urandom(100_000) for n in "abc"})
    prefix = f"{uuid.uuid4().hex}/"
    fetcher = Fetcher(policy=EgressPolicy(lambda _hostport: True))
    a = CacheEngine(
        object_store(swift, tmp_path / "a", prefix=prefix),
        fetcher,
        max_size=1 << 30,
        ttl=300,
        clock=clock,
    )
    b = CacheEngine(
        object_store(swift, tmp_path / "b", prefix=prefix),
        fetcher,
        max_size=150_000,
        ttl=300,
        clock=clock,
    )
    plain = CacheEngine(
        FilesystemStore(tmp_path / "p"), fetcher, max_size=150_000, ttl=300, clock=clock
    )
    try:
        for eng in (a, b, plain):
            await eng.start()
        keys = {n: f"origin/img/{n}.img" for n in "abc"}
        for n, key in keys.items():  # a mirrors them: kept, shared
            entry = await a.ensure(
                _image(key, origin.url(f"/img/{n}.img"), Expect(size=100_000)), keep=True
            )
            assert entry.meta.keep and entry.meta.shared
        await a.idle()
        fetched = sum(origin.count(f"/img/{n}.img") for n in "abc")
        for n, key in keys.items():  # b takes them from the store, one after the other
            entry = await b.ensure(
                _image(key, origin.url(f"/img/{n}.img"), Expect(size=100_000)), keep=True
            )
            assert entry.meta.keep
        await b.idle()
        assert sum(origin.count(f"/img/{n}.img") for n in "abc") == fetched  # none upstream
        on_b = [k for k in keys.values() if b.store.held(k) is not None]
        assert on_b == [keys["c"]]  # 150 kB cap: the older copies left b's disk
        assert b.figures().bytes <= 150_000 and b.figures().evictions == 2
        again = await b.ensure(
            _image(keys["a"], origin.url("/img/a.img"), Expect(size=100_000)), keep=True
        )
        assert b.store.read_bytes(again) == origin.files["/img/a.img"]  # back from the store
        for n, key in keys.items():  # on a plain disk kept files stay, whatever the cap
            await plain.ensure(
                _image(key, origin.url(f"/img/{n}.img"), Expect(size=100_000)), keep=True
            )
        await plain.idle()
        assert all(plain.store.held(k) is not None for k in keys.values())
    finally:
        for eng in (a, b, plain):
            await eng.close()
        await fetcher.close()


def test_a_fetch_lock_names_its_holder(tmp_path: Path) -> None:
    """A worker that finds a file's lock held learns which worker holds it (to stream
    that worker's download); once it is let go, the next one gets it."""
    first, second = FilesystemStore(tmp_path), FilesystemStore(tmp_path)
    first.holder, second.holder = "worker-0", "worker-1"
    key = "deb.example/pool/a.deb"
    assert first.claim(key) is None
    assert second.claim(key) == "worker-0"
    first.release(key)
    assert second.claim(key) is None
    assert first.claim(key) == "worker-1"
    second.release(key)


async def test_engines_on_one_directory_fetch_a_file_once(
    tmp_path: Path, engine: CacheEngine, origin: Origin, clock: Clock
) -> None:
    """The immutable side of the one wait loop: two engines on one cache directory (two
    processes, no peers to stream from) asked for a file at once fetch it once; the one
    without the lock serves the file the other leaves."""
    origin.files["/pool/one.deb"] = os.urandom(300_000)
    route = Route("o/pool/one.deb", (origin.url("/pool/one.deb"),), Freshness.IMMUTABLE)
    fetcher = Fetcher(policy=EgressPolicy(lambda _hostport: True))
    sibling = CacheEngine(
        FilesystemStore(tmp_path / "cache"), fetcher, max_size=1 << 30, ttl=300, clock=clock
    )
    origin.hold_body = asyncio.Event()
    try:
        clients = [asyncio.create_task(e.get(route)) for e in (engine, sibling) * 3]
        for _ in range(5_000):  # until the one download is under way
            if origin.count("/pool/one.deb"):
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.3)  # FLEET_POLL and more: a second request would be out
        origin.hold_body.set()
        for result in await asyncio.gather(*clients):
            await settle(result)
            got = result.entry if isinstance(result, Hit) else result.download.entry  # type: ignore[union-attr]
            assert got is not None and engine.store.read_bytes(got) == origin.files["/pool/one.deb"]
        assert origin.count("/pool/one.deb") == 1
    finally:
        await sibling.close()
        await fetcher.close()


def _same_stripe(prefix: str) -> tuple[str, str]:
    """Two keys whose fetch locks share one lock file."""
    first = f"{prefix}/0.deb"
    for i in range(1, 1_000_000):
        if stripe_of(second := f"{prefix}/{i}.deb") == stripe_of(first):
            return first, second
    raise AssertionError("no two keys share a stripe")


def test_a_process_does_not_wait_on_a_lock_stripe_it_holds(tmp_path: Path) -> None:
    """Keys share lock files by hash: a second key of a stripe this process holds is
    its own at once (it once waited on itself until the wait limit), the stripe stays
    locked for other processes until its last key here is let go, and the same key
    twice is still held."""
    here, other = FilesystemStore(tmp_path), FilesystemStore(tmp_path)
    here.holder, other.holder = "worker-0", "worker-1"
    a, b = _same_stripe("deb.example/pool")
    assert here.claim(a) is None
    assert here.claim(b) is None  # the same stripe, another key: no wait
    assert here.claim(a) == "worker-0"  # this very key: held (by this process)
    assert other.claim(a) == "worker-0" and other.claim(b) == "worker-0"
    here.release(a)
    assert other.claim(b) == "worker-0"  # b still holds the stripe
    assert here.claim(a) is None  # counted again, no new lock
    here.release(a)
    here.release(b)  # the last key: the lock file is let go
    assert other.claim(b) is None
    assert here.claim(a) == "worker-1"
    other.release(b)


async def test_two_downloads_in_one_lock_stripe_run_at_once(
    engine: CacheEngine, origin: Origin, tmp_path: Path
) -> None:
    """Two files whose locks share a stripe, asked of one process at once: both are
    fetched now, neither waits for the other's download to end."""
    a, b = _same_stripe("o/pool")
    for key in (a, b):
        origin.files["/" + key.removeprefix("o/")] = os.urandom(200_000)
    origin.hold_body = asyncio.Event()  # both downloads stay in progress, holding the lock
    routes = [
        Route(k, (origin.url("/" + k.removeprefix("o/")),), Freshness.IMMUTABLE) for k in (a, b)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(engine.get(r) for r in routes)), 5)
    assert [status(r) for r in results] == ["MISS", "MISS"]
    other = FilesystemStore(tmp_path / "cache")  # another process: the stripe is locked
    assert other.claim(a) is not None
    origin.hold_body.set()
    for result in results:
        await settle(result, engine)
    assert other.claim(b) is None  # both downloads ended: let go
    other.release(b)


async def test_only_listed_peers_and_sibling_workers_are_streamed_from(tmp_path: Path) -> None:
    """A lease is an object anybody with the bucket's credentials can write: the URL it
    names is connected to only when the operator listed it in `cache.store.peers`."""
    listed = ["http://127.0.0.1:3142"]
    siblings = Workers(0, [tmp_path / "0.sock", tmp_path / "1.sock"])
    streams = PeerStreams(siblings, lambda: listed, read_timeout=5)
    assert streams._where("host:1@http://127.0.0.1:3142") == ("units", "http://127.0.0.1:3142")
    assert streams._where("host:1@http://169.254.169.254") is None
    assert streams._where("host:1@http://127.0.0.1:3142/evil") is None
    assert streams._where("worker-1") == ("worker-1", "http://worker")
    assert streams._where("worker-0") is None  # itself
    assert streams._where("worker-7") is None  # no such sibling
    assert streams._where("another process on this cache") is None
    assert await streams.open("host:1@http://169.254.169.254", "a/b.deb") is None
    await streams.close()


async def test_a_lookup_that_raises_under_the_lease_lets_it_go(
    origin: Origin, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the look into the store raises after the lease was taken (hostile
    metadata once made it RecursionError), the lease is let go: the next caller, here
    or on another process, is not made to wait on it."""
    origin.files["/pool/x.deb"] = b"x" * 1000
    fetcher = Fetcher(policy=EgressPolicy(lambda _hostport: True))
    engine = CacheEngine(
        FilesystemStore(tmp_path / "c"), fetcher, max_size=1 << 30, ttl=300, clock=clock
    )
    await engine.start()

    def boom(_key: str, _expect: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(engine.store, "adopt", boom)
    try:
        with pytest.raises(RecursionError):
            await engine.get(
                Route("origin/pool/x.deb", (origin.url("/pool/x.deb"),), Freshness.IMMUTABLE)
            )
        other = FilesystemStore(tmp_path / "c")  # another process on the same disk
        assert other.claim("origin/pool/x.deb") is None  # let go
        other.release("origin/pool/x.deb")
    finally:
        await engine.close()
        await fetcher.close()


def test_a_lease_is_waited_on_as_long_as_its_file_may_fairly_take(tmp_path: Path) -> None:
    """Twice the lease's time for a small or unknown file (a lease rewritten for ever by
    a bucket writer); a big image another unit downloads at 1 MiB/s or more is waited for."""
    from appliance.cache.fleet import Fleet
    from appliance.cache.route import NO_EXPECTATION

    fleet = Fleet(FilesystemStore(tmp_path), lease_ttl=30.0)
    assert fleet.wait_limit(NO_EXPECTATION) == 60.0
    assert fleet.wait_limit(Expect(size=10 << 20)) == 60.0
    assert fleet.wait_limit(Expect(size=2 << 30)) == 2048.0


async def test_what_an_outage_left_pending_is_uploaded_once_the_store_answers(
    swift: Any, origin: Origin, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file fetched while the store was left alone (a missed deadline) reaches the
    bucket when the store may be asked again, with no further request to ask it."""
    from appliance.cache import fleet, objectstore

    monkeypatch.setattr(fleet, "RETRY_AFTER", 0.2)
    monkeypatch.setattr(objectstore, "RETRY_AFTER", 0.2)
    origin.files["/img/late.img"] = os.urandom(50_000)
    fetcher = Fetcher(policy=EgressPolicy(lambda _hostport: True))
    store = object_store(swift, tmp_path / "a", prefix=f"{uuid.uuid4().hex}/")
    engine = CacheEngine(store, fetcher, max_size=1 << 30, ttl=300, clock=clock)
    await engine.start()
    try:
        store.trip("test: a lease call missed its deadline")
        key = "origin/img/late.img"
        await engine.ensure(
            _image(key, origin.url("/img/late.img"), Expect(size=50_000)), keep=True
        )
        await engine.idle()
        assert store.bucket.head(key) is None  # pending: the store was not asked
        for _ in range(100):  # (the bucket read directly: asking the store would upload)
            if store.bucket.head(key) is not None:
                break
            await asyncio.sleep(0.1)
        assert store.bucket.head(key) is not None and store.remote_problem() is None
    finally:
        await engine.close()
        await fetcher.close()
