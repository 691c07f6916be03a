"""The status document of one process (`/api/status`, before the handler merges the
workers' and adds `glance`): figures read from a `Source`, typed as `document` says."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from appliance import __version__
from appliance.cache.engine import Figures
from appliance.web import clients
from appliance.web.status.document import Cache, Integrity, Seed, StatusDoc, Sync
from appliance.web.status.inventory import Inventory
from appliance.web.status.sources import Jobs, Source

BUSIEST = 10  # packages the status page lists
SHARED_OPERATIONS = ("hits", "misses", "uploads", "errors", "corrupt")  # shared store counts


def hit_ratio(requests: Mapping[str, Mapping[str, int]]) -> float | None:
    """Answers from the cache (fresh, revalidated or stale) among the apt and image
    answers that were hits or misses; None before there is any."""
    hits = misses = 0
    for service in ("apt", "images"):
        counts = requests.get(service, {})
        hits += sum(counts.get(r, 0) for r in ("hit", "revalidated", "stale"))
        misses += counts.get("miss", 0)
    return round(hits / (hits + misses), 4) if hits + misses else None


async def snapshot(source: Source, inventory: Inventory, busiest: int = BUSIEST) -> StatusDoc:
    """The status document of this process. `busiest`: how many packages it lists (a
    sibling merging every worker's asks for more, to add them up before it keeps 10)."""
    m = source.metrics
    totals = m.totals
    jobs = source.jobs
    cache = source.cache_figures()
    images = await inventory.get(source)
    return {
        "version": __version__,
        "uptime_seconds": round(time.time() - m.started, 1),
        "requests": totals.requests,
        "hit_ratio": hit_ratio(totals.requests),
        "bytes": {"cache": totals.bytes_cache, "upstream": totals.bytes_upstream},
        "history": m.points(),  # one point a minute; the last is now
        "upstreams": {k: v.as_dict() for k, v in sorted(m.upstreams.items())},
        "requests_last_minute": m.recent_requests(),  # requests/s, once summed (glance)
        "busiest": [{"package": n, "requests": c} for n, c in m.busiest(busiest)],
        "downloads": cache.downloads,
        "cache": _cache(cache),
        "images": images,
        "clouds": await inventory.clouds.get(source.store, jobs, images),
        "cached": await source.cached(),
        "use": source.usage(),
        "events": source.recent_events(),
        # a sibling merging every worker's asks for every address (see `busiest`)
        "clients": source.client_figures(clients.TOP if busiest == BUSIEST else clients.LIMIT),
        "sync": _sync(jobs),
        "seed": _seed(jobs),
        "integrity": _integrity(cache, source.integrity()),
    }


def _cache(cache: Figures) -> Cache:
    return {
        "bytes": cache.bytes,
        "entries": cache.entries,
        "max_bytes": cache.max_bytes,
        "evictions": cache.evictions,
        "from_peers": cache.from_peers,
        "shared_store": cache.shared_store,
    }


def _sync(jobs: Jobs) -> Sync:
    return {
        "running": jobs.running,
        "progress": jobs.progress,
        "last_run": jobs.last_run,
        "last_success": jobs.last_success,
        "feeds": {n: o.as_dict() for n, o in jobs.last.items()},
    }


def _seed(jobs: Jobs) -> Seed:
    return {
        "running": jobs.seeding,
        "targets": {n: o.as_dict() for n, o in jobs.seed_last.items()},
    }


def _integrity(cache: Figures, extra: dict[str, Any]) -> Integrity:
    return {  # the rest: Source.integrity()
        "rejected_downloads": cache.rejected,
        "fleet_refused": cache.refused or {},
        "not_stored": cache.not_stored,
        **extra,
    }
