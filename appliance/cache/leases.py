"""One fetch per file across processes: who asks upstream when several want a file.

An immutable file this process does not have is fetched once for every worker and unit
sharing the store, under the fleet's lease; a volatile one (an index, stale or missing)
once for the workers on this cache directory, under the disk's lock (each unit keeps
its own indexes). The process that gets the lease or lock asks; the others stream its
download from it (`fleet.Peers`, for a caller that can relay a stream) or wait for the
file it leaves, and ask themselves if none comes in fair time. Without a shared store
the fleet is this directory. The lease is taken over when its holder stops renewing it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from appliance.cache.disk import Disk
from appliance.cache.fleet import Fleet, Held
from appliance.cache.results import CacheStatus, FromPeer, Hit, Miss, Result
from appliance.cache.route import Expect, Fetch, Freshness, Route
from appliance.cache.store import Entry
from appliance.cache.upstream import Upstream

log = logging.getLogger(__name__)
FLEET_POLL = 0.25  # seconds between looks at the shared store while another unit fetches


class Leases:
    def __init__(
        self,
        fleet: Fleet,
        disk: Disk,
        upstream: Upstream,
        ensure: Callable[[Route], Awaitable[Entry]],
    ) -> None:
        self.fleet = fleet
        self.disk = disk
        self.upstream = upstream
        self.ensure = ensure  # the verified file, however got: where a broken relay resumes
        self.from_peers = 0  # answers streamed from another worker's or unit's download

    async def fetch(self, fetch: Fetch, entry: Entry | None) -> Result:
        """`fetch`'s file from upstream, once for all the processes that want it now;
        `entry`: the copy this process saw (asked with only if the lock is never had)."""
        fetch = await self.upstream.expectation(fetch)  # what a copy or a peer must be
        local = fetch.freshness is not Freshness.IMMUTABLE
        if not local and self.fleet.remote and (hit := await self._adopted(fetch)):
            return hit  # another unit's, checked: no lease needed
        return await self._turn(fetch, entry, local)

    async def _turn(self, fetch: Fetch, entry: Entry | None, local: bool) -> Result:
        """Wait for our turn at the key (`local`: the disk's lock, else the fleet's lease);
        meanwhile the holder's stream or the file it leaves answers, and a holder that
        keeps it too long is not waited for. This process's callers all wait on this."""
        key, fleet = fetch.key, self.fleet
        level = logging.DEBUG if local else logging.INFO
        resume = None if local else functools.partial(self.ensure, fetch)
        waited_since: float | None = None
        while True:
            if (holder := await fleet.claim(key, local)) is None:
                return await self._holding(fetch, Held(fleet, key, local))
            if not fetch.mirror and (found := await self.from_peer(holder, key, fetch, resume)):
                log.log(level, "cache: %s is being fetched by %s; streaming it", key, holder)
                return found
            now = time.monotonic()
            if waited_since is None:
                log.log(level, "cache: %s is being fetched by %s; waiting for it", key, holder)
                waited_since = now
            elif now - waited_since > fleet.wait_limit(fetch.expect):
                self._gave_up(key, holder, local)
                return await self.upstream.ask(fetch, entry)
            await asyncio.sleep(FLEET_POLL)
            if (hit := await self._found(fetch, local)) is not None:
                return hit

    def _gave_up(self, key: str, holder: str, local: bool) -> None:
        if local:
            log.warning("cache: %s still locked by %s; asking upstream too", key, holder)
        else:  # held this long without a file: maybe a bucket writer rewriting the lease;
            # the client is served from upstream all the same
            self.fleet.refusals.refuse("lease", "expired", key, f": held by {holder}")

    async def _holding(self, fetch: Fetch, held: Held) -> Result:
        """Under the lease or lock: the file its last holder left (it may have let go
        between our look and our claim), else one request upstream. A download lets
        `held` go when it ends (`Upstream`); anything else lets it go here, at once."""
        try:
            if held.local:
                hit, entry = await self.disk.fresh(fetch.key, fetch.freshness, reread=True)
            else:
                hit, entry = await self._adopted(fetch), None
            result = hit if hit is not None else await self.upstream.ask(fetch, entry, held)
        except BaseException:
            await held.release()
            raise
        if not isinstance(result, Miss):
            await held.release()
        return result

    async def _found(self, fetch: Fetch, local: bool) -> Hit | None:
        """What the holder left: the copy on disk, read past what memory holds (a sibling
        confirmed or replaced it), or the store's object."""
        if local:
            return (await self.disk.fresh(fetch.key, fetch.freshness, reread=True))[0]
        return await self._adopted(fetch)

    async def _adopted(self, fetch: Fetch) -> Hit | None:
        """This disk's entry, or the store's object when it can be tied to upstream."""
        if (entry := await self.fleet.adopt(fetch.key, fetch.expect)) is None:
            return None
        await self.disk.account(entry)
        return Hit(entry, CacheStatus.HIT)

    async def from_peer(
        self,
        holder: str,
        key: str,
        like: FromPeer | Fetch,
        resume: Callable[[], Awaitable[Entry]] | None = None,
    ) -> FromPeer | None:
        """The holder's download of `key` as a stream for one caller (`like`: an answer
        to copy the expectation and fallback from), or None if it cannot be had."""
        expect: Expect = like.expect
        if (response := await self.fleet.open_peer(holder, key, expect)) is None:
            return None
        self.from_peers += 1
        limits = self.upstream.limits
        if isinstance(like, FromPeer):
            mine = FromPeer(response, expect, holder, limits, like.resume)
            mine.claim()
            return mine
        return FromPeer(response, expect, holder, limits, resume)
