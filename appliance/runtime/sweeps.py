"""The start-up sweeps of the cache directory, for the master of several workers: apart
from the rest of the composition root so that the master, which serves nothing, imports
neither aiohttp nor the engine (`runtime` gives its names on first use)."""

from __future__ import annotations

from appliance.cache.stores import sweep, sweep_dead
from appliance.config import Config


def sweep_dead_worker(config: Config, pid: int) -> int:
    """The temp files a dead worker left (the master, when it starts it again)."""
    return sweep_dead(config.cache, pid)


def sweep_cache(config: Config) -> int:
    """The start-up sweep of this unit's disk, for the master of several workers (they
    only index it); the entries found."""
    return sweep(config.cache)
