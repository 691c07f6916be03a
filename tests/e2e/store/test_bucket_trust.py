"""Anyone who can write the bucket (its credentials are shared by every unit and maybe other
tools) must not make a unit take bytes it cannot tie to upstream: the tampering matrix on a
real Swift (S3 API). Unit `a` commits and uploads as a unit does; the attacker writes with
the bucket's own credentials; unit `b`, with an empty disk, is asked for the file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from appliance.cache.objectstore import ObjectStore
from appliance.cache.route import NO_EXPECTATION, Expect
from appliance.cache.store import Meta
from tests.conftest import object_store

POOL = "deb.test/debian/pool/main/h/hello_1.0_amd64.deb"


def _commit(store: ObjectStore, key: str, data: bytes, keep: bool = False) -> Meta:
    temp = store.create_temp(key)
    temp.write(data)
    now = time.time()
    meta = Meta(
        url=f"http://{key}",
        size=len(data),
        fetched=now,
        checked=now,
        content_type="application/vnd.debian.binary-package",
        sha256=hashlib.sha256(data).hexdigest(),
        keep=keep,
        shared=True,
    )
    store.share(store.commit(temp, meta))
    return meta


def meta_pieces(text: str) -> dict[str, str]:
    """Object metadata as a unit writes it (see objectstore._meta_pieces), any JSON text."""
    encoded = base64.urlsafe_b64encode(text.encode()).decode()
    return {f"al-meta-{i // 240}": encoded[i : i + 240] for i in range(0, len(encoded), 240)}


def consistent_metadata(key: str, body: bytes, **fields: Any) -> dict[str, str]:
    """Metadata consistent with `body` (size, sha256), as a unit's, without its record."""
    now = time.time()
    meta = {
        "url": f"http://{key}",
        "size": len(body),
        "fetched": now,
        "checked": now,
        "sha256": hashlib.sha256(body).hexdigest(),
        "shared": True,
        **fields,
    }
    return meta_pieces(json.dumps(meta))


class Attacker:
    """Writes the bucket with the credentials every unit holds."""

    def __init__(self, swift: Any, store: ObjectStore) -> None:
        self.s3 = swift.client()
        self.store = store

    def name(self, key: str) -> str:
        return self.store.bucket.name(key)

    def metadata(self, key: str) -> dict[str, str]:
        return self.s3.head_object(Bucket="cache", Key=self.name(key))["Metadata"]

    def put(self, key: str, body: bytes, metadata: dict[str, str]) -> None:
        self.s3.put_object(Bucket="cache", Key=self.name(key), Body=body, Metadata=metadata)

    def plant(self, key: str, body: bytes, **fields: Any) -> None:
        """An object with metadata consistent with `body` (size, sha256), as a unit's."""
        self.put(key, body, consistent_metadata(key, body, **fields))


@pytest.fixture
def fleet(swift: Any, tmp_path: Path) -> tuple[ObjectStore, ObjectStore, Attacker]:
    prefix = f"{uuid.uuid4().hex}/"
    a = object_store(swift, tmp_path / "a", prefix=prefix)
    b = object_store(swift, tmp_path / "b", prefix=prefix)
    return a, b, Attacker(swift, a)


def _refused(store: ObjectStore) -> dict[str, int]:
    return store.refusals.as_dict()


def test_keys_a_unit_keeps_for_itself_are_never_read_from_the_bucket(
    fleet: tuple[ObjectStore, ObjectStore, Attacker],
) -> None:
    """Planted at the names of the curated feed, its key and a feed snapshot: a unit with an
    empty disk looks only at its own disk for them."""
    _a, b, attacker = fleet
    planted = [
        "archive-local/streams/v1/index.json",
        "archive-local/keys/archive-local.gpg",
        "archive-local/feeds/ubuntu/streams/v1/index.json",
        "archive-local/streams/v1/rogue.squashfs",
    ]
    for key in planted:
        attacker.plant(key, b"planted " * 1000, keep=True)
        assert b.lookup(key) is None and b.held(key) is None
    # and as a fleet entry, unvouched: nothing ties it to upstream
    assert b.adopt(planted[0], NO_EXPECTATION) is None
    assert _refused(b) == {"bucket/unverifiable": 1}


