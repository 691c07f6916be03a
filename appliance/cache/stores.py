"""Which `Store` backs the cache: the one place that chooses."""

from __future__ import annotations

import logging

from appliance.cache.fleetkey import FleetKey
from appliance.cache.objectstore import Bucket, ObjectStore, read_credentials, s3_client
from appliance.cache.store import FilesystemStore, Store
from appliance.config import CacheConfig, ConfigError

log = logging.getLogger(__name__)


def open_store(cache: CacheConfig, worker: int | None = None) -> Store:
    """The directory tree at `cache.dir`, alone or (with `cache.store`) as the read cache
    in front of a shared object store. An unreachable store is not fatal: the unit starts
    and serves from its disk and upstream until the store answers.

    `worker`: this process's index among `workers: N`; its fetch locks name it, so a
    sibling waiting for one of its downloads can stream it. The store's leases name the
    unit's `peer_url`, for the same reason across units."""
    local = FilesystemStore(cache.dir)
    if worker is not None:
        local.holder = f"worker-{worker}"
    if cache.store is None:
        return local
    s = cache.store
    try:
        credentials = read_credentials(s.credentials_file)
    except ValueError as exc:
        raise ConfigError(f"cache.store.credentials_file: {exc}") from None
    fleet_key = None
    if s.fleet_key_file is not None:
        try:
            fleet_key = FleetKey.read(s.fleet_key_file)
        except ValueError as exc:
            raise ConfigError(f"cache.store.fleet_key_file: {exc}") from None
    bucket = Bucket(s3_client(s.endpoint, s.region, credentials), s.bucket, s.prefix)
    store = ObjectStore(local, bucket, lease_ttl=s.lease, fleet_key=fleet_key)
    if s.peer_url:
        store.unit += f"@{s.peer_url}"
    store.connect()
    return store


def sweep(cache: CacheConfig) -> int:
    """The start-up sweep of this unit's disk (what a crashed run left), before worker
    processes start: they only index it, since a sibling may be writing. Entries found."""
    return sum(1 for _entry in FilesystemStore(cache.dir).scan())


def sweep_dead(cache: CacheConfig, pid: int) -> int:
    """What a dead worker left on this unit's disk (its temp files): removed."""
    return FilesystemStore(cache.dir).sweep_dead(pid)
