"""What a subsystem's routing rule turns a request into: the engine's whole input."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.cache.download import NO_EXPECTATION, Expect
from appliance.cache.policy import Freshness


@dataclass(frozen=True)
class Route:
    key: str  # cache key: host[:port]/path of the canonical upstream
    urls: tuple[str, ...]  # mirrors to try, in order
    freshness: Freshness
    expect: Expect = NO_EXPECTATION  # what the bytes must be (by-hash digests)