def test_forged_objects_with_consistent_metadata_are_refused(
    fleet: tuple[ObjectStore, ObjectStore, Attacker],
) -> None:
    a, b, attacker = fleet
    real = os.urandom(200_000)
    _commit(a, POOL, real)
    index_says = Expect(len(real), "sha256", hashlib.sha256(real).hexdigest(), "Packages")
    forged = os.urandom(200_000)
    # other bytes, metadata consistent with them, no record: a's index expectation refuses
    attacker.plant(POOL, forged)
    assert b.adopt(POOL, index_says) is None
    assert b.adopt(POOL, NO_EXPECTATION) is None  # and without one: no record, nothing
    # the genuine record and metadata on other bytes: the record names other bytes
    record = attacker.metadata(POOL) or {}
    _commit(a, POOL, real)
    genuine = attacker.metadata(POOL)
    attacker.put(POOL, forged, {**genuine, "sha256": hashlib.sha256(forged).hexdigest()})
    assert b.adopt(POOL, NO_EXPECTATION) is None
    # a record made with another key
    attacker.plant(POOL, forged, **{})
    attacker.put(POOL, forged, {**attacker.metadata(POOL), "al-record": "0" * 64})
    assert b.adopt(POOL, NO_EXPECTATION) is None
    # truncated, the unit's metadata and record kept
    attacker.put(POOL, real[:1000], genuine)
    assert b.adopt(POOL, NO_EXPECTATION) is None and b.adopt(POOL, index_says) is None
    assert b.held(POOL) is None and record is not None
    assert _refused(b) == {
        "bucket/digest": 2,  # not the index's digest; not the bytes the record names
        "bucket/unverifiable": 1,  # no record, no expectation
        "bucket/record": 1,  # a record made with another key
        "bucket/metadata": 2,  # truncated: not the size its metadata states (asked twice)
    }
    # the genuine object again: copied in, byte for byte
    _commit(a, POOL, real)
    entry = b.adopt(POOL, index_says)
    assert entry is not None and b.read_bytes(entry) == real


def test_a_by_hash_object_must_hash_to_its_name(
    fleet: tuple[ObjectStore, ObjectStore, Attacker],
) -> None:
    _a, b, attacker = fleet
    content = b"Package: hello\n" * 100
    digest = hashlib.sha256(content).hexdigest()
    key = f"deb.test/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{digest}"
    by_name = Expect(None, "sha256", digest, "its name")
    attacker.plant(key, b"Package: evil\n" * 100)  # consistent with itself, not its name
    assert b.adopt(key, by_name) is None
    assert _refused(b) == {"bucket/digest": 1}
    attacker.plant(key, content)  # the right bytes, planted by anyone: the name vouches
    entry = b.adopt(key, by_name)
    assert entry is not None and b.read_bytes(entry) == content


def test_an_image_item_must_be_the_signed_feeds(
    fleet: tuple[ObjectStore, ObjectStore, Attacker],
) -> None:
    _a, b, attacker = fleet
    image = os.urandom(300_000)
    key = "cloud-images.test/releases/noble/disk.img"
    feed_says = Expect(len(image), "sha256", hashlib.sha256(image).hexdigest(), "the feed")
    attacker.plant(key, os.urandom(300_000), keep=True)
    assert b.adopt(key, feed_says) is None
    attacker.plant(key, image, keep=True)  # right bytes: taken, but not kept on its word
    entry = b.adopt(key, feed_says)
    assert entry is not None and not entry.meta.keep and b.read_bytes(entry) == image


@pytest.mark.parametrize(
    "fields",
    [
        {"content_type": "text/html\r\nSet-Cookie: x=1"},
        {"etag": 12345},
        {"etag": '"é"'},
        {"last_modified": ["not", "a", "date"]},
        {"content_type": "x/" + "y" * 1500},
    ],
)
def test_hostile_labels_are_dropped_and_never_break_an_answer(
    fleet: tuple[ObjectStore, ObjectStore, Attacker], fields: dict[str, Any]
) -> None:
    """Labels the record does not cover (the bytes are the unit's, vouched): taken without
    the unusable label, never committed as they are."""
    a, b, attacker = fleet
    data = os.urandom(10_000)
    _commit(a, POOL, data)
    genuine = attacker.metadata(POOL)
    meta = json.loads(
        base64.urlsafe_b64decode(
            "".join(v for k, v in sorted(genuine.items()) if k.startswith("al-meta-"))
        )
    )
    meta.update(fields)
    kept = {k: v for k, v in genuine.items() if not k.startswith("al-meta-")}
    attacker.put(POOL, data, {**kept, **meta_pieces(json.dumps(meta))})
    entry = b.adopt(POOL, NO_EXPECTATION)
    assert entry is not None and b.read_bytes(entry) == data
    for name in fields:
        assert getattr(entry.meta, name) is None
    assert b.lookup(POOL) is not None  # the committed sidecar reads back


@pytest.mark.parametrize(
    "fields",
    [
        {"size": "10000"},
        {"size": -1},
        {"sha256": "NOT-HEX"},
        {"keep": "yes"},
        {"digests": {"md5": 7}},
        {"url": "http://x/\r\nevil"},
        {"fetched": "yesterday"},
    ],
)
def test_metadata_that_checks_or_decides_must_be_what_a_unit_writes(
    fleet: tuple[ObjectStore, ObjectStore, Attacker], fields: dict[str, Any]
) -> None:
    _a, b, attacker = fleet
    data = os.urandom(10_000)
    attacker.plant(POOL, data, **fields)
    assert b.adopt(POOL, Expect(len(data), "sha256", hashlib.sha256(data).hexdigest())) is None
    assert _refused(b) == {"bucket/metadata": 1}


