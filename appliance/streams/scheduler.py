"""Syncs run by the service: every `images.sync_interval`, and on demand.

One sync at a time, also across processes: an exclusive `flock` on
`<cache.dir>/.sync.lock` serialises the service and `archive-local sync`. The last
outcome of each feed is kept for the status page and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher
from appliance.config import Config, FeedConfig
from appliance.streams.curated import curated_key, publish_curated
from appliance.streams.gpg import SignatureError, Signer, Verifier
from appliance.streams.sync import FeedMirror, FeedOutcome, Report

log = logging.getLogger(__name__)

LOCK_NAME = ".sync.lock"


class SyncBusy(RuntimeError):
    """Another sync holds the lock."""


@contextlib.asynccontextmanager
async def sync_lock(
    cache_dir: Path, wait: bool = True, name: str = LOCK_NAME
) -> AsyncIterator[None]:
    """Exclusive across processes; `wait=False` raises SyncBusy instead of queueing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            await asyncio.to_thread(fcntl.flock, fd, flags)
        except BlockingIOError:
            raise SyncBusy(f"another process holds {name}") from None
        yield
    finally:
        os.close(fd)  # releases the lock


async def sync_feeds(
    config: Config,
    engine: CacheEngine,
    fetcher: Fetcher,
    report: Report | None = None,
    dry_run: bool = False,
    feeds: Sequence[FeedConfig] | None = None,
) -> list[FeedOutcome]:
    """Sync `feeds` (default: every configured feed), then rebuild the curated feed."""
    feeds = config.images.feeds if feeds is None else feeds
    outcomes: list[FeedOutcome] = []
    for feed in feeds:
        try:
            verifier = Verifier(feed.keyring) if feed.keyring else None
        except SignatureError as exc:
            outcomes.append(FeedOutcome(feed.name, feed.url, ok=False, error=str(exc)))
            if report:
                report("error", outcomes[-1])
            continue
        try:
            mirror = FeedMirror(engine, fetcher, feed, verifier, report)
            outcomes.append(await mirror.sync(dry_run=dry_run))
        finally:
            if verifier:
                verifier.close()
    changed = any(i.status in ("fetched", "removed") for o in outcomes for i in o.items)
    missing = await engine.lookup(curated_key("streams/v1/index.sjson")) is None
    if not dry_run and (changed or (missing and any(o.ok for o in outcomes))):
        try:
            await publish_curated(engine, Signer(config.images.gnupg_home))
        except (OSError, SignatureError) as exc:
            outcomes.append(
                FeedOutcome(
                    "(curated feed)",
                    "/streams/v1/",
                    ok=False,
                    error=f"cannot publish the curated feed: {exc}",
                )
            )
    return outcomes


class Scheduler:
    """The service's periodic and on-demand syncs."""

    def __init__(self, config: Config, engine: CacheEngine, fetcher: Fetcher) -> None:
        self.config = config
        self.engine = engine
        self.fetcher = fetcher
        self.last: dict[str, FeedOutcome] = {}
        self.last_run: float | None = None
        self.running = False
        self.seed_last: dict[str, Any] = {}  # target name -> TargetOutcome
        # name -> {runs, failures, seconds, last_success}: what the metrics export
        self.sync_stats: dict[str, dict[str, Any]] = {}
        self.seed_stats: dict[str, dict[str, Any]] = {}
        self.seeding = False
        self._seed_task: asyncio.Task[Any] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.config.images.feeds:
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        for task in (self._task, self._seed_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def trigger_seed(self) -> bool:
        """Seed every target now (the admin endpoint); False if a seed is running."""
        if self.seeding:
            return False
        self._seed_task = asyncio.create_task(self.run_seed())
        return True

    async def run_seed(self) -> list[Any]:
        from appliance.targets.run import seed_targets

        self.seeding = True
        try:
            outcomes = await seed_targets(self.config, self.engine)
        except Exception:  # a scheduled job must outlive any one failure
            log.exception("seeding failed")
            return []
        finally:
            self.seeding = False
        for o in outcomes:
            self.seed_last[o.target] = o
            _count(self.seed_stats, o.target, o.ok, o.seconds)
        return outcomes

    def trigger(self) -> None:
        """Run a sync now (the admin endpoint); a running one is not interrupted."""
        self._wake.set()

    async def run_once(self, wait: bool = True) -> list[FeedOutcome]:
        async with sync_lock(self.config.cache.dir, wait=wait):
            self.running = True
            try:
                outcomes = await sync_feeds(self.config, self.engine, self.fetcher)
            finally:
                self.running = False
        self.last_run = time.time()
        for o in outcomes:
            self.last[o.feed] = o
            _count(self.sync_stats, o.feed, o.ok, o.seconds)
            log.log(
                logging.INFO if o.ok else logging.WARNING,
                "sync %s: fetched %d, present %d, rejected %d, removed %d%s",
                o.feed,
                o.count("fetched"),
                o.count("present"),
                o.count("failed"),
                o.count("removed"),
                "" if o.ok else f" ({o.error})",
            )
        seed = self.config.seed
        if seed.after_sync and seed.targets and any(o.ok for o in outcomes):
            await self.run_seed()
        return outcomes

    async def _loop(self) -> None:
        interval = self.config.images.sync_interval
        while True:
            try:
                await self.run_once()
            except Exception:  # a scheduled job must outlive any one failure
                log.exception("scheduled sync failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)


def _count(stats: dict[str, dict[str, Any]], name: str, ok: bool, seconds: float) -> None:
    s = stats.setdefault(name, {"runs": 0, "failures": 0, "seconds": 0.0, "last_success": None})
    s["runs"] += 1
    s["failures"] += 0 if ok else 1
    s["seconds"] = seconds
    if ok:
        s["last_success"] = time.time()
