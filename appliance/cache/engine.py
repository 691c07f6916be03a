"""The cache engine: one answer per request, one upstream round-trip per key.

`get()` is the whole cache policy for callers: serve a fresh copy, join a
running download, or make exactly one upstream request (download or
revalidation) that every concurrent caller shares. Subsystems only supply the
key, the candidate upstream URLs and the key's `Freshness`, and may add `Rules`
(what a file must be, learnt from indexes already cached).

What cannot be stored is passed through (`PassThrough`): a full disk, a name that
clashes with a directory, a body whose end cannot be told from a cut (no
Content-Length and nothing to check it against) or one upstream encoded. The
client gets upstream's answer, nothing enters the cache, and it is never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import aiohttp

from appliance.cache import policy
from appliance.cache.download import Download, Phase
from appliance.cache.fetcher import Fetcher, UpstreamFailure, close_delimited, content_encoding
from appliance.cache.fleet import Fleet, Peers
from appliance.cache.flights import Flights
from appliance.cache.hot import SMALL_FILE, HotEntries
from appliance.cache.lru import LruIndex
from appliance.cache.route import NO_EXPECTATION, Expect, Freshness
from appliance.cache.store import Entry, Meta, Store, TempFile, Unstorable
from appliance.config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")
FLEET_POLL = 0.25  # seconds between looks at the shared store while another unit fetches
LEASE_RENEW = 2.0  # seconds between renewals of the fleet lease of a download in progress


@dataclass
class Hit:
    """A complete file on disk. `status` is HIT, REVALIDATED or STALE."""

    entry: Entry
    status: str
    warning: str | None = None
    body: bytes | None = None  # the whole file, when it is small and hot


@dataclass
class Miss:
    """A download in progress; the client streams from it."""

    download: Download
    status: str = "MISS"


class PassThrough:
    """An upstream answer streamed to one client and not stored; `reason` says why.

    Several callers may share one engine round-trip, but a response body can be
    read once: the first `claim()` wins, the others ask upstream again.
    """

    status = "PASS"
    UNCLAIMED_TIMEOUT = 30.0

    def __init__(self, response: aiohttp.ClientResponse, expect: Expect, reason: str) -> None:
        self.response = response
        self.expect = expect
        self.reason = reason
        self.encoding = content_encoding(response)
        self._claimed = False
        # nobody came for it (the caller was cancelled): free the connection
        self._timer = asyncio.get_running_loop().call_later(self.UNCLAIMED_TIMEOUT, self._expire)

    def claim(self) -> bool:
        if self._claimed:
            return False
        self._claimed = True
        self._timer.cancel()
        return True

    def _expire(self) -> None:
        if not self._claimed:
            self._claimed = True
            self.response.close()


class FromPeer(PassThrough):
    """Another worker's or unit's download of a file it holds the fleet lease for,
    streamed from it as it arrives (its last byte only once that download is verified
    there); this process stores nothing, the holder does (`holder` names it)."""

    status = "MISS"

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        expect: Expect,
        holder: str,
        resume: Callable[[], Awaitable[Entry]] | None = None,
    ) -> None:
        super().__init__(response, expect, "peer")
        self.holder = holder
        # if the peer breaks off (it died, its upstream failed): the verified file got
        # another way (the lease taken over, or the next holder's), to send the rest from
        self.resume = resume


Result = Hit | Miss | PassThrough | UpstreamFailure


class Rules(Protocol):
    """What a subsystem knows about files beyond their names (apt's indexes)."""

    async def expect(self, key: str) -> Expect | None:
        """What the file at `key` must be, when a cached index says so."""
        ...

    def committed(self, entry: Entry) -> None:
        """A file entered the cache (an index to learn from, maybe)."""
        ...


@dataclass(frozen=True)
class Figures:
    bytes: int  # of evictable files
    entries: int
    max_bytes: int
    evictions: int
    rejected: int  # downloads refused for a wrong size or digest
    not_stored: dict[str, int]  # pass-through answers by reason
    downloads: list[dict[str, object]]
    shared_store: dict[str, object] | None = None  # a store shared by several units
    from_peers: int = 0  # answers streamed from another worker's or unit's download
    refused: dict[str, int] | None = None  # `source/reason` -> what crossing was refused


class FetchError(Exception):
    """A file that could not be brought into the cache intact."""


def _same_target(info: dict[str, object], expect: Expect) -> bool:
    """A parked partial belongs to this download only if it was after the same bytes."""
    return (info.get("size"), info.get("algorithm"), info.get("digest")) == (
        expect.size,
        expect.algorithm,
        expect.digest,
    ) and expect.algorithm is not None


def _content_range(value: str | None) -> tuple[int, int | None]:
    """`bytes START-END/TOTAL` -> (START, TOTAL); (-1, None) when unusable."""
    m = re.fullmatch(r"\s*bytes\s+(\d{1,18})-(\d{1,18})/(\d{1,18}|\*)\s*", value or "")
    if not m:
        return -1, None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


# --- the blocking work, named: each runs in the executor -------------------------------


def _swept(store: Store, sweep: bool = True) -> list[tuple[str, int, float, bool]]:
    """The start-up sweep's survivors, least recently used first."""
    return sorted(store.scan(sweep), key=lambda e: e[2])


def _keys_under(store: Store, prefix: str) -> list[str]:
    return list(store.keys_under(prefix))


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


class CacheEngine:
    def __init__(
        self,
        store: Store,
        fetcher: Fetcher,
        *,
        max_size: int,
        ttl: float,
        min_free: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.fetcher = fetcher
        self.ttl = ttl
        self.min_free = min_free  # bytes the file system keeps free; below it, pass through
        self.lru = LruIndex(max_size)
        self.hot = HotEntries()
        self.rules: list[Rules] = []
        self.flights: Flights[Result] = Flights()
        self._tasks: set[asyncio.Task[None]] = set()
        self.clock = clock  # wall-clock seconds: injectable, so TTL tests need not sleep
        self.evictions = 0
        self.passed: Counter[str] = Counter()  # pass-through answers by reason
        self._noted: dict[str, float] = {}
        self.integrity_failures = 0  # downloads rejected for wrong size or digest
        # the unit's boundary: the shared store's leases and objects, the peers' streams
        self.fleet = Fleet(store, lease_ttl=getattr(store, "lease_ttl", 30.0))
        # processes sharing this cache directory (workers) are told what enters and leaves
        # the size cap here, so each counts the whole directory: ("add"|"drop", key, size)
        self.tell: Callable[[str, str, int], None] | None = None
        self.from_peers = 0

    @property
    def peers(self) -> Peers | None:
        """The lease holders' downloads, to stream from (set by the web side)."""
        return self.fleet.peers

    @peers.setter
    def peers(self, peers: Peers | None) -> None:
        self.fleet.peers = peers

    def apply(self, config: Config) -> None:
        """Take the cache settings of a new configuration (reload)."""
        self.ttl = config.apt.index_ttl
        self.lru.max_size = config.cache.max_size
        self.min_free = config.cache.min_free

    def figures(self) -> Figures:
        """What the status page and metrics show of the engine (a copy, read-only)."""
        return Figures(
            bytes=self.lru.total,
            entries=len(self.lru),
            max_bytes=self.lru.max_size,
            evictions=self.evictions,
            rejected=self.integrity_failures,
            not_stored=dict(self.passed),
            downloads=self.in_flight(),
            shared_store=self.store.shared_status(),
            from_peers=self.from_peers,
            refused=self.fleet.refusals.as_dict(),
        )

    async def _io(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def start(self, sweep: bool = True) -> list[str]:
        """Sweep leftovers of an earlier run and index what is on disk; the keys found.

        Callers that need to know what is cached (the apt index table) use the list
        instead of walking the store a second time. `sweep=False`: index only (a worker,
        whose siblings may be writing; the master swept before starting them).
        """
        entries = await self._io(_swept, self.store, sweep)
        for key, size, _last_use, keep in entries:
            if not keep:
                self.lru.add(key, size)
        log.info("cache: %d files, %.1f MiB", len(self.lru), self.lru.total / 2**20)
        await self._evict()
        return [key for key, _size, _last_use, _keep in entries]

    def rejected(self, url: str, seconds: float = 0.0) -> None:
        """Upstream answered bytes that do not match what they must be: count and mark it."""
        self.integrity_failures += 1
        self.fetcher.report(url, seconds, "integrity")

    async def idle(self) -> None:
        """Wait until the downloads running now have ended, bookkeeping included
        (their commit, the size cap's eviction): for draining and for tests."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.fleet.close()

    async def get(
        self,
        key: str,
        urls: Sequence[str],
        freshness: Freshness,
        expect: Expect = NO_EXPECTATION,
        resumable: bool = False,
        keep: bool = False,
        from_peer: bool = True,
    ) -> Result:
        """`from_peer`: a caller that can relay a stream (a client) may get `FromPeer`;
        others (mirroring) wait for the holder's file instead."""
        if freshness is Freshness.MANAGED:  # written by sync/publish, maybe another process
            entry = await self._io(self.store.lookup, key)
            return Hit(entry, "HIT") if entry else UpstreamFailure(404, f"{key}: not published")
        while True:
            if (task := self.flights.request(key)) is None:
                if (download := self.flights.joinable(key)) is not None:
                    return Miss(download)
                entry, body = await self._lookup(key)
                decision = policy.decide(entry and entry.meta, freshness, self.clock(), self.ttl)
                if entry and decision is policy.Decision.HIT:
                    await self._account(entry)
                    return Hit(entry, "HIT", body=body)
                if self.flights.phase(key) is not None:
                    continue  # someone started while we looked at the disk: join them
                if freshness is Freshness.IMMUTABLE and entry is None:
                    work = self._fleet_refresh(key, urls, expect, resumable, keep, from_peer)
                else:  # volatile: stale or missing
                    work = self._unit_refresh(key, urls, entry, expect, resumable, keep, from_peer)
                task = self.flights.ask(key, work)
            result = await asyncio.shield(task)
            if isinstance(result, FromPeer) and not from_peer:
                continue  # left for a client sharing the flight; ours waits for the file
            if isinstance(result, PassThrough) and not result.claim():
                if isinstance(result, FromPeer):  # another caller relays that stream:
                    mine = await self._from_peer(result.holder, key, result)  # ours, at once
                    if mine is not None:
                        return mine
                continue  # another caller reads that body: ask upstream again
            return result

    async def _account(self, entry: Entry) -> None:
        """A hit: fresh in the LRU; one copied in from a shared store starts counting
        against this disk's cap (kept ones too: the store keeps their copy)."""
        kept_here = entry.meta.keep and not self.store.elsewhere(entry.key)  # no I/O
        if entry.key in self.lru or kept_here:
            self.lru.touch(entry.key)
        else:
            self.lru.add(entry.key, entry.meta.size)
            self._told("add", entry.key, entry.meta.size)
            await self._evict()

    def _told(self, op: str, key: str, size: int = 0) -> None:
        if self.tell is not None:
            self.tell(op, key, size)

    def learned(self, op: str, key: str, size: int = 0) -> None:
        """What a sibling process told of the directory both cache in (`tell`): a file
        entered its size cap (a new file, or new content: forget what we memoised) or left
        it. The sibling that added it evicts for it, so this never evicts."""
        self.hot.drop(key)
        if op == "add":
            self.lru.add(key, size)
        elif op == "drop":
            self.lru.discard(key)

    async def _fleet_refresh(
        self,
        key: str,
        urls: Sequence[str],
        expect: Expect,
        resumable: bool,
        keep: bool,
        from_peer: bool = True,
    ) -> Result:
        """A file this process does not have, immutable: fetched once for every worker
        and unit sharing the store. The one that gets the lease fetches it; the others
        stream its download from it (`Peers`, when it can be reached) or wait for its
        file (this process's callers all wait on this one task), and take over the lease
        if its holder stops renewing it. Without a shared store: fetched here."""
        expect = await self._expectation(key, expect)  # what a copy or a peer must be
        fleet = self.fleet
        if fleet.remote and (entry := await fleet.adopt(key, expect)) is not None:
            await self._account(entry)  # another unit's, checked: no lease needed
            return Hit(entry, "HIT")
        waited_since: float | None = None
        while True:
            holder = await fleet.claim(key)
            if holder is None:
                # it may have landed between our look and our lease (its holder uploaded
                # and let go meanwhile): look again before asking upstream
                try:
                    entry = await fleet.adopt(key, expect)
                except BaseException:
                    await asyncio.shield(fleet.release(key))
                    raise
                if entry is not None:
                    await fleet.release(key)
                    await self._account(entry)
                    return Hit(entry, "HIT")
                return await self._fetch_leased(key, urls, expect, resumable, keep)
            if from_peer and (
                found := await self._from_peer(
                    holder, key, expect, lambda: self.ensure(key, urls, expect)
                )
            ):
                log.info("cache: %s is being fetched by %s; streaming it", key, holder)
                return found
            now = time.monotonic()
            if waited_since is None:
                log.info("cache: %s is being fetched by %s; waiting for it", key, holder)
                waited_since = now
            elif now - waited_since > fleet.wait_limit(expect):
                # a holder that keeps its lease this long without a file: maybe a bucket
                # writer rewriting it; the client is served from upstream all the same
                fleet.refusals.refuse("lease", "expired", key, f": held by {holder}")
                return await self._refresh(key, urls, None, expect, resumable, keep, resolved=True)
            await asyncio.sleep(FLEET_POLL)
            if (entry := await fleet.adopt(key, expect)) is not None:
                await self._account(entry)
                return Hit(entry, "HIT")

    async def _unit_refresh(
        self,
        key: str,
        urls: Sequence[str],
        entry: Entry | None,
        expect: Expect,
        resumable: bool,
        keep: bool,
        from_peer: bool = True,
    ) -> Result:
        """A volatile file (an index), stale or missing here: asked upstream once for all
        the processes on this cache directory (the workers; never other units, each keeps
        its own indexes), under the disk's lock. The one that gets it asks; the others
        stream its new version from it (`Peers`) or wait until it lets go, then serve the
        copy it confirmed or brought, or ask themselves if it left none (upstream failed).
        `entry`: the copy this process saw, asked with only if the lock is never had."""
        expect = await self._expectation(key, expect)  # what a peer's stream must be
        fleet = self.fleet
        waited_since: float | None = None
        while True:
            if (holder := await fleet.claim(key, local=True)) is None:
                return await self._refresh_locked(key, urls, expect, resumable, keep)
            if from_peer and (found := await self._from_peer(holder, key, expect)):
                log.debug("cache: %s is being fetched by %s; streaming it", key, holder)
                return found
            now = time.monotonic()
            if waited_since is None:
                log.debug("cache: %s is being revalidated by %s; waiting for it", key, holder)
                waited_since = now
            elif now - waited_since > fleet.wait_limit(expect):
                log.warning("cache: %s still locked by %s; asking upstream too", key, holder)
                return await self._refresh(key, urls, entry, expect, resumable, keep, resolved=True)
            await asyncio.sleep(FLEET_POLL)
            if (hit := (await self._confirmed(key))[0]) is not None:
                return hit

    async def _confirmed(self, key: str) -> tuple[Hit | None, Entry | None]:
        """The copy on disk as a hit if it is fresh, and the copy: read past what memory
        holds, which a sibling process may have confirmed (`304`) or replaced since."""
        entry, body = await self._lookup(key, disk=True)
        decision = policy.decide(entry and entry.meta, Freshness.VOLATILE, self.clock(), self.ttl)
        if entry is None or decision is not policy.Decision.HIT:
            return None, entry
        await self._account(entry)
        return Hit(entry, "HIT", body=body), entry

    async def _refresh_locked(
        self, key: str, urls: Sequence[str], expect: Expect, resumable: bool, keep: bool
    ) -> Result:
        """Under the disk's lock on `key`: the copy a sibling confirmed just before, or one
        request upstream (conditional on the copy on disk now). The lock is let go once
        the answer is on disk (a download: when it is committed or failed)."""
        try:
            hit, entry = await self._confirmed(key)
            result = hit
            if result is None:
                result = await self._refresh(
                    key, urls, entry, expect, resumable, keep, resolved=True
                )
        except BaseException:
            await asyncio.shield(self.fleet.release(key, local=True))
            raise
        if isinstance(result, Miss):
            task = asyncio.create_task(self._release_after(result.download))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            await self.fleet.release(key, local=True)
        return result

    async def _release_after(self, download: Download) -> None:
        """Let the disk's lock on a download's key go once it has ended."""
        try:
            await download.finished()
        finally:
            await asyncio.shield(self.fleet.release(download.key, local=True))

    async def _fetch_leased(
        self, key: str, urls: Sequence[str], expect: Expect, resumable: bool, keep: bool
    ) -> Result:
        """Fetch `key` upstream under the fleet's lease (a Miss releases it when its
        download ends; anything else at once)."""
        try:
            result = await self._refresh(
                key, urls, None, expect, resumable, keep, shared=True, resolved=True
            )
        except BaseException:
            await asyncio.shield(self.fleet.release(key))
            raise
        if not isinstance(result, Miss):
            await self.fleet.release(key)
        return result

    async def _from_peer(
        self,
        holder: str,
        key: str,
        like: FromPeer | Expect,
        resume: Callable[[], Awaitable[Entry]] | None = None,
    ) -> FromPeer | None:
        """The holder's download of `key` as a stream for one caller (`like`: an answer
        to copy the expectation and fallback from), or None if it cannot be had."""
        expect = like.expect if isinstance(like, FromPeer) else like
        if (response := await self.fleet.open_peer(holder, key, expect)) is None:
            return None
        self.from_peers += 1
        if isinstance(like, FromPeer):
            mine = FromPeer(response, like.expect, holder, like.resume)
            mine.claim()
            return mine
        return FromPeer(response, like, holder, resume)

    async def ensure(
        self, key: str, urls: Sequence[str], expect: Expect, keep: bool = False
    ) -> Entry:
        """The verified file for `key`, downloading it if needed (for mirroring).

        A file already on disk is re-checked cheaply against the expected size and its
        stored digest; one that does not match is dropped and fetched again.
        """
        for _attempt in range(2):
            result = await self.get(
                key, urls, Freshness.IMMUTABLE, expect, resumable=True, keep=keep, from_peer=False
            )
            if isinstance(result, UpstreamFailure):
                raise FetchError(result.reason)
            if isinstance(result, PassThrough):
                result.response.close()
                raise FetchError(f"{key}: cannot be stored ({result.reason})")
            if isinstance(result, Miss):
                download = result.download
                await download.finished()
                if download.state is not Phase.DONE or download.entry is None:
                    raise FetchError(download.error or "download failed: not stored")
                return download.entry
            if await self._io(_matches, self.store, result.entry, expect):
                return result.entry
            log.warning("cache: %s does not match its expected digest; fetching again", key)
            await self.evict(key)
        raise FetchError(f"{key}: still does not match after a fresh download")

    async def flight(self, key: str, wait: float = 5.0) -> Download | None:
        """This process's download of `key`, for a worker or unit waiting on its lease
        (a request still out for it is waited for, at most `wait` seconds)."""
        download = self.flights.joinable(key)
        if download is None and (task := self.flights.request(key)) is not None:
            await asyncio.wait([task], timeout=wait)
            download = self.flights.joinable(key)
        return download

    def downloading_key(self, key: str) -> bool:
        """True while `key` is being fetched (maintenance leaves it alone)."""
        return self.flights.busy(key)

    def downloading(self) -> int:
        """Bytes received so far by the downloads in progress (for progress bars)."""
        return sum(d.written for d in self.flights.downloads())

    def in_flight(self) -> list[dict[str, object]]:
        """The downloads in progress, for the status page and metrics."""
        now = time.monotonic()
        return [
            {
                "key": d.key,
                "written": d.written,
                "total": d.total,
                "clients": d.readers,
                "seconds": round(now - d.started, 1),
                "phase": d.state.value,
            }
            for d in self.flights.downloads()
        ]

    async def lookup(self, key: str) -> Entry | None:
        return await self._io(self.store.lookup, key)

    async def keep(self, entry: Entry) -> None:
        """Exempt a file from eviction (it was mirrored on purpose)."""
        if not entry.meta.keep:
            entry.meta.keep = True
            await self._io(self.store.update_meta, entry)
            self.lru.discard(entry.key)
            self.hot.drop(entry.key)
            self._told("drop", entry.key)

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> Entry:
        """Store bytes the appliance produced or verified itself (kept, never evicted).

        Their size and sha256 are taken here, from the bytes in memory; the store's
        commit checks them against what reached the disk."""
        expected = (len(data), hashlib.sha256(data).hexdigest())
        return await self._put(key, lambda: iter((data,)), expected, content_type)

    async def put_file(self, key: str, source: Path, size: int, sha256: str) -> Entry:
        """Copy a local file into the store (kept), streaming it; it must still be the
        file that was checked (`size`, `sha256`), or nothing is stored (`Mismatch`)."""

        def chunks() -> Iterator[bytes]:
            with open(source, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk

        return await self._put(key, chunks, (size, sha256), None)

    async def _put(
        self,
        key: str,
        chunks: Callable[[], Iterator[bytes]],
        expected: tuple[int, str],
        content_type: str | None,
    ) -> Entry:
        entry = await self._io(self._write_kept, key, chunks, expected, content_type)
        self.hot.drop(key)
        self.lru.discard(key)
        self._told("drop", key)
        return entry

    def _write_kept(
        self,
        key: str,
        chunks: Callable[[], Iterator[bytes]],
        expected: tuple[int, str],
        content_type: str | None,
    ) -> Entry:
        temp = self.store.create_temp(key)
        try:
            for chunk in chunks():
                temp.write(chunk)
        except BaseException:
            self.store.discard(temp)
            raise
        now = self.clock()
        size, sha256 = expected
        meta = Meta(
            url=f"local:{key}",
            size=size,
            fetched=now,
            checked=now,
            content_type=content_type,
            sha256=sha256,
            keep=True,
        )
        return self.store.commit(temp, meta)  # checks size and sha256, else discards

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
        self._told("drop", key)
        await self._io(how, key)
        self.hot.drop(key)

    async def purge(self, prefix: str) -> int:
        """Remove every cached file below `prefix` (a host or a remap's mirror root)."""
        keys = await self._io(_keys_under, self.store, prefix)
        removed = 0
        for key in keys:
            if not self.flights.busy(key):
                await self.remove(key)
                removed += 1
        return removed

    async def _lookup(self, key: str, disk: bool = False) -> tuple[Entry | None, bytes | None]:
        """The entry, from memory when hot; `disk`: read again (a sibling process may have
        confirmed or replaced it since it was memoised)."""
        if disk:
            self.hot.drop(key)
        elif (hot := self.hot.get(key)) is not None:
            return hot
        generation = self.hot.generation
        entry, body = await self._io(_read_small, self.store, key)
        if entry is not None and generation == self.hot.generation:
            self.hot.put(key, entry, body)
        return entry, body

    @contextlib.asynccontextmanager
    async def lease(self, entry: Entry) -> AsyncIterator[BinaryIO | None]:
        """The committed file, open and pinned against eviction while it is held;
        None if it vanished (evicted or purged) before it could be opened."""
        try:
            file = await self._io(self.store.open_read, entry)
        except OSError:
            yield None
            return
        self.lru.pin(entry.key)
        try:
            yield file
        finally:
            self.lru.unpin(entry.key)
            file.close()

    @contextlib.contextmanager
    def joined(self, download: Download) -> Iterator[BinaryIO]:
        """A reader of a download in progress; once committed, the file is pinned
        against eviction until this reader is done."""
        file = download.attach()
        self.lru.pin(download.key)
        try:
            yield file
        finally:
            self.lru.unpin(download.key)
            download.detach()

    async def _expectation(self, key: str, expect: Expect) -> Expect:
        """The route's expectation, or what a cached index says of this file."""
        if expect.known:
            return expect
        for rules in self.rules:
            try:
                found = await rules.expect(key)
            except Exception as exc:  # an index problem never blocks a download
                log.warning("cache: index lookup for %s failed: %s", key, exc)
                continue
            if found is not None:
                return found
        return expect

    async def _refresh(
        self,
        key: str,
        urls: Sequence[str],
        entry: Entry | None,
        expect: Expect,
        resumable: bool = False,
        keep: bool = False,
        shared: bool = False,
        resolved: bool = False,
    ) -> Result:
        """Ask upstream (conditionally, with `entry`). `resolved`: `expect` already holds
        what the indexes say (no second look-up)."""
        headers: dict[str, str] = {}
        partial = None
        if not resolved:
            expect = await self._expectation(key, expect)
        if entry is not None:
            if entry.meta.etag:
                headers["If-None-Match"] = entry.meta.etag
            if entry.meta.last_modified:
                headers["If-Modified-Since"] = entry.meta.last_modified
        elif resumable:
            algorithms = [expect.algorithm] if expect.algorithm else []
            partial = await self._io(self.store.resume_partial, key, algorithms)
            if partial is not None and _same_target(partial[1], expect):
                info = partial[1]
                headers["Range"] = f"bytes={info['written']}-"
                if validator := info.get("etag") or info.get("last_modified"):
                    headers["If-Range"] = str(validator)
                urls = [str(info["url"]), *(u for u in urls if u != info["url"])]
            elif partial is not None:
                await self._io(self.store.discard, partial[0])
                partial = None
        resp = await self.fetcher.open(urls, headers)
        if isinstance(resp, UpstreamFailure):
            if partial is not None:  # not now: keep the bytes for the next attempt
                await self._park(*partial)
            decision = policy.decide(
                entry and entry.meta, Freshness.VOLATILE, self.clock(), self.ttl, failure=resp
            )
            if entry is not None and decision is policy.Decision.STALE:
                log.warning("offline: serving cached %s (%s)", key, resp.reason)
                return Hit(entry, "STALE", warning=resp.reason)
            return resp
        if resp.status == 206:
            if partial is None:  # a Range we never sent
                resp.close()
                return UpstreamFailure(502, f"{resp.url}: 206 to a request without Range")
            start, total = _content_range(resp.headers.get("Content-Range"))
            written = int(partial[1]["written"])  # type: ignore[call-overload]
            if start != written or (expect.size is not None and total != expect.size):
                resp.close()
                await self._io(self.store.discard, partial[0])
                return UpstreamFailure(502, f"{resp.url}: 206 for the wrong range")
            log.info("resuming %s at byte %d", key, written)
            return await self._start_download(
                key, resp, expect, resumable, resume=partial[0], keep=keep, shared=shared
            )
        if partial is not None:  # upstream sent the whole file: start again
            await self._io(self.store.discard, partial[0])
        if resp.status == 304:
            resp.release()
            if entry is None:
                return UpstreamFailure(502, f"{resp.url}: 304 for an unconditional request")
            entry.meta.checked = self.clock()
            try:
                await self._io(self.store.update_meta, entry)
            except OSError as exc:  # a full disk: the copy is still valid, serve it
                log.warning("cache: cannot record the revalidation of %s: %s", key, exc)
            self.hot.drop(key)
            self.lru.touch(key)
            return Hit(entry, "REVALIDATED")
        if (encoding := content_encoding(resp)) and expect.algorithm is None:
            # bytes under an encoding we did not ask for: not the file, pass them on as sent
            self._note(
                "encoded", "upstream %s: Content-Encoding %s; not caching", resp.url, encoding
            )
            return self._pass(resp, expect, "encoded")
        if close_delimited(resp) and not expect.known:
            # the connection's end is the body's end: a cut looks complete; nothing to check
            log.info("upstream %s: no Content-Length, nothing to check it by: not cached", resp.url)
            return self._pass(resp, expect, "unverifiable")
        return await self._start_download(key, resp, expect, resumable, keep=keep, shared=shared)

    def _pass(self, resp: aiohttp.ClientResponse, expect: Expect, reason: str) -> PassThrough:
        self.passed[reason] += 1
        return PassThrough(resp, expect, reason)

    def _note(self, reason: str, message: str, *args: object) -> None:
        """A WARNING once a minute per reason (a full disk would repeat it per request)."""
        now = time.monotonic()
        if now - self._noted.get(reason, -60.0) >= 60.0:
            self._noted[reason] = now
            log.warning(message + " (logged once a minute)", *args)
        else:
            log.debug(message, *args)

    async def _park(self, temp: TempFile, info: dict[str, object]) -> None:
        try:
            await self._io(self.store.keep_partial, temp, info)
        except OSError as exc:
            log.warning("cache: cannot keep the partial %s: %s", temp.key, exc)
            await self._io(self.store.discard, temp)

    async def _new_temp(self, key: str, needed: int) -> TempFile:
        """A temp file for `key`, making room first; `Unstorable` when there is none."""
        free = await self._io(self.store.free_bytes)
        if free is not None and free - needed < self.min_free:
            room = needed + self.min_free - free
            if self.lru.total >= room:  # evicting can make room (else keep what we have)
                await self._evict(room=room)
                free = await self._io(self.store.free_bytes)
            if free is not None and free - needed < self.min_free:
                raise Unstorable(
                    key, "disk-full", f"{free} bytes free, {needed} needed (cache.min_free)"
                )
        return await self._io(self.store.create_temp, key)

    async def _start_download(
        self,
        key: str,
        resp: aiohttp.ClientResponse,
        expect: Expect,
        resumable: bool = False,
        resume: TempFile | None = None,
        keep: bool = False,
        shared: bool = False,
    ) -> Result:
        try:
            if resume is not None:
                temp = resume  # its digests already hold the parked bytes
            else:
                temp = await self._new_temp(key, resp.content_length or expect.size or 0)
            try:
                reader = await self._io(self.store.open_temp, temp)
            except OSError:
                await self._io(self.store.discard, temp)
                raise
        except OSError as exc:
            why = exc if isinstance(exc, Unstorable) else Unstorable(key, "store-error", str(exc))
            self._note(why.reason, "cache: %s; passing it through", why)
            return self._pass(resp, expect, why.reason)
        download = Download(
            key,
            temp,
            reader,
            resp,
            expect,
            resumable=resumable,
            keep=keep,
            shared=shared,
            limits=self.fetcher.limits,
            clock=self.clock,
        )
        self.flights.downloading(download)
        task = asyncio.create_task(self._run_download(download, resp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Miss(download)

    async def _run_download(self, download: Download, resp: aiohttp.ClientResponse) -> None:
        renewing = asyncio.create_task(self._renew(download.key)) if download.shared else None
        in_store = False  # a copy in a shared store: this disk's may go even if kept
        try:
            await download.run(resp, self.store)  # verified and committed: clients done
            if download.shared and download.entry is not None:
                in_store = await self.fleet.share(download.entry)  # other units'
        finally:
            self.flights.ended(download)
            self.hot.drop(download.key)
            if renewing is not None:
                renewing.cancel()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await self.fleet.release(download.key)
        if download.integrity_error:
            self.rejected(download.url, time.monotonic() - download.started)
        if download.state is Phase.DONE and not download.stored:
            self.passed["disk-full"] += 1
        if download.state is Phase.DONE and download.entry is not None:
            if not download.entry.meta.keep or in_store:
                self.lru.add(download.key, download.entry.meta.size)
                self._told("add", download.key, download.entry.meta.size)
            else:
                self._told("drop", download.key)  # kept: outside the cap, new content
            for rules in self.rules:
                try:
                    rules.committed(download.entry)
                except Exception as exc:
                    log.warning("cache: index update for %s failed: %s", download.key, exc)
            await self._evict()

    async def _renew(self, key: str) -> None:
        """Keep the fleet's lease on `key` while this unit downloads it."""
        while True:
            await asyncio.sleep(LEASE_RENEW)
            with contextlib.suppress(OSError):
                await self.fleet.renew(key)

    async def _evict(self, room: int = 0) -> None:
        for key in self.lru.victims(room):
            log.info("cache full: evicting %s", key)
            self.evictions += 1
            self.hot.drop(key)
            self._told("drop", key)
            try:
                await self._io(self.store.evict, key)
            except OSError as exc:
                log.warning("cache: cannot evict %s: %s", key, exc)
            self.hot.drop(key)  # a lookup may have memoised it meanwhile
