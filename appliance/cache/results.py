"""What the engine answers a route with (`Result`): a complete file, a download to join,
an answer passed through unstored, another process's download to relay, or upstream's
failure. The web side delivers each (`web.deliver`); mirroring waits for the file.

What cannot be stored is passed through (`PassThrough`): a full disk, a name that
clashes with a directory, a body whose end cannot be told from a cut (no
Content-Length and nothing to check it against) or one upstream encoded. The client
gets upstream's answer, nothing enters the cache, and it is never a 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import aiohttp

from appliance.cache.download import Download
from appliance.cache.fetcher import TransferLimits, UpstreamFailure, content_encoding
from appliance.cache.route import Expect
from appliance.cache.store import Entry


class CacheStatus(StrEnum):
    """What the cache did for a request: the `X-Cache` value clients read, and (one table,
    `result` and `upstream`) what the request metrics count it as."""

    HIT = "HIT"  # the copy, fresh
    MISS = "MISS"  # fetched now, or relayed from the download of the lease's holder
    PASS = "PASS"  # upstream's answer relayed, not stored
    REVALIDATED = "REVALIDATED"  # the copy, confirmed by upstream
    STALE = "STALE"  # the copy, upstream failing (offline)

    @property
    def result(self) -> str:
        """The `result` label of the request metrics."""
        return _RESULT[self]

    @property
    def upstream(self) -> bool:
        """The bytes came from upstream (or a peer's download), not from the cache."""
        return self in (CacheStatus.MISS, CacheStatus.PASS)


_RESULT = {
    CacheStatus.HIT: "hit",
    CacheStatus.MISS: "miss",
    CacheStatus.PASS: "miss",  # relayed, not stored: it came from upstream like a miss
    CacheStatus.REVALIDATED: "revalidated",
    CacheStatus.STALE: "stale",
}


@dataclass
class Hit:
    """A complete file on disk. `status` is HIT, REVALIDATED or STALE."""

    entry: Entry
    status: CacheStatus
    warning: str | None = None
    body: bytes | None = None  # the whole file, when it is small and hot


@dataclass
class Miss:
    """A download in progress; the client streams from it."""

    download: Download
    status: CacheStatus = CacheStatus.MISS


class PassThrough:
    """An upstream answer streamed to one client and not stored; `reason` says why.

    Several callers may share one engine round-trip, but a response body can be
    read once: the first `claim()` wins, the others ask upstream again. `limits`
    bound the relay as they bound a download.
    """

    status: CacheStatus = CacheStatus.PASS
    UNCLAIMED_TIMEOUT = 30.0

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        expect: Expect,
        reason: str,
        limits: TransferLimits,
    ) -> None:
        self.response = response
        self.expect = expect
        self.reason = reason
        self.limits = limits
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

    status: CacheStatus = CacheStatus.MISS

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        expect: Expect,
        holder: str,
        limits: TransferLimits,
        resume: Callable[[], Awaitable[Entry]] | None = None,
    ) -> None:
        super().__init__(response, expect, "peer", limits)
        self.holder = holder
        # if the peer breaks off (it died, its upstream failed): the verified file got
        # another way (the lease taken over, or the next holder's), to send the rest from
        self.resume = resume


Result = Hit | Miss | PassThrough | UpstreamFailure


class FetchError(Exception):
    """A file that could not be brought into the cache intact."""
