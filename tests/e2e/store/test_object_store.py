"""The object store as several units see it, on a real OpenStack Swift (S3 API): what one
unit commits the others take from the store, checked; volatile entries stay local; a bad
object is refused; the store going away degrades a unit to its disk and upstream, and it
catches up when the store is back."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from appliance.cache import objectstore
from appliance.cache.objectstore import ObjectStore
from appliance.cache.route import NO_EXPECTATION as ANY  # vouched for by the fleet key
from appliance.cache.store import Meta
from tests.components import swift_aio
from tests.conftest import free_port_block, object_store


def _commit(store: ObjectStore, key: str, data: bytes, shared: bool = True) -> Any:
    temp = store.create_temp(key)
    temp.write(data)
    now = time.time()
    meta = Meta(
        url=f"http://mirror.test/{key}",
        size=len(data),
        fetched=now,
        checked=now,
        etag='"v1"',
        sha256=hashlib.sha256(data).hexdigest(),
        shared=shared,
    )
    entry = store.commit(temp, meta)
    store.share(entry)
    return entry


@pytest.fixture
def units(swift: Any, tmp_path: Path) -> tuple[ObjectStore, ObjectStore]:
    prefix = f"{uuid.uuid4().hex}/"
    return (
        object_store(swift, tmp_path / "a", prefix=prefix),
        object_store(swift, tmp_path / "b", prefix=prefix),
    )


def test_what_one_unit_commits_the_others_take_from_the_store(
    swift: Any, units: tuple[ObjectStore, ObjectStore], tmp_path: Path
) -> None:
    a, b = units
    data = os.urandom(300_000)
    _commit(a, "h/pool/main/x.deb", data)
    _commit(a, "h/dists/bookworm/InRelease", b"volatile", shared=False)
    head = swift.client().head_object(Bucket="cache", Key=a.bucket.name("h/pool/main/x.deb"))
    assert head["ContentLength"] == len(data)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert list(b.keys_under("h/pool")) == ["h/pool/main/x.deb"]  # listed before it is here
    assert b.held("h/pool/main/x.deb") is None
    entry = b.adopt("h/pool/main/x.deb", ANY)  # copied from the store, checked, kept locally
    assert entry is not None and b.read_bytes(entry) == data and entry.meta.etag == '"v1"'
    assert entry.path.is_relative_to(tmp_path / "b") and b.counts["hits"] == 1
    assert b.adopt("h/dists/bookworm/InRelease", ANY) is None  # volatile: each unit its own
    assert b.counts["misses"] == 1
    b.evict("h/pool/main/x.deb")  # this disk's copy only
    assert b.held("h/pool/main/x.deb") is None
    assert b.adopt("h/pool/main/x.deb", ANY) is not None and b.counts["hits"] == 2
    a.remove("h/pool/main/x.deb")  # gone for everyone
    b.evict("h/pool/main/x.deb")
    assert b.adopt("h/pool/main/x.deb", ANY) is None and a.adopt("h/pool/main/x.deb", ANY) is None


def test_a_corrupt_object_is_refused_and_removed(
    swift: Any, units: tuple[ObjectStore, ObjectStore]
) -> None:
    a, b = units
    data = os.urandom(100_000)
    _commit(a, "h/pool/y.deb", data)
    s3 = swift.client()
    name = a.bucket.name("h/pool/y.deb")
    metadata = s3.head_object(Bucket="cache", Key=name)["Metadata"]
    rotten = bytearray(data)
    rotten[5000] ^= 1
    s3.put_object(Bucket="cache", Key=name, Body=bytes(rotten), Metadata=metadata)
    assert b.adopt("h/pool/y.deb", ANY) is None  # the sha256 it names is not its bytes
    assert b.counts["corrupt"] == 1 and b.held("h/pool/y.deb") is None
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket="cache", Key=name)  # removed: the next unit fetches upstream


def test_large_entries_go_up_in_parts_and_come_back_whole(
    swift: Any, units: tuple[ObjectStore, ObjectStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objectstore, "MULTIPART_ABOVE", 6 * 1024 * 1024)
    monkeypatch.setattr(objectstore, "PART_SIZE", 5 * 1024 * 1024)
    a, b = units
    data = os.urandom(12 * 1024 * 1024)
    _commit(a, "h/images/disk.img", data)
    head = swift.client().head_object(Bucket="cache", Key=a.bucket.name("h/images/disk.img"))
    assert head["ETag"].endswith('-3"')  # three parts, one object
    entry = b.adopt("h/images/disk.img", ANY)
    assert entry is not None and hashlib.sha256(b.read_bytes(entry)).digest() == (
        hashlib.sha256(data).digest()
    )


def test_without_the_store_a_unit_uses_its_disk_and_catches_up_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not swift_aio.installed():
        pytest.fail("swift missing: `make test` builds .components/swift")
    own = swift_aio.start(tmp_path / "swift", free_port_block(5))  # this test stops it
    try:
        now = [1000.0]
        a = object_store(own, tmp_path / "a")
        b = object_store(own, tmp_path / "b")
        a.clock = b.clock = lambda: now[0]
        _commit(a, "h/pool/before.deb", b"before")
        own.stop()
        started = time.monotonic()
        after = _commit(a, "h/pool/during.deb", b"during")  # committed locally all the same
        assert a.held("h/pool/during.deb") is not None and after.meta.size == 6
        assert "PUT h/pool/during.deb" in (a.remote_problem() or "")
        assert b.adopt("h/pool/before.deb", ANY) is None  # not on b's disk, the store is away
        assert b.remote_problem() is not None
        assert time.monotonic() - started < 15
        quick = time.monotonic()
        assert b.adopt("h/pool/other.deb", ANY) is None  # not asked again for a while
        assert time.monotonic() - quick < 0.1
        own.start()
        now[0] += objectstore.RETRY_AFTER
        assert b.adopt("h/pool/before.deb", ANY) is not None and b.remote_problem() is None
        assert b.adopt("h/pool/during.deb", ANY) is None  # a has not uploaded it yet
        assert a.adopt("h/pool/nothing.deb", ANY) is None and a.remote_problem() is None
        b.evict("h/pool/during.deb")
        assert b.adopt("h/pool/during.deb", ANY) is not None  # a uploaded it once back
    finally:
        own.stop()


def test_uploads_pending_at_a_restart_are_made_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit restarted during an outage still uploads what it committed meanwhile: the
    pending keys are written down (`.state/pending-uploads-main`)."""
    if not swift_aio.installed():
        pytest.fail("swift missing: `make test` builds .components/swift")
    own = swift_aio.start(tmp_path / "swift", free_port_block(5))  # this test stops it
    try:
        a = object_store(own, tmp_path / "a")
        own.stop()
        _commit(a, "h/pool/during.deb", b"during")
        journal = tmp_path / "a/.state/pending-uploads-main"
        assert journal.read_text() == "h/pool/during.deb\n"
        own.start()
        again = object_store(own, tmp_path / "a")  # the next run on the same disk
        assert not journal.exists()
        b = object_store(own, tmp_path / "b")
        entry = b.adopt("h/pool/during.deb", ANY)  # copied from the store
        assert entry is not None and b.read_bytes(entry) == b"during"
        assert again.shared_status()["pending_uploads"] == 0
    finally:
        own.stop()


