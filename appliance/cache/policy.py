"""Freshness rules, in one place: what may be served without asking upstream.

Subsystems classify their paths (`Freshness`); the engine asks `is_fresh` before
serving and `serve_stale` when upstream fails.
"""

from __future__ import annotations

from enum import Enum

from appliance.cache.fetcher import UpstreamFailure
from appliance.cache.store import Meta


class Freshness(Enum):
    IMMUTABLE = "immutable"  # content never changes under this name (pool files, by-hash)
    VOLATILE = "volatile"  # revalidated with a conditional request after the TTL
    MANAGED = "managed"  # written by the appliance itself (feed snapshots): never fetched


def is_fresh(meta: Meta, freshness: Freshness, now: float, ttl: float) -> bool:
    if freshness is not Freshness.VOLATILE:
        return True
    return 0 <= now - meta.checked < ttl


def serve_stale(failure: UpstreamFailure) -> bool:
    """Offline mode: a cached copy beats a network error or an upstream 5xx.

    A 4xx is an answer (the file is gone or forbidden), so it is passed on.
    """
    return failure.upstream_error
