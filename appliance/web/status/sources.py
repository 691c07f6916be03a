"""What the status page, `/api/status` and the metrics scrape read of the appliance:
narrow protocols (figures and read-only state), never the parts themselves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from appliance.cache.engine import Figures
from appliance.cache.store import Store
from appliance.metrics import Metrics


class Jobs(Protocol):
    """The scheduler's state, as the status page reads it."""

    running: bool
    last_run: float | None
    progress: Mapping[str, Any] | None  # the running sync: feed, items/bytes done and total
    last_success: float | None
    last: Mapping[str, Any]  # feed -> FeedOutcome
    seeding: bool
    seed_last: Mapping[str, Any]  # target -> TargetOutcome
    sync_stats: Mapping[str, Mapping[str, Any]]
    seed_stats: Mapping[str, Mapping[str, Any]]
    config: Any  # the configuration in force: the seed targets the matrix shows


class Source(Protocol):
    """What the status page, /api/status and the metrics scrape read of the appliance:
    figures and read-only state, never the parts themselves."""

    metrics: Metrics
    jobs: Jobs
    store: Store  # read for the image inventory

    def cache_figures(self) -> Figures: ...
    def integrity(self) -> dict[str, Any]: ...  # refused connections, apt indexes, last runs
    def usage(self) -> dict[str, Any]: ...  # the port, the remaps, the accepted upstreams
    def recent_events(self) -> list[dict[str, Any]]: ...  # newest first
    def client_figures(self, n: int) -> list[dict[str, Any]]: ...  # busiest, last 24 h
    async def cached(self) -> dict[str, Any]: ...  # what the cache holds, per group (holdings)
