"""Freshness and offline rules, in one decision: what may be served without, or
despite, upstream.

Subsystems classify their paths (`Freshness`); the engine calls `decide` before it
asks upstream (serve the copy, or ask) and again when upstream failed (serve the copy
stale, or pass the failure on). No negative caching: a 404 is asked again next time,
as apt-cacher-ng does, so a file published upstream a moment later is found.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from appliance.cache.fetcher import UpstreamFailure
from appliance.cache.route import Freshness
from appliance.cache.store import Meta


class Decision(Enum):
    HIT = "hit"  # the copy is fresh: serve it
    ASK = "ask"  # ask upstream (conditionally, when there is a copy)
    STALE = "stale"  # upstream failed, the copy beats the failure: serve it, say so
    FAIL = "fail"  # pass upstream's failure on


def decide(
    meta: Meta | None,
    freshness: Freshness,
    now: float,
    ttl: float,
    failure: UpstreamFailure | None = None,
) -> Decision:
    """The whole policy. Before a request `failure` is None; after one it is the failure.

    - immutable and managed copies are always fresh; volatile ones for `ttl` seconds
      after upstream last confirmed them (a clock that went back counts as stale);
    - offline mode: a cached copy beats a network error or an upstream 5xx; a 4xx is an
      answer (the file is gone or forbidden) and is passed on.
    """
    if failure is not None:
        return Decision.STALE if meta is not None and failure.upstream_error else Decision.FAIL
    if meta is None:
        return Decision.ASK
    if freshness is not Freshness.VOLATILE:
        return Decision.HIT
    return Decision.HIT if 0 <= now - meta.checked < ttl else Decision.ASK


@dataclass
class Policy:
    """`decide` with the configured TTL (changed by a reload) and the engine's clock
    (wall-clock seconds, injectable: TTL tests need not sleep)."""

    ttl: float
    clock: Callable[[], float] = time.time

    def decide(
        self, meta: Meta | None, freshness: Freshness, failure: UpstreamFailure | None = None
    ) -> Decision:
        return decide(meta, freshness, self.clock(), self.ttl, failure)
