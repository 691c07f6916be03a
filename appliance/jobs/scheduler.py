"""The service's jobs: a sync every `images.sync_interval` and on demand, a seed after a
sync that changed something and on demand. The last outcome of each feed and target is
kept for the status page and metrics; a job that crashes is recorded as a failure,
never lost.

The configuration in force is swapped whole by `apply` (reload): feeds added there are
synced at once, and a new interval counts from the last sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher
from appliance.config import Config
from appliance.jobs.lock import SYNC, exclusive
from appliance.jobs.seed import seed_targets
from appliance.jobs.sync import sync_feeds
from appliance.streams.sync import (
    FeedFailed,
    FeedOutcome,
    FeedPlanned,
    ItemDone,
    ItemStatus,
    SyncEvent,
)
from appliance.targets.seeder import TargetOutcome

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: Config, engine: CacheEngine, fetcher: Fetcher) -> None:
        self.config = config
        self.engine = engine
        self.fetcher = fetcher
        self.last: dict[str, FeedOutcome] = {}
        self.last_run: float | None = None
        self.running = False
        # the running sync's feed and how far it got (the status page, the charm's status)
        self.progress: dict[str, Any] | None = None
        self.seed_last: dict[str, TargetOutcome] = {}
        # name -> {runs, failures, seconds, last_success}: what the metrics export
        self.sync_stats: dict[str, dict[str, Any]] = {}
        self.seed_stats: dict[str, dict[str, Any]] = {}
        self.seeding = False
        self._seed_task: asyncio.Task[Any] | None = None
        self._wake = asyncio.Event()
        self._requested = True  # the first pass syncs (when there are feeds)
        self._last_end: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        for task in (self._task, self._seed_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def apply(self, config: Config) -> None:
        """Use a new configuration (reload): new feeds sync now, a new interval applies."""
        added = {f.name for f in config.images.feeds} - {f.name for f in self.config.images.feeds}
        self.config = config
        if added:
            log.info("sync: new feeds %s: syncing now", ", ".join(sorted(added)))
            self._requested = True
        self._wake.set()  # recompute the next run

    def trigger(self) -> bool:
        """Run a sync now (the admin endpoint); a running one is not interrupted."""
        self._requested = True
        self._wake.set()
        return bool(self.config.images.feeds)

    def trigger_seed(self) -> bool:
        """Seed every target now (the admin endpoint); False if a seed is running."""
        if self.seeding:
            return False
        self._seed_task = asyncio.create_task(self.run_seed())
        return True

    async def run_seed(self) -> list[TargetOutcome]:
        targets = self.config.seed.targets
        self.seeding = True
        try:
            outcomes = await seed_targets(self.config, self.engine)
        except Exception as exc:  # a scheduled job outlives any one failure, recorded
            log.exception("seeding failed")
            outcomes = [
                TargetOutcome(t.name, t.type, ok=False, error=f"seeding failed: {exc}")
                for t in targets
            ]
        finally:
            self.seeding = False
        for o in outcomes:
            o.finished = o.finished or time.time()
            self.seed_last[o.target] = o
            _count(self.seed_stats, o.target, o.ok, o.seconds)
        return outcomes

    async def run_once(self, wait: bool = True) -> list[FeedOutcome]:
        config = self.config
        started = time.monotonic()
        async with exclusive(config.cache.dir, SYNC, wait=wait):
            self.running = True
            try:
                outcomes = await sync_feeds(config, self.engine, self.fetcher, self._report)
            except Exception as exc:  # recorded per feed, so the status page says so
                log.exception("sync failed")
                seconds = time.monotonic() - started
                outcomes = [
                    FeedOutcome(
                        f.name, f.url, ok=False, error=f"sync failed: {exc}", seconds=seconds
                    )
                    for f in config.images.feeds
                ]
            finally:
                self.running = False
                self.progress = None
        self.last_run = time.time()
        for o in outcomes:
            self.last[o.feed] = o
            _count(self.sync_stats, o.feed, o.ok, o.seconds)
            level = logging.INFO if o.ok else logging.WARNING
            log.log(level, "sync %s: %s%s", o.feed, o.summary(), "" if o.ok else f" ({o.error})")
        seed = config.seed
        if seed.after_sync and seed.targets and any(o.ok for o in outcomes):
            await self.run_seed()
        return outcomes

    def _report(self, event: SyncEvent) -> None:
        """Keep the running feed's progress: items and bytes done of those planned."""
        if isinstance(event, FeedPlanned):
            self.progress = {
                "feed": event.feed,
                "items_done": 0,
                "items_total": event.items,
                "bytes_done": 0,
                "bytes_total": event.bytes,
            }
        elif isinstance(event, ItemDone) and self.progress is not None:
            if event.item.status in (ItemStatus.REMOVED, ItemStatus.WOULD_REMOVE):
                return  # pruned, not among the planned items
            self.progress["items_done"] += 1
            if event.item.status.held:
                self.progress["bytes_done"] += event.item.size
        elif isinstance(event, FeedFailed):
            self.progress = None

    @property
    def last_success(self) -> float | None:
        """When a feed last synced without failing (any feed)."""
        times = [s["last_success"] for s in self.sync_stats.values() if s["last_success"]]
        return max(times) if times else None

    def _next_wait(self) -> float | None:
        """Seconds until the next periodic sync; None (wait for a wake) without feeds."""
        if not self.config.images.feeds:
            return None
        if self._last_end is None:
            return 0.0
        due = self._last_end + self.config.images.sync_interval
        return max(0.0, due - time.monotonic())

    async def _loop(self) -> None:
        while True:
            if self._requested and self.config.images.feeds:
                self._requested = False
                try:
                    await self.run_once()
                except Exception:  # the lock itself failed (a cache dir gone): next time
                    log.exception("scheduled sync failed")
                self._last_end = time.monotonic()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._next_wait())
            except TimeoutError:
                self._requested = True


def _count(stats: dict[str, dict[str, Any]], name: str, ok: bool, seconds: float) -> None:
    s = stats.setdefault(name, {"runs": 0, "failures": 0, "seconds": 0.0, "last_success": None})
    s["runs"] += 1
    s["failures"] += 0 if ok else 1
    s["seconds"] = seconds
    if ok:
        s["last_success"] = time.time()
