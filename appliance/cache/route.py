"""What a subsystem's routing rule turns a request into, and how the engine is asked:
the engine's whole input.

A `Route` names a file: its cache key, the upstream URLs to try, its `Freshness`, and
what its bytes must be (`Expect`). A `Fetch` is a route as one caller asks for it, the
one request object of a trip through the engine: a client's (`CacheEngine.get`) or
mirroring's (`CacheEngine.ensure`); every step of the trip reads what it needs there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from enum import Enum


class Freshness(Enum):
    IMMUTABLE = "immutable"  # content never changes under this name (pool files, by-hash)
    VOLATILE = "volatile"  # revalidated with a conditional request after the TTL
    MANAGED = "managed"  # written by the appliance itself (feed snapshots): never fetched


@dataclass(frozen=True)
class Expect:
    """What a download must be to enter the cache: its size and a digest, when known."""

    size: int | None = None
    algorithm: str | None = None  # a hashlib name: sha256, sha512, sha1, md5
    digest: str | None = None
    source: str | None = None  # who said so (an index's key), for error messages

    def __post_init__(self) -> None:
        if self.algorithm is not None:
            hashlib.new(self.algorithm)  # unknown names fail here, not mid-download

    @property
    def known(self) -> bool:
        return self.size is not None or self.algorithm is not None


NO_EXPECTATION = Expect()


@dataclass(frozen=True)
class Route:
    key: str  # cache key: host[:port]/path of the canonical upstream
    urls: tuple[str, ...]  # mirrors to try, in order
    freshness: Freshness
    expect: Expect = NO_EXPECTATION  # what the bytes must be (by-hash digests)


@dataclass(frozen=True)
class Fetch(Route):
    """One trip through the engine: a route, as its caller asks for it."""

    # mirroring (`ensure`): a broken transfer's bytes are parked for a Range request, and
    # a lease holder's file is waited for (a client relays the holder's stream instead)
    mirror: bool = False
    keep: bool = False  # committed exempt from eviction (mirrored on purpose)

    @classmethod
    def of(cls, route: Route, *, mirror: bool = False, keep: bool = False) -> Fetch:
        return cls(route.key, route.urls, route.freshness, route.expect, mirror, keep)

    def expecting(self, expect: Expect) -> Fetch:
        """The same trip, for bytes that must be `expect` (what a cached index says)."""
        return replace(self, expect=expect)
