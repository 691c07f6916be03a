"""The cache engine: one answer per request, one upstream round-trip per key.

`get(route)` is the whole cache policy for clients: serve a fresh copy, join a running
download, or make exactly one upstream request (download or revalidation) that every
concurrent caller shares. `ensure(route)` is the same for mirroring, which waits for
the verified file. Subsystems only supply the `Route` (the key, the candidate upstream
URLs, the key's `Freshness`, what the bytes must be), and may add `Rules` (what a file
must be, learnt from indexes already cached).

The pieces, each its own module: `flights` (single flight in this process), `disk` (the
size cap, memoised entries, files written here), `leases` (one fetch across processes:
the fleet's lease, the disk's lock, the peers' streams), `upstream` (one request and
its download), `results` (what a route is answered with).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.cache.disk import Change, Disk
from appliance.cache.download import Download, Phase
from appliance.cache.fetcher import Fetcher, TransferLimits, UpstreamFailure
from appliance.cache.fleet import Fleet, Peers
from appliance.cache.flights import Flights
from appliance.cache.leases import Leases
from appliance.cache.policy import Policy
from appliance.cache.refusals import Refusals
from appliance.cache.results import (
    CacheStatus,
    FetchError,
    FromPeer,
    Hit,
    Miss,
    PassThrough,
    Result,
)
from appliance.cache.route import Fetch, Freshness, Route
from appliance.cache.store import Entry, Store
from appliance.cache.upstream import Rules, Upstream
from appliance.config import Config

log = logging.getLogger(__name__)

# downloads started ahead of their requests (`prefetch`) at once, every client together:
# clients that pipeline and hang up cannot make the look-ahead fetch without bound
PREFETCH_LIMIT = 16


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
        # wall-clock seconds: injectable, so TTL tests need not sleep
        self.policy = Policy(ttl, clock)
        self.disk = Disk(store, self.policy, max_size=max_size, min_free=min_free)
        self.lru = self.disk.lru  # what the size cap counts, siblings' files included
        self.rules: list[Rules] = []
        self.flights: Flights[Result] = Flights()
        # the unit's boundary: the shared store's leases and objects, the peers' streams
        self.fleet = Fleet(store, lease_ttl=getattr(store, "lease_ttl", 30.0))
        self.upstream = Upstream(self.disk, fetcher, self.flights, self.rules)
        self.leases = Leases(self.fleet, self.disk, self.upstream, self.ensure)
        # for web.deliver: what bounds a relayed stream (a sibling's download, `FromPeer`),
        # and what crossed the unit's boundary and was refused (a peer's bad bytes)
        self.limits: TransferLimits = fetcher.limits
        self.refusals: Refusals = self.fleet.refusals
        self._ahead: set[asyncio.Task[bool]] = set()  # prefetches not answered yet
        self._ahead_downloads: set[Download] = set()  # and the downloads they started

    # --- wiring, set by the web side ----------------------------------------------------
    @property
    def peers(self) -> Peers | None:
        """The lease holders' downloads, to stream from."""
        return self.fleet.peers

    @peers.setter
    def peers(self, peers: Peers | None) -> None:
        self.fleet.peers = peers

    @property
    def tell(self) -> Callable[[Change, str, int], None] | None:
        """The sibling processes on this cache directory, told what enters and leaves
        the size cap here, so each counts the whole directory (`learned`)."""
        return self.disk.tell

    @tell.setter
    def tell(self, tell: Callable[[Change, str, int], None] | None) -> None:
        self.disk.tell = tell

    def learned(self, change: Change | str, key: str, size: int = 0) -> None:
        """What a sibling told of the directory both cache in (`tell`); an unknown
        change is a ValueError."""
        self.disk.learned(Change(change), key, size)

    def apply(self, config: Config) -> None:
        """Take the cache settings of a new configuration (reload)."""
        self.policy.ttl = config.apt.index_ttl
        self.lru.max_size = config.cache.max_size
        self.disk.min_free = config.cache.min_free

    def figures(self) -> Figures:
        """What the status page and metrics show of the engine (a copy, read-only)."""
        return Figures(
            bytes=self.lru.total,
            entries=len(self.lru),
            max_bytes=self.lru.max_size,
            evictions=self.disk.evictions,
            rejected=self.upstream.integrity_failures,
            not_stored=dict(self.upstream.passed),
            downloads=self.in_flight(),
            shared_store=self.store.shared_status(),
            from_peers=self.leases.from_peers,
            refused=self.fleet.refusals.as_dict(),
        )

    # --- life ---------------------------------------------------------------------------
    async def start(self, sweep: bool = True) -> list[str]:
        """Sweep leftovers of an earlier run and index what is on disk; the keys found.

        Callers that need to know what is cached (the apt index table) use the list
        instead of walking the store a second time. `sweep=False`: index only (a worker,
        whose siblings may be writing; the master swept before starting them).
        """
        return await self.disk.start(sweep)

    async def idle(self) -> None:
        """Wait until the downloads running now have ended, bookkeeping included
        (their commit, the size cap's eviction): for draining and for tests."""
        await self.flights.idle()

    async def close(self) -> None:
        await self.flights.cancel()
        await self.fleet.close()

    def rejected(self, url: str, seconds: float = 0.0) -> None:
        """Upstream answered bytes that do not match what they must be: count and mark it."""
        self.upstream.rejected(url, seconds)

    # --- answers ------------------------------------------------------------------------
    async def get(self, route: Route) -> Result:
        """A client's answer for `route` (one that can relay a stream: it may get
        `FromPeer`, another process's download)."""
        return await self._get(Fetch.of(route))

    def prefetch(self, route: Route) -> asyncio.Task[bool] | None:
        """Start `route`'s download before its request is read (a client pipelined it
        behind another, as apt does); the task says whether it started a download. The
        file's own request then joins that download, or finds the file stored: the same
        routing, single flight and checks as `get`, only earlier."""
        fetch = Fetch.of(route)
        if fetch.freshness is Freshness.MANAGED:
            return None
        self._ahead_downloads = {d for d in self._ahead_downloads if d.active}
        if len(self._ahead) + len(self._ahead_downloads) >= PREFETCH_LIMIT:
            return None  # its request asks in its turn
        task = self.flights.spawn(self._prefetch(fetch))
        self._ahead.add(task)
        task.add_done_callback(self._ahead.discard)
        return task

    async def _prefetch(self, fetch: Fetch) -> bool:
        if self.flights.phase(fetch.key) is not None:
            return False  # someone else's download: its request joins it, as it would
        try:
            result = await self._get(fetch)
        except Exception as exc:  # the request itself meets it again, and says it
            log.debug("prefetch of %s: %s", fetch.key, exc)
            return False
        if isinstance(result, PassThrough):  # not stored: its own request relays it
            result.response.close()
        if isinstance(result, Miss):
            self._ahead_downloads.add(result.download)
            return True
        return False

    def hot_hit(self, route: Route) -> Hit | None:
        """`get`'s answer when it is a hit known without waiting (memoised, fresh, no
        download of it under way); None: ask `get`."""
        fetch = Fetch.of(route)
        if fetch.freshness is Freshness.MANAGED:
            return None
        key = fetch.key
        if self.flights.request(key) is not None or self.flights.joinable(key) is not None:
            return None
        return self.disk.hot_fresh(key, fetch.freshness)

    async def ensure(self, route: Route, keep: bool = False) -> Entry:
        """The verified file for `route`, downloading it if needed (for mirroring: a
        broken transfer resumes where it stopped; `keep`: exempt from eviction).

        A file already on disk is re-checked cheaply against the expected size and its
        stored digest; one that does not match is dropped and fetched again.
        """
        fetch = Fetch.of(route, mirror=True, keep=keep)
        for _attempt in range(2):
            result = await self._get(fetch)
            if isinstance(result, UpstreamFailure):
                raise FetchError(result.reason)
            if isinstance(result, PassThrough):
                result.response.close()
                raise FetchError(f"{route.key}: cannot be stored ({result.reason})")
            if isinstance(result, Miss):
                download = result.download
                await download.finished()
                if download.state is not Phase.DONE or download.entry is None:
                    raise FetchError(download.error or "download failed: not stored")
                return download.entry
            if await self.disk.matches(result.entry, route.expect):
                return result.entry
            log.warning("cache: %s does not match its expected digest; fetching again", route.key)
            await self.evict(route.key)
        raise FetchError(f"{route.key}: still does not match after a fresh download")

    async def _get(self, fetch: Fetch) -> Result:
        key = fetch.key
        if fetch.freshness is Freshness.MANAGED:  # written by sync/publish, maybe another process
            entry = await self.lookup(key)
            if not entry:
                return UpstreamFailure(404, f"{key}: not published")
            return Hit(entry, CacheStatus.HIT)
        while True:
            if (task := self.flights.request(key)) is None:
                if (download := self.flights.joinable(key)) is not None:
                    return Miss(download)
                hit, entry = await self.disk.fresh(key, fetch.freshness)
                if hit is not None:
                    return hit
                if self.flights.phase(key) is not None:
                    continue  # someone started while we looked at the disk: join them
                task = self.flights.ask(key, self.leases.fetch(fetch, entry))
            result = await asyncio.shield(task)
            if isinstance(result, FromPeer) and fetch.mirror:
                continue  # left for a client sharing the flight; ours waits for the file
            if isinstance(result, PassThrough) and not result.claim():
                if isinstance(result, FromPeer):  # another caller relays that stream:
                    mine = await self.leases.from_peer(result.holder, key, result)  # ours, now
                    if mine is not None:
                        return mine
                continue  # another caller reads that body: ask upstream again
            return result

    def lease(self, entry: Entry) -> AbstractAsyncContextManager[BinaryIO | None]:
        """The committed file, open and pinned against eviction while it is held;
        None if it vanished (evicted or purged) before it could be opened."""
        return self.disk.lease(entry)

    def joined(self, download: Download) -> AbstractContextManager[BinaryIO]:
        """A reader of a download in progress, pinned against eviction once committed."""
        return self.disk.joined(download)

    # --- the downloads in progress ------------------------------------------------------
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

    # --- files by name: maintenance, mirroring, what the appliance writes itself ----------
    async def lookup(self, key: str) -> Entry | None:
        return await self.disk.io(self.store.lookup, key)

    async def keep(self, entry: Entry) -> None:
        """Exempt a file from eviction (it was mirrored on purpose)."""
        await self.disk.keep(entry)

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> Entry:
        """Store bytes the appliance produced or verified itself (kept, never evicted)."""
        return await self.disk.put(key, data, content_type)

    async def put_file(self, key: str, source: Path, size: int, sha256: str) -> Entry:
        """Copy a local file into the store (kept); it must still be the file that was
        checked (`size`, `sha256`), or nothing is stored (`Mismatch`)."""
        return await self.disk.put_file(key, source, size, sha256)

    async def remove(self, key: str) -> None:
        """Gone: for every unit, when the store is shared (purge, a pruned image)."""
        await self.disk.remove(key)

    async def evict(self, key: str) -> None:
        """This unit's copy only (a bad or expired local file; a shared store keeps its
        own, checked again when copied back)."""
        await self.disk.evict(key)

    async def purge(self, prefix: str) -> int:
        """Remove every cached file below `prefix` (a host or a remap's mirror root),
        but those being fetched."""
        keys = await self.disk.io(lambda: list(self.store.keys_under(prefix)))
        removed = 0
        for key in keys:
            if not self.flights.busy(key):
                await self.remove(key)
                removed += 1
        return removed
