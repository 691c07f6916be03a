"""One exclusive lock per kind of job, across processes (`flock` on its file among the
cache directory's state, `StateDir.job_lock`): the service and `archive-local sync` never
write the same feed at once."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

from appliance.cache.statedir import StateDir

SYNC = "sync"  # syncs and publishes: they write feeds and the curated feed
SEED = "seed"  # seeding: two runs never race on one cloud


class Busy(RuntimeError):
    """Another process (or task) holds the lock and the caller chose not to wait."""


@contextlib.asynccontextmanager
async def exclusive(cache_dir: Path, job: str, wait: bool = True) -> AsyncIterator[None]:
    """Hold the lock of `job` (`SYNC`, `SEED`) on `cache_dir`; `wait=False` raises Busy
    instead of queueing."""
    path = StateDir(cache_dir).job_lock(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            await asyncio.to_thread(fcntl.flock, fd, flags)
        except BlockingIOError:
            raise Busy(f"another process holds {path}") from None
        yield
    finally:
        os.close(fd)  # releases the lock