def test_without_a_fleet_key_only_what_a_unit_can_check_is_copied_in(
    swift: Any, tmp_path: Path
) -> None:
    prefix = f"{uuid.uuid4().hex}/"
    a = object_store(swift, tmp_path / "a", prefix=prefix, fleet_key=False)
    b = object_store(swift, tmp_path / "b", prefix=prefix, fleet_key=False)
    data = os.urandom(50_000)
    _commit(a, POOL, data)
    assert b.adopt(POOL, NO_EXPECTATION) is None  # a unit's upload, but nothing says so
    assert _refused(b) == {"bucket/unverifiable": 1}
    entry = b.adopt(POOL, Expect(len(data), "sha256", hashlib.sha256(data).hexdigest()))
    assert entry is not None and b.read_bytes(entry) == data


def test_a_lease_taken_over_is_neither_renewed_nor_released_by_its_old_holder(
    swift: Any, tmp_path: Path
) -> None:
    """A slow unit whose lease expired and was taken over must not write it back (renew)
    or delete it (release): a third unit would fetch too."""
    prefix = f"{uuid.uuid4().hex}/"
    a, b, c = (object_store(swift, tmp_path / n, prefix=prefix) for n in "abc")
    a.unit, b.unit, c.unit = "unit-a", "unit-b", "unit-c"
    for unit in (a, b, c):
        unit.lease_ttl = 1.0
    assert a.claim(POOL) is None  # a fetches, then stalls past its lease
    time.sleep(2.2)
    assert b.claim(POOL) is None  # b takes it over
    a.renew(POOL)
    assert b.bucket.lease(POOL)[0] == "unit-b"  # type: ignore[index]
    a.release(POOL)
    assert b.bucket.lease(POOL) is not None
    assert c.claim(POOL) == "unit-b"  # one fetch: c waits for b
    assert a.refusals.as_dict() == {"lease/stolen": 1}
    b.release(POOL)
    assert c.claim(POOL) is None
    c.release(POOL)


def test_verify_checks_kept_entries_against_the_index_too(tmp_path: Path) -> None:
    """`keep` is no reason to trust bytes: an entry marked kept whose bytes are not what
    the cached index lists is reported by `verify`."""
    from appliance.cache.store import FilesystemStore
    from appliance.cache.verify import check_entry

    store = FilesystemStore(tmp_path)
    data, other = os.urandom(1000), os.urandom(1000)
    temp = store.create_temp(POOL)
    temp.write(other)
    now = time.time()
    meta = Meta(f"http://{POOL}", 1000, now, now, sha256=hashlib.sha256(other).hexdigest())
    meta.keep = True
    entry = store.commit(temp, meta)
    index = Expect(1000, "sha256", hashlib.sha256(data).hexdigest(), "Packages")
    assert check_entry(store, entry, index) == "sha256 differs from the index (Packages)"
    assert check_entry(store, entry, None) is None  # itself: consistent


def test_metadata_nested_past_the_parsers_depth_is_refused_not_raised(
    fleet: tuple[ObjectStore, ObjectStore, Attacker],
) -> None:
    """JSON nested ~1000 deep fits Swift's 4 KiB of metadata; parsing or dumping it raised
    RecursionError, which escaped as a 500 and left the fleet's lease held."""
    _a, b, attacker = fleet
    data = os.urandom(5000)
    now = time.time()
    fields = {"url": "u", "size": len(data), "fetched": now, "checked": now, "x": "DEEP"}
    text = json.dumps(fields).replace('"DEEP"', "[" * 990 + "0" + "]" * 990)
    attacker.put(POOL, data, meta_pieces(text))
    index_says = Expect(len(data), "sha256", hashlib.sha256(data).hexdigest())
    entry = b.adopt(POOL, index_says)  # never raises
    assert entry is None or b.read_bytes(entry) == data
    assert set(_refused(b)) <= {"bucket/metadata"}


def test_a_lease_naming_this_unit_is_its_own_not_another_s(
    fleet: tuple[ObjectStore, ObjectStore, Attacker],
) -> None:
    """A claim that succeeded after its caller stopped waiting leaves a lease naming this
    unit: the next request of the unit takes it instead of waiting on itself."""
    a, b, _attacker = fleet
    a.unit, b.unit = "unit-a", "unit-b"
    assert a.claim(POOL) is None
    a._held.clear()  # the request that made it gave up on it
    assert a.claim(POOL) is None  # its own: fetched, not waited on
    assert b.claim(POOL) == "unit-a"
    a.release(POOL)
    assert b.claim(POOL) is None
    b.release(POOL)
