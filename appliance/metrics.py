"""What the appliance counts: Prometheus metrics and the in-memory figures of the status page.

The hot path (one call per request, from the access logger) only increments
pre-bound counters and a few integers; everything derived (cache size, downloads in
flight, sync and seed results) is read when Prometheus scrapes. Label values are
bounded: services, results and sources are fixed sets, upstreams are configured
hosts, feeds and targets come from the configuration.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

SERVICES = ("apt", "images", "feed")
RESULTS = ("hit", "miss", "revalidated", "stale", "error", "refused")
PREFIX = "archive_local_"
HISTORY_STEP = 10.0  # seconds between two points of the status page's chart
HISTORY_POINTS = 360  # one hour
TOP_PACKAGES = 2000  # distinct .deb names tracked for "busiest packages"


@dataclass
class UpstreamHealth:
    requests: int = 0
    errors: int = 0
    last_ok: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_seconds: float | None = None


@dataclass
class Totals:
    """Cumulative figures since start (what the history samples)."""

    requests: dict[str, dict[str, int]] = field(
        default_factory=lambda: {s: dict.fromkeys(RESULTS, 0) for s in SERVICES}
    )
    bytes_cache: int = 0
    bytes_upstream: int = 0


class Metrics:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=True)
        self.totals = Totals()
        self.upstreams: dict[str, UpstreamHealth] = {}
        self.packages: dict[str, int] = {}
        self.history: deque[dict[str, float]] = deque(maxlen=HISTORY_POINTS)
        self._next_sample = 0.0
        self._upstream_seconds = Histogram(
            PREFIX + "upstream_request_duration_seconds",
            "Time to the response headers of an upstream request",
            ["upstream"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self._upstream_errors = Counter(
            PREFIX + "upstream_errors",
            "Failed upstream requests by upstream and reason",
            ["upstream", "reason"],
            registry=self.registry,
        )
        self._sources: list[Callable[[], Iterator[Metric]]] = [self._totals]
        self.registry.register(_Scraped(self._sources))

    # -- the hot path --------------------------------------------------------------------

    def request(self, service: str, result: str, nbytes: int, upstream: bool, path: str) -> None:
        self.totals.requests[service][result] += 1
        if nbytes:
            if upstream:
                self.totals.bytes_upstream += nbytes
            else:
                self.totals.bytes_cache += nbytes
        if service == "apt" and path.endswith(".deb") and result in ("hit", "miss"):
            name = path.rsplit("/", 1)[-1]
            self.packages[name] = self.packages.get(name, 0) + 1
            if len(self.packages) > TOP_PACKAGES:  # keep the busier half
                keep = sorted(self.packages.items(), key=lambda kv: kv[1])[TOP_PACKAGES // 2 :]
                self.packages = dict(keep)
        now = time.monotonic()
        if now >= self._next_sample:
            self.sample(now)

    def sample(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._next_sample = now + HISTORY_STEP
        self.history.append(self.point())

    def point(self) -> dict[str, float]:
        """The cumulative figures now (a point of the chart)."""
        hits = sum(
            self.totals.requests[s]["hit"]
            + self.totals.requests[s]["revalidated"]
            + self.totals.requests[s]["stale"]
            for s in SERVICES
        )
        misses = sum(self.totals.requests[s]["miss"] for s in SERVICES)
        return {
            "t": round(time.time(), 1),
            "hits": hits,
            "misses": misses,
            "bytes_cache": self.totals.bytes_cache,
            "bytes_upstream": self.totals.bytes_upstream,
        }

    def upstream(self, upstream: str, seconds: float, error: str | None) -> None:
        health = self.upstreams.get(upstream)
        if health is None:
            health = self.upstreams[upstream] = UpstreamHealth()
        health.requests += 1
        health.last_seconds = round(seconds, 4)
        if error is None:
            health.last_ok = time.time()
        else:
            health.errors += 1
            health.last_error, health.last_error_at = error, time.time()
        if self.enabled:
            self._upstream_seconds.labels(upstream).observe(seconds)
            if error is not None:
                self._upstream_errors.labels(upstream, error).inc()

    # -- scrape time ---------------------------------------------------------------------

    def _totals(self) -> Iterator[Metric]:
        """Request counts and bytes: plain integers on the hot path, exported here."""
        requests = counter(
            "requests", "Client requests by service and result", ["service", "result"]
        )
        for service, results in self.totals.requests.items():
            for result, n in results.items():
                requests.add_metric([service, result], n)
        served = counter(
            "served_bytes", "Body bytes sent to clients, by where they came from", ["source"]
        )
        served.add_metric(["cache"], self.totals.bytes_cache)
        served.add_metric(["upstream"], self.totals.bytes_upstream)
        yield requests
        yield served

    def add_source(self, source: Callable[[], Iterator[Metric]]) -> None:
        """A function yielding metric families, called at each scrape."""
        self._sources.append(source)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def busiest(self, n: int = 10) -> list[tuple[str, int]]:
        return top(self.packages, n)


class _Scraped:
    """A collector over the registered sources."""

    def __init__(self, sources: list[Callable[[], Iterator[Metric]]]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source()

    def describe(self) -> list[Metric]:
        return []


def top(counts: Mapping[str, int], n: int) -> list[tuple[str, int]]:
    """The `n` largest counts, busiest first (then by name)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


def counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=labels)
