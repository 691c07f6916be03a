"""Every Prometheus metric family the service exposes, declared once, by its whole name.

A family's name is written out as `/metrics` spells it in its HELP and TYPE lines (a
counter's ends in `_total`), so grepping for a name the docs, an alert rule or a dashboard
uses finds its one declaration. The hot path (`metrics.Metrics`), the scrape
(`web.status.scrape`) and the sum over the workers (`web.workers.merge_metrics`) all read
their names, help, labels and types from here; a test checks that a running service
exposes nothing else and that every name the docs query is declared.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "archive_local_"  # every family's


@dataclass(frozen=True)
class Family:
    """One metric family. `summed`: a gauge the workers' values add up to (downloads in
    flight); every other gauge is the same cache seen by each worker, so the largest is
    the service's. `created`: prometheus_client's own Counter or Histogram, which also
    writes a `<name>_created` gauge of when each series started."""

    name: str
    type: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    summed: bool = False
    created: bool = False

    @property
    def base(self) -> str:
        """The name without a counter's `_total` (what prometheus_client's parser calls it)."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    def exposed(self) -> Iterator[str]:
        """The names its HELP and TYPE lines carry on `/metrics`."""
        yield self.name
        if self.created:
            yield f"{self.base}_created"

    def new(self) -> CounterMetricFamily | GaugeMetricFamily:
        """An empty family to add this scrape's samples to."""
        if self.type == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        if self.type == "gauge":
            return GaugeMetricFamily(self.name, self.help, labels=self.labels)
        raise TypeError(f"{self.name}: a {self.type} is not made at scrape time")


# -- counted on the hot path (metrics.Metrics) -----------------------------------------------
REQUESTS = Family(
    "archive_local_requests_total",
    "counter",
    "Client requests by service and result",
    ("service", "result"),
)
SERVED_BYTES = Family(
    "archive_local_served_bytes_total",
    "counter",
    "Body bytes sent to clients, by where they came from",
    ("source",),
)
UPSTREAM_SECONDS = Family(
    "archive_local_upstream_request_duration_seconds",
    "histogram",
    "Time to the response headers of an upstream request",
    ("upstream",),
    created=True,
)
UPSTREAM_ERRORS = Family(
    "archive_local_upstream_errors_total",
    "counter",
    "Failed upstream requests by upstream and reason",
    ("upstream", "reason"),
    created=True,
)

# -- the cache, read at scrape time (web.status.scrape) --------------------------------------
CACHE_SIZE = Family("archive_local_cache_size_bytes", "gauge", "Bytes of evictable cached files")
CACHE_ENTRIES = Family("archive_local_cache_entries", "gauge", "Evictable cached files")
CACHE_MAX_SIZE = Family("archive_local_cache_max_size_bytes", "gauge", "Configured cache.max_size")
CACHE_EVICTIONS = Family(
    "archive_local_cache_evictions_total", "counter", "Files evicted to stay under cache.max_size"
)
DOWNLOADS_IN_FLIGHT = Family(
    "archive_local_downloads_in_flight", "gauge", "Upstream downloads in progress", summed=True
)
DOWNLOAD_CLIENTS = Family(
    "archive_local_download_clients",
    "gauge",
    "Clients streaming a download in progress",
    summed=True,
)
PEER_STREAMS = Family(
    "archive_local_peer_streams_total",
    "counter",
    "Answers streamed from the download of the worker or unit holding the fetch lease",
)
SHARED_STORE_UP = Family(
    "archive_local_shared_store_up", "gauge", "1 while the shared object store answers, else 0"
)
SHARED_STORE_OPERATIONS = Family(
    "archive_local_shared_store_operations_total",
    "counter",
    "What the shared object store did for this unit (hit: copied to disk)",
    ("result",),
)
SHARED_STORE_PENDING = Family(
    "archive_local_shared_store_pending_uploads", "gauge", "Shared entries not uploaded yet"
)

