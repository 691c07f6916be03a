"""One upstream download shared by every client that wants the file meanwhile.

The first request starts it; every client (including late joiners) reads the
growing temp file through one shared read-only descriptor with explicit offsets,
so bytes reach clients as they arrive and nothing is buffered in memory. Only a
complete download whose size (and digest, when known) checks out is committed.

The last byte is released to clients only after that check, so a download that
turns out wrong never reaches anyone as a complete response. A verified download
that the store cannot take (disk full) still completes for the clients reading it:
they read the unlinked temp file through the descriptor they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from enum import Enum
from typing import BinaryIO

import aiohttp

from appliance.cache.fetcher import TransferLimits, body_chunks, close_delimited
from appliance.cache.route import Fetch
from appliance.cache.store import Entry, Meta, Store, TempFile, header_value

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # bytes per worker-thread write+hash
PIPELINE = 4  # chunks received ahead of the disk writer


class Phase(Enum):
    """Where one upstream round-trip for a key is (`Flights.phase`), and so a download:

    REVALIDATING  a request is out (conditional when a copy exists); no body yet
    DOWNLOADING   the body streams into a temp file; readers join as it grows
    VERIFYING     every byte arrived; size and digest are checked, then committed
    DONE, FAILED  a download's end (it leaves the registry; the next caller starts afresh)
    """

    REVALIDATING = "revalidating"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"


class DownloadFailed(Exception):
    """The bytes are wrong (size or digest): never kept, not even to resume."""


class TransferBroken(Exception):
    """The transfer stopped early; what arrived so far may be resumed."""


class Download:
    def __init__(
        self,
        fetch: Fetch,
        temp: TempFile,
        reader: BinaryIO,
        response: aiohttp.ClientResponse,
        *,
        shared: bool = False,
        limits: TransferLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`shared`: fetched under the fleet's lease, for the other units too."""
        key, expect = fetch.key, fetch.expect
        self.key = key
        self.shared = shared
        self._response = response
        self.url = str(response.url)
        offset = temp.size  # a resumed download starts with the bytes it already has
        if response.content_length is not None:
            self.total: int | None = offset + response.content_length
        else:  # chunked or close-delimited: the index's size, when it gives one
            self.total = expect.size
        self.close_delimited = close_delimited(response)
        self._length_known = response.content_length is not None
        # labels for clients, kept only when they can be sent on as they are
        self.etag = header_value(response.headers.get("ETag"))
        self.last_modified = header_value(response.headers.get("Last-Modified"))
        self.content_type = header_value(response.headers.get("Content-Type"))
        self.written = offset
        self.state = Phase.DOWNLOADING
        self.entry: Entry | None = None
        self.stored = False  # committed to the store (else served from the temp file only)
        # told of the committed entry before a client gets the last byte (what an index
        # says the next files must be is then being learnt before they can be asked)
        self.on_commit: Callable[[Entry], None] | None = None
        self.error: str | None = None
        self.integrity_error = False  # the bytes were wrong, not just cut short
        self.started = time.monotonic()
        self._temp = temp
        self._reader = reader
        self._readers = 0
        self.expect = expect
        self.resumable = fetch.mirror  # keep a broken transfer's bytes for a Range request
        self.keep = fetch.keep  # committed as exempt from eviction (mirrored on purpose)
        self.limits = limits or TransferLimits()
        self.clock = clock
        if expect.algorithm and expect.algorithm not in temp.digests:
            if offset:  # the parked bytes were never hashed with it: cannot check them
                raise ValueError(f"{key}: resumed without a {expect.algorithm} of its bytes")
            temp.digests[expect.algorithm] = hashlib.new(expect.algorithm)
        self._digests = temp.digests  # the store's own count and hashes of what is written
        self._changed = asyncio.Event()

    # --- readers -----------------------------------------------------------------
    def attach(self) -> BinaryIO:
        """A file object for explicit-offset reads; pair with `detach()`."""
        self._readers += 1
        return self._reader

    @property
    def active(self) -> bool:
        """Still downloading or verifying: readers may join and must wait for the end."""
        return self.state in (Phase.DOWNLOADING, Phase.VERIFYING)

    @property
    def readers(self) -> int:
        return self._readers

    def detach(self) -> None:
        self._readers -= 1
        self._maybe_close()

    @property
    def releasable(self) -> int:
        """Bytes clients may be sent: the last one only after verification passed.

        Holding back one byte means a download whose size or digest turns out wrong
        can never reach a client as a complete response.
        """
        if self.state is Phase.DONE or self.total is None:
            return self.written
        return min(self.written, self.total - 1)

    async def wait_beyond(self, pos: int) -> None:
        """Return once more than `pos` bytes are releasable or the download ended."""
        while self.active and self.releasable <= pos:
            await self._changed.wait()

    async def finished(self) -> None:
        while self.active:
            await self._changed.wait()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _maybe_close(self) -> None:
        if not self.active and self._readers <= 0 and not self._reader.closed:
            self._reader.close()

    # --- writer ------------------------------------------------------------------
    async def run(self, store: Store) -> None:
        """Receive the body, check it, commit it to `store`; clients read meanwhile."""
        loop = asyncio.get_running_loop()
        response = self._response
        clean = False
        try:
            if None not in (response.content_length, self.expect.size) and (
                self.total != self.expect.size
            ):
                raise DownloadFailed(f"upstream size {self.total}, expected {self.expect.size}")
            await self._receive(response)
            clean = True  # the body's framing ended where it said it would
            self.state = Phase.VERIFYING
            meta = self._verified()
            try:
                self.entry = await loop.run_in_executor(None, store.commit, self._temp, meta)
                self.stored = True
                if self.on_commit is not None:  # before any client has the last byte
                    self.on_commit(self.entry)
            except OSError as exc:  # verified bytes, nowhere to keep them: serve, don't store
                log.warning("cache: not storing %s: %s", self.key, exc)
                self.stored = False
            self.total = self.written
            self.state = Phase.DONE
        except BaseException as exc:
            self.state = Phase.FAILED
            self.error = str(exc) or type(exc).__name__
            self.integrity_error = isinstance(exc, DownloadFailed)
            clean = False
            log.warning("download of %s failed: %s", self.url, self.error)
            await self._dispose(loop, store, keep_bytes=not isinstance(exc, DownloadFailed))
            if not isinstance(exc, Exception):
                raise
        finally:
            if clean:
                response.release()
            else:  # never reuse a connection whose exchange went wrong
                response.close()
            self._notify()
            self._maybe_close()

    def _verified(self) -> Meta:
        """The file's record, once every byte is here and size and digest match."""
        expect = self.expect
        if self.total is not None and self.written != self.total:
            if expect.size is not None:
                raise DownloadFailed(f"size {self.written}, expected {expect.size}")
            raise TransferBroken(f"short body: {self.written} of {self.total} bytes")
        found = {name: d.hexdigest() for name, d in self._digests.items()}
        if expect.algorithm and found[expect.algorithm] != (expect.digest or "").lower():
            raise DownloadFailed(
                f"{expect.algorithm} mismatch: got {found[expect.algorithm]}, "
                f"expected {expect.digest}" + (f" (from {expect.source})" if expect.source else "")
            )
        sha256 = found.pop("sha256")
        now = self.clock()
        return Meta(
            url=self.url,
            size=self.written,
            fetched=now,
            checked=now,
            etag=self.etag,
            last_modified=self.last_modified,
            content_type=self.content_type,
            sha256=sha256,
            digests=found or None,
            keep=self.keep,
            shared=self.shared,
        )

    async def _dispose(
        self, loop: asyncio.AbstractEventLoop, store: Store, keep_bytes: bool
    ) -> None:
        """Park a broken transfer's bytes for a Range request, or remove them."""
        try:
            if keep_bytes and self.resumable and self.written > 0:
                await loop.run_in_executor(
                    None, store.keep_partial, self._temp, self._partial_info()
                )
                return
        except OSError as exc:
            log.warning("cache: cannot keep the partial %s: %s", self.key, exc)
        await loop.run_in_executor(None, store.discard, self._temp)

    async def _receive(self, response: aiohttp.ClientResponse) -> None:
        """Socket -> bounded queue -> worker thread (write + hash), in order.

        Receiving goes on while the previous chunk is written and hashed, so one
        download is not slowed to the sum of network and disk latency; at most
        PIPELINE chunks wait in memory. A body longer than expected is cut there.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(PIPELINE)
        failure: list[BaseException] = []
        limit = None if self._length_known else self.total  # an index's size bounds the body

        async def writer() -> None:
            # after a failure keep draining, so the receiving side never blocks on put()
            while (chunk := await queue.get()) is not None:
                if failure:
                    continue
                try:
                    await loop.run_in_executor(None, self._temp.write, chunk)
                except Exception as exc:
                    failure.append(exc)
                    continue
                self.written += len(chunk)
                self._notify()

        task = asyncio.create_task(writer())
        received = self.written
        try:
            async for chunk in body_chunks(response, self.limits, CHUNK):
                if failure:
                    break
                received += len(chunk)
                if limit is not None and received > limit:
                    raise DownloadFailed(f"body longer than the expected {limit} bytes")
                await queue.put(chunk)
            await queue.put(None)
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if failure:
            raise failure[0]

    def _partial_info(self) -> dict[str, object]:
        return {
            "url": self.url,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "written": self.written,
            "size": self.expect.size,
            "algorithm": self.expect.algorithm,
            "digest": self.expect.digest,
        }
