"""One upstream download shared by every client that wants the file meanwhile.

The first request starts it; every client (including late joiners) reads the
growing temp file through one shared read-only descriptor with explicit offsets,
so bytes reach clients as they arrive and nothing is buffered in memory. Only a
complete download whose size (and digest, when known) checks out is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from enum import Enum
from typing import BinaryIO

import aiohttp

from appliance.cache.store import Entry, Meta, Store, TempFile

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


class State(Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DownloadFailed(Exception):
    """The upstream transfer did not produce a complete, verified file."""


class Download:
    def __init__(
        self,
        key: str,
        temp: TempFile,
        reader: BinaryIO,
        response: aiohttp.ClientResponse,
        expected_sha256: str | None = None,
    ) -> None:
        self.key = key
        self.url = str(response.url)
        self.total: int | None = response.content_length
        self.etag = response.headers.get("ETag")
        self.last_modified = response.headers.get("Last-Modified")
        self.content_type = response.headers.get("Content-Type")
        self.written = 0
        self.state = State.RUNNING
        self.entry: Entry | None = None
        self.error: str | None = None
        self.started = time.monotonic()
        self._temp = temp
        self._reader = reader
        self._readers = 0
        self._expected_sha256 = expected_sha256
        self._changed = asyncio.Event()

    # --- readers -----------------------------------------------------------------
    def attach(self) -> BinaryIO:
        """A file object for explicit-offset reads; pair with `detach()`."""
        self._readers += 1
        return self._reader

    def detach(self) -> None:
        self._readers -= 1
        self._maybe_close()

    async def wait_beyond(self, pos: int) -> None:
        """Return once more than `pos` bytes are written or the download ended."""
        while self.state is State.RUNNING and self.written <= pos:
            await self._changed.wait()

    async def finished(self) -> None:
        while self.state is State.RUNNING:
            await self._changed.wait()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _maybe_close(self) -> None:
        if self.state is not State.RUNNING and self._readers <= 0 and not self._reader.closed:
            self._reader.close()

    # --- writer ------------------------------------------------------------------
    async def run(self, response: aiohttp.ClientResponse, store: Store) -> None:
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        fd = self._temp.fd
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                await loop.run_in_executor(None, _write_and_hash, fd, chunk, digest)
                self.written += len(chunk)
                self._notify()
            if self.total is not None and self.written != self.total:
                raise DownloadFailed(f"short body: {self.written} of {self.total} bytes")
            sha256 = digest.hexdigest()
            if self._expected_sha256 and sha256 != self._expected_sha256:
                raise DownloadFailed(f"sha256 mismatch: got {sha256}")
            now = time.time()
            meta = Meta(
                url=self.url,
                size=self.written,
                fetched=now,
                checked=now,
                etag=self.etag,
                last_modified=self.last_modified,
                content_type=self.content_type,
                sha256=sha256,
            )
            self.entry = await loop.run_in_executor(None, store.commit, self._temp, meta)
            self.total = self.written
            self.state = State.DONE
        except BaseException as exc:
            self.state = State.FAILED
            self.error = str(exc) or type(exc).__name__
            log.warning("download of %s failed: %s", self.url, self.error)
            store.discard(self._temp)
            if not isinstance(exc, Exception):
                raise
        finally:
            response.release()
            self._notify()
            self._maybe_close()


def _write_and_hash(fd: int, data: bytes, digest: hashlib._Hash) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    digest.update(data)
