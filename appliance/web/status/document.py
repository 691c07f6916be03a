"""The `/api/status` document's parts, typed as docs/operations.md's "`/api/status`
fields" table describes them: what `snapshot` builds, `workers.merge_status` adds up and
the page renders.

Parts another module owns stay that module's shape: `cached` (`web.holdings`), `use`
(`web.use`), `glance` (`web.glance`), a job's outcome (`jobs`' `as_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

Requests = dict[str, dict[str, int]]  # service -> result -> answers since start
Outcome = dict[str, Any]  # a feed's or target's last outcome (`ok`, `error`, `seconds`, ...)


class Bytes(TypedDict):
    cache: int  # served from the cache
    upstream: int  # fetched and passed on


class Point(TypedDict):
    """The history's cumulative counts at `t` (one point a minute, the last now)."""

    t: float
    hits: float
    misses: float
    bytes_cache: float
    bytes_upstream: float


class Upstream(TypedDict):
    requests: int
    errors: int
    last_ok: float | None
    last_error: str | None
    last_error_at: float | None
    last_seconds: float | None
    last_answered: float | None
    last_failed: float | None
    recent: list[list[float]]  # [time, seconds] of the last answers
    median_seconds: float | None
    state: str  # ok, failing, idle


class Busy(TypedDict):
    package: str  # as the request spelled it (%2b)
    requests: int


class Download(TypedDict):
    key: str
    written: int
    total: int | None
    clients: int
    seconds: float


class SharedStore(TypedDict):
    type: str
    bucket: str
    up: bool
    problem: str | None
    pending_uploads: int
    hits: int
    misses: int
    uploads: int
    errors: int
    corrupt: int


class Cache(TypedDict):
    bytes: int
    entries: int
    max_bytes: int
    evictions: int
    from_peers: int
    shared_store: SharedStore | None


class Seeded(TypedDict):
    target: str
    region: str
    id: str


class Version(TypedDict):
    version: str
    items: int
    bytes: int
    seeded: list[Seeded]


class Images(TypedDict):
    """A synced feed's product, or (`product` None) a feed that could not be read."""

    feed: str
    product: str | None
    versions: list[Version]
    error: NotRequired[str]


class Place(TypedDict):
    target: str
    type: str
    region: str
    configured: bool


class Cell(TypedDict):
    state: str  # present, pending, failed, pruned
    id: str | None
    error: str | None
    note: NotRequired[str]  # why a pending one is pending


class CloudImage(TypedDict):
    feed: str  # "" once no longer mirrored
    product: str
    version: str
    mirrored: bool
    cells: list[Cell | None]  # one per place, None where that target does not want it


class FeedError(TypedDict):
    feed: str
    error: str


class Clouds(TypedDict):
    """The images x targets matrix (`web.clouds.matrix`)."""

    targets: list[Place]
    images: list[CloudImage]
    errors: list[FeedError]
    counts: dict[str, int]  # per state


class Event(TypedDict):
    time: float
    level: str
    source: str
    message: str


class Client(TypedDict):
    address: str
    agent: str
    requests: int
    bytes: int
    last_seen: float | None


class Sync(TypedDict):
    running: bool
    progress: Mapping[str, Any] | None
    last_run: float | None
    last_success: float | None
    feeds: dict[str, Outcome]


class Seed(TypedDict):
    running: bool
    targets: dict[str, Outcome]


class AptIndexes(TypedDict):
    indexes: int
    files: int
    parsing: int


class Integrity(TypedDict):
    rejected_downloads: int
    fleet_refused: dict[str, int]  # "source/reason" -> count
    not_stored: dict[str, int]  # reason -> count
    connections_refused: int
    apt_indexes: AptIndexes
    last_verify: dict[str, Any] | None  # checked, bad, at
    last_expiry: dict[str, Any] | None  # expired, expired_bytes, at


class StatusDoc(TypedDict):
    """The whole document. `worker` (this process's index), `workers` (how many answered)
    and `glance` are added by the handler around `snapshot`."""

    version: str
    uptime_seconds: float
    requests: Requests
    hit_ratio: float | None
    bytes: Bytes
    history: list[Point]
    upstreams: dict[str, Upstream]
    requests_last_minute: int
    busiest: list[Busy]
    downloads: list[Download]
    cache: Cache
    images: list[Images]
    clouds: Clouds
    cached: dict[str, Any]  # web.holdings
    use: dict[str, Any]  # web.use
    events: list[Event]
    clients: list[Client]
    sync: Sync
    seed: Seed
    integrity: Integrity
    worker: NotRequired[int]
    workers: NotRequired[int]
    glance: NotRequired[dict[str, Any]]  # web.glance
