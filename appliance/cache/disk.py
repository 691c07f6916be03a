"""The cache directory as this process sees it: what the size cap counts (`LruIndex`),
what is memoised (`HotEntries`), what is fresh (`Policy`), and the files it writes
itself (kept: `put`). Every blocking call runs in the executor.

Processes sharing the directory (workers) tell each other what enters and leaves the
size cap (`tell`, `learned`), so each counts the whole directory; the one that added a
file evicts for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, TypeVar

from appliance.cache.download import Download
from appliance.cache.hot import SMALL_FILE, HotEntries
from appliance.cache.lru import LruIndex
from appliance.cache.policy import Decision, Policy
from appliance.cache.results import CacheStatus, Hit
from appliance.cache.route import Expect, Freshness
from appliance.cache.store import Entry, Meta, Store, TempFile, Unstorable

log = logging.getLogger(__name__)
T = TypeVar("T")


class Change(StrEnum):
    """What a sibling process is told of the size cap (its value goes on the wire)."""

    ADD = "add"  # a file entered the cap: a new file, or new content
    DROP = "drop"  # a file left it: evicted, removed, or kept (outside the cap)


# --- the blocking work, named: each runs in the executor -------------------------------


def _swept(store: Store, sweep: bool = True) -> list[tuple[str, int, float, bool]]:
    """The start-up sweep's survivors, least recently used first."""
    return sorted(store.scan(sweep), key=lambda e: e[2])


def _read_small(store: Store, key: str) -> tuple[Entry | None, bytes | None]:
    """An entry, and its bytes when it is small enough to keep in memory."""
    entry = store.lookup(key)
    if entry is None or entry.meta.size > SMALL_FILE:
        return entry, None
    try:
        body = store.read_bytes(entry)
    except OSError:
        return None, None
    return (entry, body) if len(body) == entry.meta.size else (None, None)


def _matches(store: Store, entry: Entry, expect: Expect) -> bool:
    """Size and stored digest; a digest never computed is computed now (blocking)."""
    meta = entry.meta
    if expect.size is not None and meta.size != expect.size:
        return False
    if not expect.algorithm:
        return True
    stored = {"sha256": meta.sha256, **(meta.digests or {})}.get(expect.algorithm)
    if stored is None:
        digest = hashlib.new(expect.algorithm)
        with store.open_read(entry) as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        stored = digest.hexdigest()
    return stored == (expect.digest or "").lower()


def _write_kept(
    store: Store,
    key: str,
    chunks: Callable[[], Iterator[bytes]],
    meta: Meta,
) -> Entry:
    temp = store.create_temp(key)
    try:
        for chunk in chunks():
            temp.write(chunk)
    except BaseException:
        store.discard(temp)
        raise
    return store.commit(temp, meta)  # checks size and sha256, else discards