# -- integrity and refusals ------------------------------------------------------------------
REJECTED_DOWNLOADS = Family(
    "archive_local_integrity_rejected_downloads_total",
    "counter",
    "Upstream answers refused for a wrong size or digest (never cached, never completed)",
)
NOT_STORED = Family(
    "archive_local_not_stored_responses_total",
    "counter",
    "Upstream answers passed to a client without storing",
    ("reason",),
)
CONNECTIONS_REFUSED = Family(
    "archive_local_connections_refused_total",
    "counter",
    "Connections turned away (limits.connections_per_client, TLS handshake caps)",
)
APT_INDEX_FILES = Family(
    "archive_local_apt_index_files", "gauge", "Files listed by the cached apt indexes"
)
FLEET_REFUSED = Family(
    "archive_local_fleet_refused_total",
    "counter",
    "What crossing the unit's boundary was refused: bucket objects it cannot tie to "
    "upstream, peers' streams that are not the file, leases no longer its own",
    ("source", "reason"),
)

# -- jobs: syncs per feed, seeds per target --------------------------------------------------
SYNC_RUNS = Family("archive_local_sync_runs_total", "counter", "Sync runs", ("feed",))
SYNC_FAILURES = Family(
    "archive_local_sync_failures_total", "counter", "Sync runs that failed", ("feed",)
)
SYNC_DURATION = Family(
    "archive_local_sync_duration_seconds", "gauge", "Duration of the last sync", ("feed",)
)
SYNC_LAST_SUCCESS = Family(
    "archive_local_sync_last_success_timestamp_seconds",
    "gauge",
    "When a sync last succeeded",
    ("feed",),
)
SEED_RUNS = Family("archive_local_seed_runs_total", "counter", "Seed runs", ("target",))
SEED_FAILURES = Family(
    "archive_local_seed_failures_total", "counter", "Seed runs that failed", ("target",)
)
SEED_DURATION = Family(
    "archive_local_seed_duration_seconds", "gauge", "Duration of the last seed", ("target",)
)
SEED_LAST_SUCCESS = Family(
    "archive_local_seed_last_success_timestamp_seconds",
    "gauge",
    "When a seed last succeeded",
    ("target",),
)
IMAGES_MIRRORED = Family(
    "archive_local_images_mirrored",
    "gauge",
    "Image items kept on disk by the last sync",
    ("feed",),
)
IMAGES_SEEDED = Family(
    "archive_local_images_seeded",
    "gauge",
    "Images present in a target after its last seed",
    ("target",),
)

FAMILIES = (
    REQUESTS,
    SERVED_BYTES,
    UPSTREAM_SECONDS,
    UPSTREAM_ERRORS,
    CACHE_SIZE,
    CACHE_ENTRIES,
    CACHE_MAX_SIZE,
    CACHE_EVICTIONS,
    DOWNLOADS_IN_FLIGHT,
    DOWNLOAD_CLIENTS,
    PEER_STREAMS,
    SHARED_STORE_UP,
    SHARED_STORE_OPERATIONS,
    SHARED_STORE_PENDING,
    REJECTED_DOWNLOADS,
    NOT_STORED,
    CONNECTIONS_REFUSED,
    APT_INDEX_FILES,
    FLEET_REFUSED,
    SYNC_RUNS,
    SYNC_FAILURES,
    SYNC_DURATION,
    SYNC_LAST_SUCCESS,
    SEED_RUNS,
    SEED_FAILURES,
    SEED_DURATION,
    SEED_LAST_SUCCESS,
    IMAGES_MIRRORED,
    IMAGES_SEEDED,
)
BY_NAME = {f.name: f for f in FAMILIES}
SUMMED = frozenset(f.name for f in FAMILIES if f.summed)  # gauges the workers add up


def declared(series: str) -> Family | None:
    """The family a series name belongs to (a histogram's `_bucket`, `_count`, `_sum`, a
    `_created` gauge); None when nothing here declares it."""
    if series in BY_NAME:
        return BY_NAME[series]
    for f in FAMILIES:
        suffixes = ("_bucket", "_count", "_sum") if f.type == "histogram" else ()
        if any(series == f.name + s for s in suffixes) or (
            f.created and series == f"{f.base}_created"
        ):
            return f
    return None
