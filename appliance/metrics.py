"""What the appliance counts: Prometheus metrics and the in-memory figures of the status page.

The hot path (one call per request, from the access logger) only increments
pre-bound counters and a few integers; everything derived (cache size, downloads in
flight, sync and seed results) is read when Prometheus scrapes. Label values are
bounded: services, results and sources are fixed sets, upstreams are configured
hosts, feeds and targets come from the configuration. Every family's name, help and
labels are declared in `appliance.families`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest

from appliance.families import REQUESTS, SERVED_BYTES, UPSTREAM_ERRORS, UPSTREAM_SECONDS

SERVICES = ("apt", "images", "feed")
RESULTS = ("hit", "miss", "revalidated", "stale", "error", "refused")
HISTORY_STEP = 60.0  # seconds: the history keeps one point per minute of the clock
HISTORY_SPAN = 86400.0  # seconds it goes back (and one older point: where the counts stood)
HISTORY_POINTS = int(HISTORY_SPAN // HISTORY_STEP)  # 1440
HISTORY_FIELDS = ("hits", "misses", "bytes_cache", "bytes_upstream")  # cumulative, with "t"
HISTORY_FORMAT = "archive-local history"  # the file's "format" (a foreign file is not read)
HISTORY_VERSION = 1
HISTORY_MAX_BYTES = 1 << 20  # a full history is ~100 KB: a larger file is not one of ours
TOP_PACKAGES = 2000  # distinct .deb names tracked for "busiest packages"
RATE_WINDOW = 60  # seconds over which the status page's requests/s is counted
LATENCY_WINDOW = 64  # recent answered exchanges per upstream the median latency is taken over
ANSWERED = (None, "not-found", "http-error")  # upstream sent its headers: a latency to time
# a 404 is an answer (apt asks for files a mirror may lack): not a sign of a failing upstream
NOT_FAILURES = (None, "not-found")


@dataclass
class UpstreamHealth:
    requests: int = 0
    errors: int = 0
    last_ok: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_seconds: float | None = None
    last_answered: float | None = None  # the last 200/304/404: upstream was there
    last_failed: float | None = None  # the last failure (connect, timeout, non-404 HTTP error)
    # (when, seconds) of the last answered exchanges: a window a median is taken over and,
    # shipped as is, merged over the workers (a median of medians is not one)
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def as_dict(self) -> dict[str, Any]:
        """The status document's entry: the counts, the window, its median and the state."""
        doc: dict[str, Any] = {k: v for k, v in vars(self).items() if k != "recent"}
        doc["recent"] = [[t, s] for t, s in self.recent]
        doc.update(upstream_summary(doc))
        return doc


def upstream_summary(health: Mapping[str, Any]) -> dict[str, Any]:
    """`median_seconds` over the entry's `recent` window and its `state`: "failing" when
    its last failure is newer than its last answer, "ok" once it answered, else "idle"."""
    seconds = [s for _, s in health.get("recent") or []]
    failed, answered = health.get("last_failed"), health.get("last_answered")
    if failed is not None and (answered is None or failed > answered):
        state = "failing"
    elif answered is not None:
        state = "ok"
    else:
        state = "idle"
    median = round(statistics.median(seconds), 4) if seconds else None
    return {"median_seconds": median, "state": state}


@dataclass
class Totals:
    """Cumulative figures since start (what the history samples)."""

    requests: dict[str, dict[str, int]] = field(
        default_factory=lambda: {s: dict.fromkeys(RESULTS, 0) for s in SERVICES}
    )
    bytes_cache: int = 0
    bytes_upstream: int = 0


log = logging.getLogger(__name__)


