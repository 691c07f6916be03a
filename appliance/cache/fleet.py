"""The unit's boundary, as the engine sees it: the shared store's leases and objects, and
the peers (sibling workers, other units) whose downloads it streams. A lease or lock
this process holds while it fetches is a `Held` (who waits on whom: `leases`).

Everything that crosses it is checked here or below (`ObjectStore.copy_in`): an object is
copied in only when tied to upstream (a digest from a signed index or feed, or the fleet's
HMAC record), a peer's stream must announce the expected size (its bytes are checked by
the relay, last byte held back), a lease is renewed and released only while still ours.

The store's calls run on threads of their own, never the ones local disk I/O uses, and the
quick ones (leases, a HEAD) under a deadline: a store that hangs is left alone for a while
(`Store.trip`) after its first missed deadline, and hits never wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import aiohttp

from appliance.cache.objectstore import RETRY_AFTER
from appliance.cache.route import Expect
from appliance.cache.store import Entry, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_RATE = 1 << 20  # bytes/s: a holder slower than this is not waited for (see wait_limit)
DEADLINE = 5.0  # seconds a lease call or a HEAD may take before the store is left alone
THREADS = 16  # the store's own threads: a hung store holds these, never the disk's
LEASE_RENEW = 2.0  # seconds between renewals of the fleet lease of a download in progress


class Peers(Protocol):
    """How to reach the worker or unit that holds a fleet lease (`Store.claim` names it)."""

    async def open(self, holder: str, key: str) -> aiohttp.ClientResponse | None:
        """Its download of `key` in progress (200, with a length), or None: not one we
        can reach, or it is not downloading `key` (any more)."""
        ...


class Fleet:
    def __init__(self, store: Store, lease_ttl: float = 30.0, deadline: float = DEADLINE):
        self.store = store
        self.refusals = store.refusals
        self.remote = store.shared_status() is not None
        self.deadline = deadline
        self.lease_ttl = lease_ttl
        self.peers: Peers | None = None
        self._pool = ThreadPoolExecutor(THREADS, "store") if self.remote else None
        self._catching_up: asyncio.Task[None] | None = None

    def wait_limit(self, expect: Expect) -> float:
        """How long a caller waits on another's lease before it fetches for itself: a
        lease rewritten for ever by a bucket writer must not hold a client for ever, and
        a holder downloading a big file at a fair rate must not be fetched beside."""
        return max(2 * self.lease_ttl, (expect.size or 0) / WAIT_RATE)

    async def close(self, timeout: float = 30.0) -> None:
        """Stop: calls not started are dropped, those under way (an upload, a lease let
        go) may end, for `timeout` seconds at most: a worker's process ends at once after
        this (`commands.workers`), and a cut upload would reach no other unit."""
        if self._catching_up is not None:
            self._catching_up.cancel()
        pool = self._pool
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(pool.shutdown, True), timeout)

    async def _local(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _remote(
        self,
        what: str,
        default: T,
        fn: Callable[..., T],
        *args: Any,
        deadline: bool = True,
        late: Callable[[T], None] | None = None,
    ) -> T:
        """`fn` on the store's threads; past the deadline the store is tripped and
        `default` returned (a call still queued is cancelled; one running finishes or
        fails on its own, and `late` gets what it returns then)."""
        if self._pool is None:
            return await self._local(fn, *args)
        if not self.store.available():
            return default
        work = self._pool.submit(fn, *args)
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(work), self.deadline if deadline else None
            )
        except TimeoutError:
            self.store.trip(f"{what}: no answer within {self.deadline:g} s")
            if late is not None:
                work.add_done_callback(
                    lambda done: (
                        late(done.result())
                        if not done.cancelled() and done.exception() is None
                        else None
                    )
                )
            return default

    async def claim(self, key: str, local: bool = False) -> str | None:
        """None: fetch `key` (we hold the lease, or the store is away); else the holder.
        A lease got after we stopped waiting for it is let go at once (we fetch without).
        `local`: this disk's lock among the unit's workers, never the shared store's
        (what each unit keeps for itself: a volatile index), so on the disk's threads."""
        if local:
            return await self._local(self.store.claim, key, True)

        def let_go(holder: str | None) -> None:
            if holder is None and self._pool is not None:
                with contextlib.suppress(RuntimeError):  # shut down meanwhile
                    self._pool.submit(self.store.release, key)

        return await self._remote(f"lease {key}", None, self.store.claim, key, late=let_go)

    async def release(self, key: str, local: bool = False) -> None:
        if local:  # a lock file: let go even while the shared store is away
            await self._local(self.store.release, key, True)
        else:
            await self._remote(f"release {key}", None, self.store.release, key)

    async def renew(self, key: str) -> None:
        await self._remote(f"renew {key}", None, self.store.renew, key)

    async def share(self, entry: Entry) -> bool:
        """Upload for the other units (no deadline: a big file takes its time; the
        client's bytes are sent already). A store that is away: noted as pending."""
        if self._pool is not None and not self.store.available():
            shared = await self._local(self.store.share, entry)  # pending, no I/O on it
        else:
            shared = await self._remote(f"upload {entry.key}", False, self.store.share, entry)
        if not shared and self._pool is not None and entry.meta.shared:
            self._catch_up_later()
        return shared

    def _catch_up_later(self) -> None:
        """Upload what an outage left pending as soon as the store answers again, not
        at the next request that happens to ask it (there may be none for hours)."""
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        catch_up = self.store.catch_up  # type: ignore[attr-defined]
        while True:
            await asyncio.sleep(RETRY_AFTER)
            if await self._remote("upload pending entries", False, catch_up, deadline=False):
                return

    async def adopt(self, key: str, expect: Expect) -> Entry | None:
        """This disk's entry, or the store's object when it can be tied to upstream."""
        if self._pool is None:
            return await self._local(self.store.adopt, key, expect)
        entry = await self._local(self.store.lookup, key)
        if entry is not None or not self.store.available():
            return entry
        inspect = self.store.inspect  # type: ignore[attr-defined]
        found = await self._remote(f"HEAD {key}", None, inspect, key)
        if found is None:
            return None
        copy_in = self.store.copy_in  # type: ignore[attr-defined]
        return await self._remote(f"GET {key}", None, copy_in, key, expect, found, deadline=False)

    async def open_peer(
        self, holder: str, key: str, expect: Expect
    ) -> aiohttp.ClientResponse | None:
        """The holder's download of `key`, if it announces what the file must be; the
        relay checks the bytes (`deliver`), holding the last one back until they match."""
        if self.peers is None or (response := await self.peers.open(holder, key)) is None:
            return None
        if expect.size is not None and response.content_length != expect.size:
            response.close()
            self.refusals.refuse(
                "peer", "size", key, f": {holder} announced {response.content_length} bytes"
            )
            return None
        return response


class Held:
    """A lease or lock this process holds on `key` while it fetches the file: the fleet's
    lease (renewed while a download runs under it; the file is shared with the other
    units before it is let go), or the disk's lock among this unit's workers (`local`).

    `async with` it around a download; `release()` when no download came of it."""

    def __init__(self, fleet: Fleet, key: str, local: bool) -> None:
        self.fleet = fleet
        self.key = key
        self.local = local
        self._renewing: asyncio.Task[None] | None = None

    @property
    def shares(self) -> bool:
        """The fleet's lease: what is fetched under it is for the other units too."""
        return not self.local

    async def share(self, entry: Entry) -> bool:
        """Upload for the other units; True: the store holds it (see `Fleet.share`)."""
        return False if self.local else await self.fleet.share(entry)

    async def release(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
        with contextlib.suppress(OSError):  # a lock file lets go even if the store is away
            await asyncio.shield(self.fleet.release(self.key, self.local))

    async def __aenter__(self) -> Held:
        if not self.local:
            self._renewing = asyncio.get_running_loop().create_task(self._renew())
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # stopping: still let go
            await self.release()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW)
            with contextlib.suppress(OSError):
                await self.fleet.renew(self.key)
