"""The cache's maintenance runs: verify (re-read every entry against its digest and the
indexes) and expiry (remove pool/by-hash files no cached index lists any more).

One run at a time, whoever asks (the admin API, the periodic expiry, the command line on
a cache no service holds): both walk the whole store and may remove through the engine.
The last run's summary is kept for the status page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from appliance.apt import expire
from appliance.apt.catalog import IndexCatalog
from appliance.cache import verify
from appliance.cache.engine import CacheEngine
from appliance.config import CacheConfig

log = logging.getLogger(__name__)

FIRST_EXPIRY = 3600.0  # seconds after start at most before the first periodic expiry


class Maintenance:
    """Verify and expiry runs on one engine and its apt index table."""

    def __init__(self, engine: CacheEngine, catalog: IndexCatalog) -> None:
        self.engine = engine
        self.catalog = catalog
        self._lock = asyncio.Lock()
        self.last_verify: dict[str, Any] | None = None  # the last run, without its list
        self.last_expiry: dict[str, Any] | None = None

    def busy(self) -> bool:
        return self._lock.locked()

    async def verify(self, fix: bool, progress: verify.Progress | None = None) -> dict[str, Any]:
        """Re-read every entry; with `fix`, remove those that are wrong."""
        async with self._lock:
            report = await verify.verify(self.engine, self.catalog.lookup, fix, progress)
        result = {"at": time.time(), **report.as_dict()}
        self.last_verify = {k: v for k, v in result.items() if k != "problems"}
        return result

    async def expire(self, grace: float, dry_run: bool) -> dict[str, Any]:
        """Remove (or list) pool/by-hash files no cached index has listed for `grace`
        seconds."""
        async with self._lock:
            report = await expire.expire(self.engine, self.catalog, grace, dry_run)
        result = {"at": time.time(), **vars(report)}
        self.last_expiry = {k: v for k, v in result.items() if k != "removed"}
        return result

    async def expire_periodically(self, settings: Callable[[], CacheConfig]) -> None:
        """Expire every `cache.expire_interval` (read at each turn: a reload changes it)."""
        await asyncio.sleep(min(FIRST_EXPIRY, settings().expire_interval))
        while True:
            try:
                await self.expire(settings().expire_after, dry_run=False)
            except Exception as exc:  # disk trouble or a damaged table: next time
                log.warning("expiry failed: %s", exc)
            await asyncio.sleep(settings().expire_interval)

    async def rebuild_catalog(self, cached: list[str]) -> None:
        """Learn the cached indexes the table does not know (a new or lost table)."""
        try:
            n = await self.catalog.rebuild(cached)
            log.info("apt indexes: %d cached index files checked", n)
        except Exception as exc:  # the table is rebuilt at the next start; serving goes on
            log.warning("apt indexes: cannot read the cached indexes: %s", exc)
