"""Expiry of what no index references: apt-cacher-ng's maintenance job, in the service.

A pool or by-hash file that no cached Packages/Sources/Release has listed for
`cache.expire_after` (default 3 days) is removed: a superseded package version, an
old by-hash index. Kept entries (mirrored images) are never touched, nor are the files
of a repository none of whose indexes is cached (nothing to judge them by).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from appliance.apt.catalog import ExpiryReport, IndexCatalog

log = logging.getLogger(__name__)


async def expire(
    engine: Any, catalog: IndexCatalog, grace: float, dry_run: bool = False
) -> ExpiryReport:
    """One expiry run: decide in a worker thread, remove through the engine."""
    started = time.monotonic()
    store = engine.store

    def plan() -> tuple[ExpiryReport, list[Any]]:
        if not dry_run:
            catalog.forget_missing(lambda key: store.held(key) is not None)
        return catalog.expire_plan(store.entries(), time.time(), grace, dry_run)

    report, victims = await asyncio.to_thread(plan)
    if not dry_run:
        for entry in victims:
            if not engine.downloading_key(entry.key):
                await engine.evict(entry.key)  # unused here; a shared store keeps its copy
    report.seconds = round(time.monotonic() - started, 2)
    verb = "would remove" if dry_run else "removed"
    log.info(
        "expiry: %s %d unreferenced files (%.1f MiB); %d referenced, %d unreferenced for "
        "less than %s, %d of repositories without a cached index",
        verb,
        report.expired,
        report.expired_bytes / 2**20,
        report.referenced,
        report.waiting,
        _duration(grace),
        report.unindexed,
    )
    return report


def _duration(seconds: float) -> str:
    return f"{seconds / 86400:g} d" if seconds >= 86400 else f"{seconds:g} s"
