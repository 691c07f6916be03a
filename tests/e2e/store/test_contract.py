"""The `Store` contract, as a suite every backend runs: the local directory tree, and the
object store on a real OpenStack Swift (S3 API) with its local read cache. In-process and
blocking, like the store itself; each test states one promise the engine, the jobs and the
seeders rely on."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cache.store import FilesystemStore, InvalidKey, Meta, Mismatch, Store
from tests.conftest import object_store

BACKENDS = ("filesystem", "swift")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "filesystem":
        yield FilesystemStore(tmp_path / "store")
        return
    swift = request.getfixturevalue("swift")  # one Swift, a prefix of its own per test
    yield object_store(swift, tmp_path / "local", prefix=f"{uuid.uuid4().hex}/")


def _meta(data: bytes, **kw: object) -> Meta:
    now = time.time()
    fields: dict = {
        "url": "http://example.org/x",
        "size": len(data),
        "fetched": now,
        "checked": now,
        "sha256": hashlib.sha256(data).hexdigest(),
        "shared": True,  # an object store uploads it: every promise holds for those too
    }
    fields.update(kw)
    return Meta(**fields)


def _put(store: Store, key: str, data: bytes, **kw: object):  # type: ignore[no-untyped-def]
    temp = store.create_temp(key)
    temp.write(data)
    entry = store.commit(temp, _meta(data, **kw))
    store.share(entry)  # as the engine does once a download's clients have it
    return entry


def _visible(store: Store) -> list[str]:
    return sorted(e.key for e in store.entries())


def test_a_committed_entry_reads_back_every_way(store: Store) -> None:
    data = os.urandom(300_000)
    entry = _put(store, "h/pool/a.deb", data, etag='"e1"')
    found = store.lookup("h/pool/a.deb")
    assert found is not None and found.meta.size == len(data) and found.meta.etag == '"e1"'
    assert found.meta.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read_bytes(found) == data
    with store.open_read(entry) as fh:
        assert fh.read() == data
    with store.local_file(entry) as path:
        assert Path(path).read_bytes() == data


def test_nothing_is_visible_before_commit(store: Store) -> None:
    temp = store.create_temp("h/pool/b.deb")
    temp.write(b"half")
    assert store.lookup("h/pool/b.deb") is None
    assert list(store.keys_under("h")) == [] and _visible(store) == []
    store.discard(temp)
    assert store.lookup("h/pool/b.deb") is None and list(store.scan()) == []


@pytest.mark.parametrize(
    "wrong",
    [{"size": 5}, {"sha256": "0" * 64}, {"sha256": None}, {"digests": {"md5": "0" * 32}}],
)
def test_commit_refuses_metadata_that_is_not_the_written_bytes(store: Store, wrong: dict) -> None:
    """`commit` is the only way in, and it checks: a size or digest the bytes do not
    have is refused and nothing is left behind, not even the temp file."""
    data = b"the real bytes"
    temp = store.create_temp("h/pool/c.deb")
    temp.digests["md5"] = hashlib.md5()
    temp.write(data)
    with pytest.raises(Mismatch):
        store.commit(temp, _meta(data, **wrong))
    assert store.lookup("h/pool/c.deb") is None
    assert list(store.scan()) == [] and _visible(store) == []


def test_a_new_commit_replaces_the_old_entry_whole(store: Store) -> None:
    _put(store, "h/dists/x/InRelease", b"old", etag='"1"')
    _put(store, "h/dists/x/InRelease", b"new bytes", etag='"2"')
    entry = store.lookup("h/dists/x/InRelease")
    assert entry is not None and (entry.meta.etag, store.read_bytes(entry)) == ('"2"', b"new bytes")


def test_keys_under_lists_complete_entries_of_that_prefix_only(store: Store) -> None:
    _put(store, "h/a/1", b"1")
    _put(store, "h/a/deeper/2", b"2")
    _put(store, "h/b/3", b"3")
    store.create_temp("h/a/4").write(b"unfinished")
    assert sorted(store.keys_under("h/a")) == ["h/a/1", "h/a/deeper/2"]
    assert list(store.keys_under("nothing/here")) == []
    assert _visible(store) == ["h/a/1", "h/a/deeper/2", "h/b/3"]


def test_listing_names_each_entry_with_its_size_and_when_it_was_confirmed(
    store: Store,
) -> None:
    """The status page's cheap walk: the entries of this disk (no temp files, nothing
    parked), their sizes, and a time a revalidation (a new sidecar) moves forward."""
    before = time.time() - 1
    _put(store, "h/pool/a.deb", b"a" * 10)
    entry = _put(store, "h/dists/x/InRelease", b"index")
    store.create_temp("h/pool/b.deb").write(b"unfinished")
    parked = store.create_temp("h/images/disk.img")
    parked.write(b"part")
    store.keep_partial(parked, {"url": "http://example.org/disk.img", "written": 4})
    listed = {key: (size, when) for key, size, when in store.listing()}
    assert {k: size for k, (size, _when) in listed.items()} == {
        "h/pool/a.deb": 10,
        "h/dists/x/InRelease": 5,
    }
    assert sorted(listed) == _visible(store)
    assert all(before <= when <= time.time() + 1 for _size, when in listed.values())
    time.sleep(0.05)
    store.update_meta(entry)  # revalidated
    again = {key: when for key, _size, when in store.listing()}
    assert again["h/dists/x/InRelease"] > listed["h/dists/x/InRelease"][1]
    assert again["h/pool/a.deb"] == listed["h/pool/a.deb"][1]


def test_remove_and_update_meta(store: Store) -> None:
    entry = _put(store, "h/pool/d.deb", b"d")
    entry.meta.checked = 42.0
    entry.meta.extra["from_a_newer_version"] = True
    store.update_meta(entry)
    again = store.lookup("h/pool/d.deb")
    assert again is not None and again.meta.checked == 42.0
    assert again.meta.extra == {"from_a_newer_version": True}
    store.remove("h/pool/d.deb")
    store.remove("h/pool/d.deb")  # removing what is gone is no error
    assert store.lookup("h/pool/d.deb") is None and _visible(store) == []


def test_a_parked_partial_resumes_once_with_its_digest_primed(store: Store) -> None:
    data = os.urandom(1_000_000)
    temp = store.create_temp("h/images/disk.img")
    temp.write(data[:400_000])
    store.keep_partial(temp, {"url": "http://example.org/disk.img", "written": 400_000})
    assert store.lookup("h/images/disk.img") is None
    resumed = store.resume_partial("h/images/disk.img", ["sha512"])
    assert resumed is not None
    temp, info = resumed
    assert (temp.size, info["written"]) == (400_000, 400_000)
    assert store.resume_partial("h/images/disk.img") is None  # claimed: nobody else resumes
    temp.write(data[400_000:])
    assert temp.hexdigests()["sha512"] == hashlib.sha512(data).hexdigest()
    store.commit(temp, _meta(data))
    entry = store.lookup("h/images/disk.img")
    assert entry is not None and store.read_bytes(entry) == data


@pytest.mark.parametrize("key", ["", "../etc/passwd", "h/../../x", "h/.hidden", "/abs", "h//x"])
def test_keys_that_could_leave_the_store_are_refused(store: Store, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.create_temp(key)
    with pytest.raises(InvalidKey):
        store.lookup(key)


def test_scan_lists_entries_and_sweeps_what_was_left_behind(store: Store) -> None:
    _put(store, "h/pool/e.deb", b"e", keep=True)
    store.create_temp("h/pool/f.deb").write(b"a crash left this")
    with store.scratch("seed-") as work:
        (work / "disk.raw").write_bytes(b"staged")
        assert (work / "disk.raw").exists()
    assert not work.exists()  # removed after use
    dying = store.scratch()  # entered, never left: the process died inside
    left = dying.__enter__()
    (left / "disk.raw").write_bytes(b"staged")
    found = list(store.scan())
    assert not left.exists(), "the start-up sweep left a dead run's staging behind"
    assert [(k, size, keep) for k, size, _use, keep in found] == [("h/pool/e.deb", 1, True)]
    assert _visible(store) == ["h/pool/e.deb"]


def test_scan_without_sweeping_lists_and_removes_nothing(store: Store) -> None:
    """What a worker does at start beside siblings: their temp files and scratch stay."""
    _put(store, "h/pool/e.deb", b"e")
    temp = store.create_temp("h/pool/f.deb")
    temp.write(b"a sibling is writing this")
    staging = store.scratch()  # a sibling's, in use
    work = staging.__enter__()
    (work / "disk.raw").write_bytes(b"staged")
    found = list(store.scan(sweep=False))
    assert [(k, size) for k, size, _use, _keep in found] == [("h/pool/e.deb", 1)]
    assert (work / "disk.raw").exists()
    temp.write(b", still")
    store.commit(temp, _meta(b"a sibling is writing this, still"))  # it still commits
    assert sorted(_visible(store)) == ["h/pool/e.deb", "h/pool/f.deb"]
    staging.__exit__(None, None, None)


def test_free_bytes_is_a_number_or_unknown(store: Store) -> None:
    _put(store, "h/x", b"x")
    free = store.free_bytes()
    assert free is None or (isinstance(free, int) and free > 0)
