"""One request upstream for a key, and what comes of it: the copy confirmed, a download
started and run to its commit, an answer passed through unstored, or a failure (which
the policy may answer with the stale copy).

What to send and what the answer means are pure (`exchange`); this is the I/O around
them. The lease or lock the caller holds on the key (`fleet.Held`) rides along: a
download lets it go once the file is committed and shared, anything else leaves it to
the caller.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from typing import Protocol

import aiohttp

from appliance.cache.disk import Disk
from appliance.cache.download import Download, Phase
from appliance.cache.exchange import (
    Answer,
    classify,
    conditional_headers,
    resume_headers,
    resume_urls,
    same_target,
)
from appliance.cache.fetcher import Fetcher, TransferLimits, UpstreamFailure, content_encoding
from appliance.cache.fleet import Held
from appliance.cache.flights import Flights
from appliance.cache.policy import Decision
from appliance.cache.results import CacheStatus, Hit, Miss, PassThrough, Result
from appliance.cache.route import Expect, Fetch
from appliance.cache.store import Entry, TempFile, Unstorable

log = logging.getLogger(__name__)

Partial = tuple[TempFile, dict[str, object]]  # a parked transfer's bytes, and what they were


class Rules(Protocol):
    """What a subsystem knows about files beyond their names (apt's indexes)."""

    async def expect(self, key: str) -> Expect | None:
        """What the file at `key` must be, when a cached index says so."""
        ...

    def committed(self, entry: Entry) -> None:
        """A file entered the cache (an index to learn from, maybe)."""
        ...


class Upstream:
    def __init__(
        self, disk: Disk, fetcher: Fetcher, flights: Flights[Result], rules: list[Rules]
    ) -> None:
        self.disk = disk
        self.store = disk.store
        self.fetcher = fetcher
        self.flights = flights
        self.rules = rules
        self.passed: Counter[str] = Counter()  # pass-through answers by reason
        self.integrity_failures = 0  # downloads rejected for wrong size or digest
        self._noted: dict[str, float] = {}

    @property
    def limits(self) -> TransferLimits:
        return self.fetcher.limits

    async def expectation(self, fetch: Fetch) -> Fetch:
        """The route's expectation, or what a cached index says of this file."""
        if fetch.expect.known:
            return fetch
        for rules in self.rules:
            try:
                found = await rules.expect(fetch.key)
            except Exception as exc:  # an index problem never blocks a download
                log.warning("cache: index lookup for %s failed: %s", fetch.key, exc)
                continue
            if found is not None:
                return fetch.expecting(found)
        return fetch

    def rejected(self, url: str, seconds: float = 0.0) -> None:
        """Upstream answered bytes that do not match what they must be: count and mark it."""
        self.integrity_failures += 1
        self.fetcher.report(url, seconds, "integrity")

    async def ask(self, fetch: Fetch, entry: Entry | None, held: Held | None = None) -> Result:
        """Ask for `fetch`'s file: conditionally when there is a copy (`entry`); when
        mirroring, for the rest of a transfer parked earlier."""
        partial = None if entry is not None or not fetch.mirror else await self._parked(fetch)
        urls, headers = fetch.urls, {}
        if entry is not None:
            headers = conditional_headers(entry.meta)
        elif partial is not None:
            headers, urls = resume_headers(partial[1]), resume_urls(partial[1], urls)
        resp = await self.fetcher.open(urls, headers)
        if isinstance(resp, UpstreamFailure):
            if partial is not None:  # not now: keep the bytes for the next attempt
                await self._park(*partial)
            return self._failed(fetch, entry, resp)
        written = None if partial is None else int(partial[1]["written"])  # type: ignore[call-overload]
        answer = classify(resp, fetch.expect, conditional=entry is not None, resume_at=written)
        if partial is not None and answer is not Answer.RESUMED:  # the whole file, or wrong
            await self.disk.io(self.store.discard, partial[0])
            partial = None
        if answer is Answer.RESUMED:
            log.info("resuming %s at byte %d", fetch.key, written)
        return await self._answered(fetch, entry, resp, answer, partial, held)

    async def _answered(
        self,
        fetch: Fetch,
        entry: Entry | None,
        resp: aiohttp.ClientResponse,
        answer: Answer,
        partial: Partial | None,
        held: Held | None,
    ) -> Result:
        """What upstream's `answer` comes to for the caller."""
        if answer is Answer.NOT_MODIFIED and entry is not None:
            resp.release()
            return await self._revalidated(entry)
        if answer.broken:
            resp.close()  # never reuse a connection that answered what was not asked
            return UpstreamFailure(502, f"{resp.url}: {answer.value}")
        if answer is Answer.ENCODED:
            # bytes under an encoding we did not ask for: not the file, pass them on as sent
            encoding = content_encoding(resp)
            self._note(
                "encoded", "upstream %s: Content-Encoding %s; not caching", resp.url, encoding
            )
            return self._pass(resp, fetch.expect, "encoded")
        if answer is Answer.UNVERIFIABLE:
            # the connection's end is the body's end: a cut looks complete; nothing to check
            log.info("upstream %s: no Content-Length, nothing to check it by: not cached", resp.url)
            return self._pass(resp, fetch.expect, "unverifiable")
        return await self._download(fetch, resp, held, resume=partial)

    async def _parked(self, fetch: Fetch) -> Partial | None:
        """A transfer of this very file parked earlier; one after other bytes is dropped."""
        algorithms = [fetch.expect.algorithm] if fetch.expect.algorithm else []
        partial = await self.disk.io(self.store.resume_partial, fetch.key, algorithms)
        if partial is not None and not same_target(partial[1], fetch.expect):
            await self.disk.io(self.store.discard, partial[0])
            return None
        return partial

    def _failed(self, fetch: Fetch, entry: Entry | None, failure: UpstreamFailure) -> Result:
        decision = self.disk.policy.decide(entry and entry.meta, fetch.freshness, failure)
        if entry is not None and decision is Decision.STALE:
            log.warning("offline: serving cached %s (%s)", fetch.key, failure.reason)
            return Hit(entry, CacheStatus.STALE, warning=failure.reason)
        return failure

    async def _revalidated(self, entry: Entry) -> Hit:
        entry.meta.checked = self.disk.policy.clock()
        try:
            await self.disk.io(self.store.update_meta, entry)
        except OSError as exc:  # a full disk: the copy is still valid, serve it
            log.warning("cache: cannot record the revalidation of %s: %s", entry.key, exc)
        self.disk.revalidated(entry)
        return Hit(entry, CacheStatus.REVALIDATED)

    def _pass(self, resp: aiohttp.ClientResponse, expect: Expect, reason: str) -> PassThrough:
        self.passed[reason] += 1
        return PassThrough(resp, expect, reason, self.limits)

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
            await self.disk.io(self.store.keep_partial, temp, info)
        except OSError as exc:
            log.warning("cache: cannot keep the partial %s: %s", temp.key, exc)
            await self.disk.io(self.store.discard, temp)

    async def _download(
        self,
        fetch: Fetch,
        resp: aiohttp.ClientResponse,
        held: Held | None,
        resume: Partial | None = None,
    ) -> Result:
        """Start the download clients join (`Miss`); passed through if it cannot be stored."""
        try:
            if resume is not None:
                temp = resume[0]  # its digests already hold the parked bytes
            else:
                temp = await self.disk.new_temp(
                    fetch.key, resp.content_length or fetch.expect.size or 0
                )
            try:
                reader = await self.disk.io(self.store.open_temp, temp)
            except OSError:
                await self.disk.io(self.store.discard, temp)
                raise
        except OSError as exc:
            why = (
                exc
                if isinstance(exc, Unstorable)
                else Unstorable(fetch.key, "store-error", str(exc))
            )
            self._note(why.reason, "cache: %s; passing it through", why)
            return self._pass(resp, fetch.expect, why.reason)
        shared = held is not None and held.shares
        clock = self.disk.policy.clock
        download = Download(
            fetch, temp, reader, resp, shared=shared, limits=self.limits, clock=clock
        )
        download.on_commit = self._learn
        self.flights.downloading(download)
        self.flights.spawn(self._run(download, held))
        return Miss(download)

    def _learn(self, entry: Entry) -> None:
        """A committed file, to the rules (an index's listing is read from it)."""
        for rules in self.rules:
            try:
                rules.committed(entry)
            except Exception as exc:
                log.warning("cache: index update for %s failed: %s", entry.key, exc)

    async def _run(self, download: Download, held: Held | None) -> None:
        """The download to its end (clients read it meanwhile), the file shared with the
        other units under the fleet's lease, the lease let go; then the bookkeeping."""
        in_store = False  # a copy in a shared store: this disk's may go even if kept
        async with held or contextlib.nullcontext():  # let go once the flight has ended
            try:
                await download.run(self.store)  # verified and committed: clients done
                if held is not None and download.entry is not None:
                    in_store = await held.share(download.entry)
            finally:
                self.flights.ended(download)
                self.disk.hot.drop(download.key)
        if download.integrity_error:
            self.rejected(download.url, time.monotonic() - download.started)
        if download.state is Phase.DONE and not download.stored:
            self.passed["disk-full"] += 1
        if download.state is Phase.DONE and download.entry is not None:
            self.disk.entered(download.entry, in_store)
            await self.disk.make_room()
