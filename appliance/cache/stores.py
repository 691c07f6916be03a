"""Which `Store` backs the cache: the one place that chooses (an object store is next)."""

from __future__ import annotations

from appliance.cache.store import FilesystemStore, Store
from appliance.config import CacheConfig


def open_store(cache: CacheConfig) -> Store:
    """The store for `cache` (today: the directory tree at `cache.dir`)."""
    return FilesystemStore(cache.dir)