class Disk:
    def __init__(self, store: Store, policy: Policy, *, max_size: int, min_free: int = 0):
        self.store = store
        self.policy = policy
        self.min_free = min_free  # bytes the file system keeps free; below it, pass through
        self.lru = LruIndex(max_size)
        self.hot = HotEntries()
        self.evictions = 0
        # the siblings on this directory, told of every change to the size cap's count
        self.tell: Callable[[Change, str, int], None] | None = None

    async def io(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def start(self, sweep: bool = True) -> list[str]:
        """Sweep leftovers of an earlier run and index what is on disk; the keys found
        (`sweep=False`: index only, for a worker whose siblings may be writing)."""
        entries = await self.io(_swept, self.store, sweep)
        for key, size, _last_use, keep in entries:
            if not keep:
                self.lru.add(key, size)
        log.info("cache: %d files, %.1f MiB", len(self.lru), self.lru.total / 2**20)
        await self.make_room()
        return [key for key, _size, _last_use, _keep in entries]

    # --- the siblings ------------------------------------------------------------------
    def _told(self, change: Change, key: str, size: int = 0) -> None:
        if self.tell is not None:
            self.tell(change, key, size)

    def learned(self, change: Change, key: str, size: int = 0) -> None:
        """What a sibling told (`tell`): a file entered its size cap (forget what we
        memoised of it) or left it. The sibling that added it evicts for it."""
        self.hot.drop(key)
        if change is Change.ADD:
            self.lru.add(key, size)
        else:
            self.lru.discard(key)

    # --- reading -----------------------------------------------------------------------
    async def lookup(self, key: str, reread: bool = False) -> tuple[Entry | None, bytes | None]:
        """The entry, from memory when hot; `reread`: from the disk again (a sibling may
        have confirmed or replaced it since it was memoised)."""
        if reread:
            self.hot.drop(key)
        elif (hot := self.hot.get(key)) is not None:
            return hot
        generation = self.hot.generation
        entry, body = await self.io(_read_small, self.store, key)
        if entry is not None and generation == self.hot.generation:
            self.hot.put(key, entry, body)
        return entry, body

    async def fresh(
        self, key: str, freshness: Freshness, reread: bool = False
    ) -> tuple[Hit | None, Entry | None]:
        """The copy as a hit when it may be served without asking upstream, and the copy
        (to ask upstream conditionally with)."""
        entry, body = await self.lookup(key, reread)
        decision = self.policy.decide(entry and entry.meta, freshness)
        if entry is None or decision is not Decision.HIT:
            return None, entry
        await self.account(entry)
        return Hit(entry, CacheStatus.HIT, body=body), entry

    def hot_fresh(self, key: str, freshness: Freshness) -> Hit | None:
        """`fresh` without waiting: the memoised copy as a hit when that needs no disk
        access and no eviction (an entry the size cap already counts); else None."""
        item = self.hot.get(key)
        if item is None:
            return None
        entry, body = item
        if self.policy.decide(entry.meta, freshness) is not Decision.HIT:
            return None
        if not self._touched(entry):
            return None  # `account` would add it to the cap (and make room): not hot
        return Hit(entry, CacheStatus.HIT, body=body)

    async def matches(self, entry: Entry, expect: Expect) -> bool:
        return await self.io(_matches, self.store, entry, expect)

    @contextlib.asynccontextmanager
    async def lease(self, entry: Entry) -> AsyncIterator[BinaryIO | None]:
        """The committed file, open and pinned against eviction while it is held;
        None if it vanished (evicted or purged) before it could be opened."""
        try:
            file = await self.io(self.store.open_read, entry)
        except OSError:
            yield None
            return
        with file, self._pinned(entry.key):
            yield file

    @contextlib.contextmanager
    def joined(self, download: Download) -> Iterator[BinaryIO]:
        """A reader of a download in progress; once committed, the file is pinned
        against eviction until this reader is done."""
        file = download.attach()
        try:
            with self._pinned(download.key):
                yield file
        finally:
            download.detach()

    @contextlib.contextmanager
    def _pinned(self, key: str) -> Iterator[None]:
        self.lru.pin(key)
        try:
            yield
        finally:
            self.lru.unpin(key)

    # --- the size cap --------------------------------------------------------------------
    async def account(self, entry: Entry) -> None:
        """A hit: fresh in the LRU; one copied in from a shared store starts counting
        against this disk's cap (kept ones too: the store keeps their copy)."""
        if not self._touched(entry):
            self.lru.add(entry.key, entry.meta.size)
            self._told(Change.ADD, entry.key, entry.meta.size)
            await self.make_room()

    def _touched(self, entry: Entry) -> bool:
        """Fresh in the LRU when the size cap counts it already or it is kept here (no
        I/O); False: it is not counted yet."""
        if entry.key in self.lru or (entry.meta.keep and not self.store.elsewhere(entry.key)):
            self.lru.touch(entry.key)
            return True
        return False

    def revalidated(self, entry: Entry) -> None:
        """Upstream confirmed the copy (the caller recorded when)."""
        self.hot.drop(entry.key)
        self.lru.touch(entry.key)

    def entered(self, entry: Entry, in_store: bool) -> None:
        """A download committed `entry`: counted, unless kept here and nowhere else
        (`in_store`: a shared store holds it, so this disk's copy may go)."""
        if not entry.meta.keep or in_store:
            self.lru.add(entry.key, entry.meta.size)
            self._told(Change.ADD, entry.key, entry.meta.size)
        else:
            self._told(Change.DROP, entry.key)  # kept: outside the cap, new content

    async def make_room(self, room: int = 0) -> None:
        """Evict the least recently used files over the cap (and `room` bytes more)."""
        for key in self.lru.victims(room):
            log.info("cache full: evicting %s", key)
            self.evictions += 1
            self.hot.drop(key)
            self._told(Change.DROP, key)
            try:
                await self.io(self.store.evict, key)
            except OSError as exc:
                log.warning("cache: cannot evict %s: %s", key, exc)
            self.hot.drop(key)  # a lookup may have memoised it meanwhile

    async def new_temp(self, key: str, needed: int) -> TempFile:
        """A temp file for `key`, making room first; `Unstorable` when there is none."""
        free = await self.io(self.store.free_bytes)
        if free is not None and free - needed < self.min_free:
            room = needed + self.min_free - free
            if self.lru.total >= room:  # evicting can make room (else keep what we have)
                await self.make_room(room=room)
                free = await self.io(self.store.free_bytes)
            if free is not None and free - needed < self.min_free:
                raise Unstorable(
                    key, "disk-full", f"{free} bytes free, {needed} needed (cache.min_free)"
                )
        return await self.io(self.store.create_temp, key)

    # --- removal -------------------------------------------------------------------------
    async def remove(self, key: str) -> None:
        """Gone: for every unit, when the store is shared (purge, a pruned image)."""
        await self._drop(key, self.store.remove)

    async def evict(self, key: str) -> None:
        """This unit's copy only (a bad or expired local file; a shared store keeps its
        own, checked again when copied back)."""
        await self._drop(key, self.store.evict)

    async def _drop(self, key: str, how: Callable[[str], None]) -> None:
        self.hot.drop(key)
        self.lru.discard(key)
        self._told(Change.DROP, key)
        await self.io(how, key)
        self.hot.drop(key)

    # --- files the appliance writes itself: kept, never evicted ---------------------------
    async def keep(self, entry: Entry) -> None:
        """Exempt a file from eviction (it was mirrored on purpose)."""
        if not entry.meta.keep:
            entry.meta.keep = True
            await self.io(self.store.update_meta, entry)
            self.lru.discard(entry.key)
            self.hot.drop(entry.key)
            self._told(Change.DROP, entry.key)

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> Entry:
        """Store bytes the appliance produced or verified itself (kept, never evicted).

        Their size and sha256 are taken here, from the bytes in memory; the store's
        commit checks them against what reached the disk."""
        sha256 = hashlib.sha256(data).hexdigest()
        return await self._put(key, lambda: iter((data,)), len(data), sha256, content_type)

    async def put_file(self, key: str, source: Path, size: int, sha256: str) -> Entry:
        """Copy a local file into the store (kept), streaming it; it must still be the
        file that was checked (`size`, `sha256`), or nothing is stored (`Mismatch`)."""

        def chunks() -> Iterator[bytes]:
            with open(source, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk

        return await self._put(key, chunks, size, sha256, None)

    async def _put(
        self,
        key: str,
        chunks: Callable[[], Iterator[bytes]],
        size: int,
        sha256: str,
        content_type: str | None,
    ) -> Entry:
        now = self.policy.clock()
        meta = Meta(
            url=f"local:{key}",
            size=size,
            fetched=now,
            checked=now,
            content_type=content_type,
            sha256=sha256,
            keep=True,
        )
        entry = await self.io(_write_kept, self.store, key, chunks, meta)
        self.hot.drop(key)
        self.lru.discard(key)
        self._told(Change.DROP, key)
        return entry