def test_a_bucket_it_may_not_read_is_an_error_that_names_it(swift: Any, tmp_path: Path) -> None:
    swift.client().create_bucket(Bucket="someone-elses")
    from appliance.cache.objectstore import Bucket, Credentials, s3_client
    from appliance.cache.store import FilesystemStore

    other = s3_client(swift.endpoint, swift_aio.REGION, Credentials("test:reader", "reading"))
    store = ObjectStore(FilesystemStore(tmp_path / "c"), Bucket(other, "someone-elses"))
    store.connect()  # a user of the account without rights on it: 403, not created
    assert (store.remote_problem() or "").startswith("bucket someone-elses: "), (
        store.remote_problem()
    )
    assert "create" not in (store.remote_problem() or "")
    fresh = object_store(swift, tmp_path / "d", bucket=f"new-{uuid.uuid4().hex[:12]}")
    assert fresh.remote_problem() is None  # a missing bucket is created


def test_a_local_claim_is_the_disks_lock_never_the_buckets_lease(
    swift: Any, units: tuple[ObjectStore, ObjectStore], tmp_path: Path
) -> None:
    """A volatile index each unit keeps for itself: its workers (stores on one disk) take
    turns, other units are not waited for, and no lease object is written."""
    a, b = units
    key = "h/dists/bookworm/InRelease"
    sibling = object_store(swift, a.local.root, prefix=a.bucket.prefix)  # a's other worker
    a.local.holder = "worker-0"
    assert a.claim(key, local=True) is None
    assert sibling.claim(key, local=True) == "worker-0"
    assert b.claim(key, local=True) is None  # another unit: its own disk
    assert b.claim(key) is None  # no lease object was written for a's claim
    b.release(key)
    a.release(key, local=True)
    assert sibling.claim(key, local=True) is None
    sibling.release(key, local=True)
    b.release(key, local=True)


def test_one_unit_holds_the_fetch_lease_until_it_releases_or_dies(
    units: tuple[ObjectStore, ObjectStore],
) -> None:
    a, b = units
    a.unit, b.unit = "unit-a", "unit-b"
    assert a.claim("h/pool/z.deb") is None  # a fetches
    assert b.claim("h/pool/z.deb") == "unit-a"  # b waits for a's object
    a.renew("h/pool/z.deb")
    a.release("h/pool/z.deb")
    assert b.claim("h/pool/z.deb") is None  # released: b may fetch
    a.lease_ttl = 6.0
    assert a.claim("h/pool/z.deb") == "unit-b"
    time.sleep(7.5)  # b stops renewing (as if killed): its lease runs out (to the second)
    assert a.claim("h/pool/z.deb") is None  # taken over
    assert list(a.keys_under("h")) == []  # leases are never listed as entries
    a.release("h/pool/z.deb")
