"""What the cache holds, as an operator thinks of it: apt files per remap (or host), suite,
component and architecture (`debian bookworm main amd64`), images per feed; each group's
files, bytes, hits and last use. The status page's "What is cached", `/api/status`'s
`cached`, and `archive-local status`.

A pool file's path does not say which suite or architecture it belongs to: the apt index
table does (the Packages or Sources index listing it). Index files say it by their
`dists/` path. What neither places stays under its remap as "other".

Listing the cache (names, sizes, times: no metadata read) and asking the table for every
pool file takes a few tenths of a second for 10,000 entries, so it runs in a thread and
its result is reused until the cache changes (`generation`), and never more often than
ten times what it took (a busy cache is not walked continuously).
Hits are counted in memory as they are served (no write per hit) and added to the groups
when a snapshot is taken, so they are current; they count since this process started,
for the files the cache holds now. Under `workers: N` each worker counts its own and
`merge` adds them up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.cache.store import Store
from appliance.streams.layout import LOCAL_PREFIX, SNAPSHOT_PREFIX, synced_feeds
from appliance.targets.catalog import CatalogError, feed_images

log = logging.getLogger(__name__)

SHOWN = 30  # apt groups the page lists (the largest); the rest is one "… more" line
LIMIT = 300  # groups `/api/status` lists (the largest); the rest summed in `apt_more`
MIN_AGE = 1.0  # seconds a grouping is kept at least, however much the cache changes
MAX_AGE = 120.0  # seconds a grouping is kept when nothing seems to change
USES_LIMIT = 200_000  # keys whose hits are remembered
OTHER = "other"  # a remap's files no index places (or no apt layout at all)
APPLIANCE = "(this appliance)"  # the curated feed, seed records: the appliance's own

# (kind, remap or feed, suite, component, arch): kind "apt" or "images"
GroupId = tuple[str, str, str, str, str]
Listing = Callable[[Iterable[str]], Mapping[str, str]]  # key -> the index listing it


@dataclass
class _Group:
    ident: GroupId
    files: int = 0
    bytes: int = 0
    stored: float = 0.0  # the newest download or revalidation among its files
    images: int = 0  # image items (a feed's group)


@dataclass
class Grouping:
    """One look at the whole cache: each key's group, and each group's figures."""

    at: float  # wall clock, so workers' looks compare (`merge`: the newest wins)
    seconds: float  # what the look took
    groups: list[_Group]
    group_of: dict[str, int] = field(default_factory=dict)  # key -> index in `groups`


def remap_prefixes(remaps: Mapping[str, str]) -> list[tuple[str, str]]:
    """(key prefix, remap name), the longest prefix first (the one a key falls under)."""
    return sorted(((p, n) for n, p in remaps.items()), key=lambda pn: -len(pn[0]))


def _where(key: str, prefixes: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    """The remap a key falls under and the rest of its path; outside every remap (the
    forward proxy's other hosts), its repository root (what precedes `dists`/`pool`)."""
    for prefix, name in prefixes:
        if key.startswith(prefix + "/"):
            return name, key[len(prefix) + 1 :].split("/")
    segments = key.split("/")
    for i, s in enumerate(segments[1:-1], 1):
        if s in ("dists", "pool"):
            return "/".join(segments[:i]), segments[i:]
    return segments[0], segments[1:]


def _dists(remap: str, segments: Sequence[str]) -> GroupId:
    """The group of a path from `dists/` on: `dists/SUITE/COMPONENT/binary-ARCH/...`;
    files of the suite as a whole (InRelease) have no component."""
    if len(segments) < 3 or segments[0] != "dists":
        return ("apt", remap, OTHER, "", "")
    suite, inner = segments[1], segments[2:-1]
    component = inner[0] if inner else ""
    arch = next((s[len("binary-") :] for s in inner if s.startswith("binary-")), "")
    if not arch and "source" in inner[1:]:
        arch = "source"
    return ("apt", remap, suite, component, arch)


def compute(store: Store, listing: Listing, prefixes: Sequence[tuple[str, str]]) -> Grouping:
    """Group every entry of `store` (blocking: a thread's work)."""
    started = time.monotonic()
    feed_of: dict[str, str] = {}
    images: dict[str, int] = {}
    for feed in synced_feeds(store):
        try:
            found = feed_images(store, feed)
        except CatalogError as exc:  # being rewritten: its items count as files of their host
            log.info("what is cached: feed %s: %s", feed, exc)
            continue
        images[feed] = len(found)
        feed_of.update((i.entry.key, feed) for i in found)
    groups: dict[GroupId, _Group] = {}
    group_of: dict[str, GroupId] = {}
    pool: dict[str, str] = {}  # pool key -> its remap: the index table places it

    def add(key: str, ident: GroupId, size: int, stored: float) -> None:
        group = groups.get(ident)
        if group is None:
            group = groups[ident] = _Group(ident)
        group.files += 1
        group.bytes += size
        group.stored = max(group.stored, stored)
        group_of[key] = ident

    entries = []
    for key, size, stored in store.listing():
        if key in feed_of:
            add(key, ("images", feed_of[key], "", "", ""), size, stored)
            continue
        if key.startswith("_"):  # the image side's own files (see `streams.layout`)
            top, _, rest = key.partition("/")
            feed = rest.split("/", 1)[0] if top in (SNAPSHOT_PREFIX, LOCAL_PREFIX) else APPLIANCE
            add(key, ("images", feed, "", "", ""), size, stored)
            continue
        remap, segments = _where(key, prefixes)
        if segments[:1] == ["pool"]:
            pool[key] = remap
            entries.append((key, size, stored))
        else:
            add(key, _dists(remap, segments), size, stored)
    listed = listing(pool) if pool else {}
    for key, size, stored in entries:
        logical = listed.get(key)
        segments = logical.split("/") if logical else []
        at = segments.index("dists") if "dists" in segments else len(segments)
        add(key, _dists(pool[key], segments[at:]), size, stored)
    for feed, n in images.items():
        ident = ("images", feed, "", "", "")
        groups.setdefault(ident, _Group(ident)).images = n
    ordered = sorted(groups.values(), key=lambda g: (-g.bytes, g.ident))
    position = {g.ident: i for i, g in enumerate(ordered)}
    return Grouping(
        at=time.time(),
        seconds=time.monotonic() - started,
        groups=ordered,
        group_of={k: position[g] for k, g in group_of.items()},
    )


def name(row: Mapping[str, Any]) -> str:
    """`debian bookworm main amd64`: what a person calls an apt group."""
    return " ".join(p for p in (row["remap"], row["suite"], row["component"], row["arch"]) if p)


class Holdings:
    """This process's hits per key, and the latest grouping of the cache."""

    def __init__(self) -> None:
        self.uses: dict[str, list[float]] = {}  # key -> [hits, last hit (wall clock)]
        self.grouping: Grouping | None = None
        self._generation: Hashable = None
        self._at = 0.0  # monotonic time of the grouping
        self._lock = asyncio.Lock()

    def hit(self, key: str) -> None:
        """A client was answered from the cache (the hot path: a dict update)."""
        use = self.uses.get(key)
        if use is None:
            if len(self.uses) >= USES_LIMIT:
                self._trim()
            self.uses[key] = [1, time.time()]
        else:
            use[0] += 1
            use[1] = time.time()

    def _trim(self) -> None:
        """Forget the hits of files no longer cached, else the least hit half."""
        held = self.grouping.group_of if self.grouping is not None else {}
        kept = {k: u for k, u in self.uses.items() if k in held}
        if len(kept) >= USES_LIMIT // 2:
            kept = dict(sorted(kept.items(), key=lambda ku: -ku[1][0])[: USES_LIMIT // 2])
        self.uses = kept

    async def get(self, generation: Hashable, look: Callable[[], Grouping]) -> dict[str, Any]:
        """The `cached` document: a new look (in a thread) when the cache changed since
        the last (`generation`) and that one is old enough, or when it is very old."""
        async with self._lock:
            age = time.monotonic() - self._at
            floor = max(MIN_AGE, 10 * (self.grouping.seconds if self.grouping else 0))
            if (
                self.grouping is None
                or age > MAX_AGE
                or (generation != self._generation and age >= floor)
            ):
                self.grouping = await asyncio.to_thread(look)
                self._generation, self._at = generation, time.monotonic()
            return self.document(self.grouping)

    def document(self, grouping: Grouping) -> dict[str, Any]:
        """The grouping with this process's hits added (on the event loop: one pass over
        the keys that were hit)."""
        groups = grouping.groups
        hits = [0] * len(groups)
        last = [g.stored for g in groups]
        for key, (n, at) in self.uses.items():
            if (i := grouping.group_of.get(key)) is not None:
                hits[i] += int(n)
                last[i] = max(last[i], at)
        apt: list[dict[str, Any]] = []
        more = {"groups": 0, "files": 0, "bytes": 0}
        images: list[dict[str, Any]] = []
        for i, g in enumerate(groups):
            kind, where, suite, component, arch = g.ident
            figures = {
                "files": g.files,
                "bytes": g.bytes,
                "hits": hits[i],
                "last_use": last[i] or None,
            }
            if kind == "images":
                images.append({"feed": where, "images": g.images, **figures})
            elif len(apt) < LIMIT:
                apt.append(
                    {"remap": where, "suite": suite, "component": component, "arch": arch} | figures
                )
            else:
                more["groups"] += 1
                more["files"] += g.files
                more["bytes"] += g.bytes
        return {
            "at": round(grouping.at, 3),
            "files": sum(g.files for g in groups),
            "bytes": sum(g.bytes for g in groups),
            "apt": apt,
            "apt_more": more,
            "images": images,
        }


def _ident(row: Mapping[str, Any]) -> tuple[str, ...]:
    if "feed" in row:
        return ("images", row["feed"])
    return ("apt", row["remap"], row["suite"], row["component"], row["arch"])


def merge(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The service's `cached` from every worker's: the files and bytes of the newest look
    at the one directory they share; hits added up, the last use the latest."""
    newest = max(docs, key=lambda d: d["at"])
    out = dict(newest)
    for section in ("apt", "images"):
        rows = {_ident(r): dict(r) for r in newest[section]}
        for doc in docs:
            if doc is newest:
                continue
            for r in doc[section]:
                into = rows.get(_ident(r))
                if into is not None:
                    into["hits"] += r["hits"]
                    into["last_use"] = max(into["last_use"] or 0, r["last_use"] or 0) or None
        out[section] = list(rows.values())
    return out


def render(
    cached: Mapping[str, Any] | None,
    table: Callable[[str, list[list[Any]], str], str],
    size: Callable[[float | None], str],
    ago: Callable[[float | None], str],
) -> str:
    """The section's HTML: the largest apt groups, how many more, the images per feed.
    `table`, `size`, `ago` are the status page's (`status.tables.table` escapes every
    cell), passed in so that this module never imports the page's."""
    if not cached:
        return '<p class="muted">Not known yet.</p>'
    apt, images = cached["apt"], cached["images"]
    shown = apt[:SHOWN]
    rest = {
        "groups": len(apt) - len(shown) + cached["apt_more"]["groups"],
        "files": sum(r["files"] for r in apt[SHOWN:]) + cached["apt_more"]["files"],
        "bytes": sum(r["bytes"] for r in apt[SHOWN:]) + cached["apt_more"]["bytes"],
    }
    parts = [
        f'<p id="cached-total">{int(cached["files"])} files, {size(cached["bytes"])}.</p>',
        table(
            "cached",
            [[name(r), r["files"], size(r["bytes"]), r["hits"], ago(r["last_use"])] for r in shown],
            "Nothing cached from apt yet.",
        ),
    ]
    if rest["groups"]:
        parts.append(
            f'<p class="muted" id="cached-more">… {int(rest["groups"])} more: '
            f"{int(rest['files'])} files, {size(rest['bytes'])}</p>"
        )
    if images:
        parts.append(
            table(
                "cached-images",
                [
                    [r["feed"], r["images"], size(r["bytes"]), r["hits"], ago(r["last_use"])]
                    for r in images
                ],
                "",
            )
        )
    return "".join(parts)


def text(
    cached: Mapping[str, Any] | None,
    size: Callable[[float | None], str],
    ago: Callable[[float | None], str],
    shown: int = 10,
) -> list[str]:
    """`archive-local status`'s lines: the total, the largest apt groups, each feed."""
    if not cached:
        return []
    lines = [f"cached {size(cached['bytes'])} in {cached['files']} files:"]
    for r in cached["apt"][:shown]:
        lines.append(
            f"  {name(r)}: {r['files']} files, {size(r['bytes'])}, {r['hits']} hits, "
            f"last use {ago(r['last_use'])}"
        )
    more = len(cached["apt"][shown:]) + cached["apt_more"]["groups"]
    if more:
        lines.append(f"  … {more} more (archive-local status --json lists them)")
    for r in cached["images"]:
        lines.append(
            f"  images {r['feed']}: {r['images']} images, {size(r['bytes'])} in {r['files']} "
            f"files, {r['hits']} hits, last use {ago(r['last_use'])}"
        )
    return lines
