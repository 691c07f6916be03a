"""Single flight: at most one upstream round-trip per key in this process.

`phase(key)` says where the round-trip is: REVALIDATING (a request is out; callers
share it), DOWNLOADING (callers join the download and read as it grows) or VERIFYING
(every byte arrived, being checked and committed); None when there is none. A download
that ended (DONE or FAILED, see `download.Phase`) has left the registry: the next
caller starts afresh.

The engine asks the registry, never two dictionaries of its own; the status page and
maintenance read the same phases. The work a flight leaves running after its answer (a
download to its commit and bookkeeping) is kept here too (`spawn`), so the engine can
wait for it (`idle`) or stop it (`cancel`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, Generic, TypeVar

from appliance.cache.download import Download, Phase

R = TypeVar("R")
T = TypeVar("T")


class Flights(Generic[R]):
    def __init__(self) -> None:
        self._requests: dict[str, asyncio.Task[R]] = {}
        self._downloads: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def phase(self, key: str) -> Phase | None:
        """Where the round-trip for `key` is; None when there is none."""
        download = self._downloads.get(key)
        if download is not None and download.active:
            return download.state
        if key in self._requests:
            return Phase.REVALIDATING
        return None

    def request(self, key: str) -> asyncio.Task[R] | None:
        """The request out for `key`, to share."""
        return self._requests.get(key)

    def ask(self, key: str, work: Coroutine[Any, Any, R]) -> asyncio.Task[R]:
        """Send the one request for `key`; it leaves the registry when it is answered."""
        task = asyncio.create_task(work)
        self._requests[key] = task
        task.add_done_callback(lambda _t: self._forget_request(key, task))
        return task

    def _forget_request(self, key: str, task: asyncio.Task[R]) -> None:
        if self._requests.get(key) is task:
            del self._requests[key]

    def joinable(self, key: str) -> Download | None:
        """The download in progress for `key`; one that ended is no longer joined."""
        download = self._downloads.get(key)
        return download if download is not None and download.active else None

    def downloading(self, download: Download) -> None:
        self._downloads[download.key] = download

    def ended(self, download: Download) -> None:
        if self._downloads.get(download.key) is download:  # not a newer one
            del self._downloads[download.key]

    def busy(self, key: str) -> bool:
        """Any round-trip for `key` at all (maintenance leaves such keys alone)."""
        return key in self._downloads or key in self._requests

    def downloads(self) -> Iterator[Download]:
        return iter(list(self._downloads.values()))

    def spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Work a flight leaves running after its answer (a download to its end), or
        that starts one ahead of its request (`CacheEngine.prefetch`)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def idle(self) -> None:
        """Until the work spawned so far (and any it spawned) has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