class Metrics:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=True)
        self.totals = Totals()
        self.upstreams: dict[str, UpstreamHealth] = {}
        self.packages: dict[str, int] = {}
        # the chart's points: cumulative counts as the last request of each minute left
        # them (a restart's restored ones first); the counts go on from the last restored
        self.history: deque[dict[str, float]] = deque(maxlen=HISTORY_POINTS + 2)
        self.history_changes = 0  # moves when a point is added or replaced (worth saving)
        self._restored: dict[str, int] = dict.fromkeys(HISTORY_FIELDS, 0)
        self._minute_end = 0.0  # the end of the minute of the last request (wall clock)
        self._last_at = 0.0  # when the last request was counted (0: none yet)
        # requests counted in each of the last RATE_WINDOW seconds: (second, count) by slot
        self._rate: list[list[int]] = [[0, 0] for _ in range(RATE_WINDOW)]
        self._upstream_seconds = Histogram(
            UPSTREAM_SECONDS.name,
            UPSTREAM_SECONDS.help,
            UPSTREAM_SECONDS.labels,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self._upstream_errors = Counter(
            UPSTREAM_ERRORS.name,
            UPSTREAM_ERRORS.help,
            UPSTREAM_ERRORS.labels,
            registry=self.registry,
        )
        self._sources: list[Callable[[], Iterator[Metric]]] = [self._totals]
        self.registry.register(_Scraped(self._sources))

    # -- the hot path --------------------------------------------------------------------

    def request(self, service: str, result: str, nbytes: int, upstream: bool, path: str) -> None:
        now = time.time()
        if now >= self._minute_end:  # the first request of a minute: the last one is over
            self.settle()
            self._minute_end = (now // HISTORY_STEP + 1) * HISTORY_STEP
        self._last_at = now
        second = int(now)
        slot = self._rate[second % RATE_WINDOW]
        if slot[0] != second:
            slot[0], slot[1] = second, 0
        slot[1] += 1
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

    def recent_requests(self) -> int:
        """Requests counted in the last RATE_WINDOW seconds (this one included): what
        requests/s is computed from, summed over the workers before dividing."""
        now = int(time.time())
        return sum(n for second, n in self._rate if now - RATE_WINDOW < second <= now)

    # -- the history ---------------------------------------------------------------------

    def settle(self) -> None:
        """Record the counts as the last request left them, at its time: a point is
        exact at its moment, so a minute's traffic is never counted in the next one."""
        if not self._last_at:
            return
        point = self.point(self._last_at)
        history = self.history
        if history and all(history[-1][k] == point[k] for k in HISTORY_FIELDS):
            return
        minute = point["t"] // HISTORY_STEP
        while history and history[-1]["t"] // HISTORY_STEP >= minute:
            history.pop()  # the same minute (or a later one: the clock went back)
        history.append(point)
        while len(history) > 2 and history[1]["t"] <= point["t"] - HISTORY_SPAN:
            history.popleft()  # older than the span, and not where the counts stood then
        self.history_changes += 1

    def point(self, at: float | None = None) -> dict[str, float]:
        """The cumulative figures now (or at `at`): a point of the chart. They count from
        the first point of the history, restored at start, not from this start."""
        hits = sum(
            self.totals.requests[s]["hit"]
            + self.totals.requests[s]["revalidated"]
            + self.totals.requests[s]["stale"]
            for s in SERVICES
        )
        misses = sum(self.totals.requests[s]["miss"] for s in SERVICES)
        since = self._restored
        return {
            "t": round(time.time() if at is None else at, 1),
            "hits": since["hits"] + hits,
            "misses": since["misses"] + misses,
            "bytes_cache": since["bytes_cache"] + self.totals.bytes_cache,
            "bytes_upstream": since["bytes_upstream"] + self.totals.bytes_upstream,
        }

    def points(self) -> list[dict[str, float]]:
        """The history with now as its last point (which supersedes one of this minute)."""
        now = self.point()
        points = list(self.history)
        while points and points[-1]["t"] // HISTORY_STEP >= now["t"] // HISTORY_STEP:
            points.pop()
        return [*points, now]

    def restore(self, points: Sequence[dict[str, float]]) -> None:
        """A history read back at start (`load_history`), before any request: the counts
        go on from its last point."""
        self.history.clear()
        self.history.extend(points[-(HISTORY_POINTS + 2) :])
        if self.history:
            self._restored = {k: int(self.history[-1][k]) for k in HISTORY_FIELDS}
        else:  # a new history: nothing was counted by the end of the minute before
            start = time.time() // HISTORY_STEP * HISTORY_STEP - 0.1
            self.history.append({"t": round(start, 1), **dict.fromkeys(HISTORY_FIELDS, 0)})

    def upstream(self, upstream: str, seconds: float, error: str | None) -> None:
        health = self.upstreams.get(upstream)
        if health is None:
            health = self.upstreams[upstream] = UpstreamHealth()
        now = time.time()
        health.requests += 1
        health.last_seconds = round(seconds, 4)
        if error is None:
            health.last_ok = now
        else:
            health.errors += 1
            health.last_error, health.last_error_at = error, now
        if error in NOT_FAILURES:
            health.last_answered = now
        else:
            health.last_failed = now
        if error in ANSWERED:
            health.recent.append((round(now, 3), round(seconds, 4)))
        if self.enabled:
            self._upstream_seconds.labels(upstream).observe(seconds)
            if error is not None:
                self._upstream_errors.labels(upstream, error).inc()

    # -- scrape time ---------------------------------------------------------------------

    def _totals(self) -> Iterator[Metric]:
        """Request counts and bytes: plain integers on the hot path, exported here."""
        requests = REQUESTS.new()
        for service, results in self.totals.requests.items():
            for result, n in results.items():
                requests.add_metric([service, result], n)
        served = SERVED_BYTES.new()
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


def load_history(path: Path) -> list[dict[str, float]]:
    """The points a previous run saved; none (and one log line) when the file is not a
    history this version wrote: damaged, truncated, foreign or from a future version."""
    try:
        with path.open("rb") as f:
            data = f.read(HISTORY_MAX_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("history: cannot read %s (the charts start empty): %s", path, exc)
        return []
    try:
        if len(data) > HISTORY_MAX_BYTES:
            raise ValueError(f"larger than {HISTORY_MAX_BYTES} bytes")
        points = _history_points(json.loads(data))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:  # UnicodeError, JSON
        log.warning("history: ignoring %s, not a history this version wrote: %s", path, exc)
        return []
    now = time.time()
    return [p for p in points if p["t"] < now + HISTORY_STEP]  # none from a clock gone back


def _history_points(doc: object) -> list[dict[str, float]]:
    if not isinstance(doc, dict) or doc.get("format") != HISTORY_FORMAT:
        raise ValueError("no history format mark")
    if doc.get("version") != HISTORY_VERSION:
        raise ValueError(f"version {doc.get('version')!r}, this one reads {HISTORY_VERSION}")
    if doc.get("fields") != ["t", *HISTORY_FIELDS]:
        raise ValueError(f"fields {doc.get('fields')!r}")
    rows = doc["points"]
    if not isinstance(rows, list):
        raise ValueError("points is not a list")
    points: list[dict[str, float]] = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 1 + len(HISTORY_FIELDS):
            raise ValueError(f"a point is not [t, {', '.join(HISTORY_FIELDS)}]")
        t, *counts = row
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise ValueError(f"a point's time is {t!r}")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
            raise ValueError(f"a point's counts are {counts!r}")
        point = {"t": float(t), **dict(zip(HISTORY_FIELDS, counts, strict=True))}
        if points and (
            t <= points[-1]["t"] or any(point[k] < points[-1][k] for k in HISTORY_FIELDS)
        ):
            raise ValueError("the points are not in order (times and counts only grow)")
        points.append(point)
    return points


_saving = threading.Lock()  # a save cancelled by the shutdown may still be in its thread
_saved: dict[Path, int] = {}  # the generation last written to each file


def save_history(path: Path, points: Sequence[Mapping[str, float]], generation: int = 0) -> None:
    """Replace the file atomically (a temporary file, fsynced, renamed): a crash leaves
    the previous history or this one, never half of one. `generation` orders the saves
    (`Metrics.history_changes`): an older one that runs late does not replace a newer."""
    doc = {
        "format": HISTORY_FORMAT,
        "version": HISTORY_VERSION,
        "step": HISTORY_STEP,
        "fields": ["t", *HISTORY_FIELDS],
        "points": [[p["t"], *(int(p[k]) for k in HISTORY_FIELDS)] for p in points],
    }
    data = json.dumps(doc, separators=(",", ":")).encode()
    with _saving:
        if generation < _saved.get(path, 0):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _saved[path] = generation


def top(counts: Mapping[str, int], n: int) -> list[tuple[str, int]]:
    """The `n` largest counts, busiest first (then by name)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
