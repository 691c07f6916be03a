"""The metrics read at scrape time from a `Source`: the cache, integrity and refusals,
and the jobs. Every family is declared in `appliance.families`; this fills them in."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import Metric

from appliance import families as F
from appliance.cache.engine import Figures
from appliance.cache.refusals import REASONS, SOURCES
from appliance.streams.sync import ItemStatus
from appliance.web.status.snapshot import SHARED_OPERATIONS
from appliance.web.status.sources import Jobs, Source

NOT_STORED_REASONS = ("disk-full", "conflict", "store-error", "unverifiable", "encoded")
SHARED_RESULTS = ("hit", "miss", "upload", "error", "corrupt")  # SHARED_OPERATIONS' labels
RunFamilies = tuple[F.Family, F.Family, F.Family, F.Family]  # runs, failures, took, success
SYNCS: RunFamilies = (F.SYNC_RUNS, F.SYNC_FAILURES, F.SYNC_DURATION, F.SYNC_LAST_SUCCESS)
SEEDS: RunFamilies = (F.SEED_RUNS, F.SEED_FAILURES, F.SEED_DURATION, F.SEED_LAST_SUCCESS)


def scrape(source: Source) -> Iterator[Metric]:
    """Every scrape-time family, in the order `/metrics` has always listed them."""
    cache, jobs = source.cache_figures(), source.jobs
    yield from _cache(cache)
    if cache.shared_store is not None:
        yield from _shared(cache.shared_store)
    yield from _integrity(cache, source.integrity())
    yield _fleet(cache.refused or {})
    yield from _runs(SYNCS, jobs.sync_stats)
    yield from _runs(SEEDS, jobs.seed_stats)
    yield from _images(jobs)


def _one(family: F.Family, value: float) -> Metric:
    """A family of one unlabelled sample."""
    metric = family.new()
    metric.add_metric([], value)
    return metric


def _cache(cache: Figures) -> Iterator[Metric]:
    flights = cache.downloads
    yield _one(F.CACHE_SIZE, cache.bytes)
    yield _one(F.CACHE_ENTRIES, cache.entries)
    yield _one(F.CACHE_MAX_SIZE, cache.max_bytes)
    yield _one(F.CACHE_EVICTIONS, cache.evictions)
    yield _one(F.DOWNLOADS_IN_FLIGHT, len(flights))
    yield _one(F.DOWNLOAD_CLIENTS, sum(int(f["clients"]) for f in flights))  # type: ignore[call-overload]
    yield _one(F.PEER_STREAMS, cache.from_peers)


def _shared(shared: Mapping[str, Any]) -> Iterator[Metric]:
    yield _one(F.SHARED_STORE_UP, 1 if shared["up"] else 0)
    ops = F.SHARED_STORE_OPERATIONS.new()
    for count, label in zip(SHARED_OPERATIONS, SHARED_RESULTS, strict=True):
        ops.add_metric([label], shared[count])
    yield ops
    yield _one(F.SHARED_STORE_PENDING, shared["pending_uploads"])


def _integrity(cache: Figures, extra: Mapping[str, Any]) -> Iterator[Metric]:
    yield _one(F.REJECTED_DOWNLOADS, cache.rejected)
    passed = F.NOT_STORED.new()
    for reason in NOT_STORED_REASONS:
        passed.add_metric([reason], cache.not_stored.get(reason, 0))
    yield passed
    yield _one(F.CONNECTIONS_REFUSED, extra["connections_refused"])
    yield _one(F.APT_INDEX_FILES, extra["apt_indexes"]["files"])


def _fleet(counts: Mapping[str, int]) -> Metric:
    """Every reason of the bucket (the boundary a unit always has), the others' once seen."""
    fleet = F.FLEET_REFUSED.new()
    for source in SOURCES:
        for reason in REASONS:
            if (n := counts.get(f"{source}/{reason}")) is not None or source == "bucket":
                fleet.add_metric([source, reason], n or 0)
    return fleet


def _runs(kinds: RunFamilies, stats: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """A kind of job's runs, failures, last duration and last success, by feed or target."""
    runs, failures, duration, success = (f.new() for f in kinds)
    for name, s in sorted(stats.items()):
        runs.add_metric([name], s["runs"])
        failures.add_metric([name], s["failures"])
        duration.add_metric([name], s["seconds"])
        if s["last_success"] is not None:
            success.add_metric([name], s["last_success"])
    yield from (runs, failures, duration, success)


def _images(jobs: Jobs) -> Iterator[Metric]:
    mirrored = F.IMAGES_MIRRORED.new()
    for name, o in sorted(jobs.last.items()):
        mirrored.add_metric([name], o.count(ItemStatus.FETCHED) + o.count(ItemStatus.PRESENT))
    seeded = F.IMAGES_SEEDED.new()
    for name, o in sorted(jobs.seed_last.items()):
        seeded.add_metric([name], len(o.images))
    yield from (mirrored, seeded)
