"""Which `Store` backs the cache: the one place that chooses."""

from __future__ import annotations

import logging

from appliance.cache.objectstore import Bucket, ObjectStore, read_credentials, s3_client
from appliance.cache.store import FilesystemStore, Store
from appliance.config import CacheConfig, ConfigError

log = logging.getLogger(__name__)


def open_store(cache: CacheConfig) -> Store:
    """The directory tree at `cache.dir`, alone or (with `cache.store`) as the read cache
    in front of a shared object store. An unreachable store is not fatal: the unit starts
    and serves from its disk and upstream until the store answers."""
    local = FilesystemStore(cache.dir)
    if cache.store is None:
        return local
    s = cache.store
    try:
        credentials = read_credentials(s.credentials_file)
    except ValueError as exc:
        raise ConfigError(f"cache.store.credentials_file: {exc}") from None
    bucket = Bucket(s3_client(s.endpoint, s.region, credentials), s.bucket, s.prefix)
    store = ObjectStore(local, bucket, lease_ttl=s.lease)
    store.connect()
    return store
