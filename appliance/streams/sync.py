"""Mirror a simplestreams feed into the shared cache.

Order matters, so that a failure never leaves a broken feed behind:
1. read and verify every metadata document (index, products) before using any;
2. fetch the selected items through the cache engine, each checked against its
   size and strongest checksum while streaming; a bad item is reported and skipped;
3. publish the verified documents byte-for-byte as the feed's pass-through snapshot
   (products first, index last);
4. drop items that the previous snapshot selected and this one no longer does.

Mirrored items are kept out of LRU eviction (`keep`); the snapshot documents live
under `_images/<feed>/` so that nothing fetched on demand can ever replace them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher
from appliance.cache.keys import UpstreamBase, split_path
from appliance.cache.results import FetchError
from appliance.cache.route import Expect, Freshness, Route
from appliance.config import FeedConfig
from appliance.streams import layout
from appliance.streams.filters import Filter, parse_filters, select
from appliance.streams.gpg import Verifier
from appliance.streams.model import (
    PRODUCTS_FORMAT,
    FormatError,
    parse_index,
    safe_path,
    strongest_checksum,
    validate_products,
)
from appliance.streams.reader import FeedError, FeedReader, split_feed_url

log = logging.getLogger(__name__)

CONCURRENCY = 4


class ItemStatus(StrEnum):
    """What a sync did with one item (the dry run's two say what it would do)."""

    FETCHED = "fetched"
    PRESENT = "present"
    FAILED = "failed"
    REMOVED = "removed"
    WOULD_FETCH = "would-fetch"
    WOULD_REMOVE = "would-remove"

    @property
    def changed(self) -> bool:
        """The feed served afterwards differs (the curated feed is written again)."""
        return self in (ItemStatus.FETCHED, ItemStatus.REMOVED)

    @property
    def held(self) -> bool:
        """The item is in the cache after the sync."""
        return self in (ItemStatus.FETCHED, ItemStatus.PRESENT)


@dataclass
class ItemOutcome:
    product: str
    version: str
    item: str
    path: str
    size: int
    status: ItemStatus
    error: str | None = None


@dataclass
class FeedOutcome:
    feed: str
    url: str
    ok: bool = True
    error: str | None = None
    items: list[ItemOutcome] = field(default_factory=list)
    bytes_fetched: int = 0
    seconds: float = 0.0

    def count(self, status: ItemStatus) -> int:
        return sum(1 for i in self.items if i.status == status)

    def summary(self) -> str:
        """The counts a log line gives ("rejected": an item whose bytes did not verify)."""
        said = {
            "fetched": ItemStatus.FETCHED,
            "present": ItemStatus.PRESENT,
            "rejected": ItemStatus.FAILED,
            "removed": ItemStatus.REMOVED,
        }
        return ", ".join(f"{word} {self.count(status)}" for word, status in said.items())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Selected:
    content_id: str
    product: str
    version: str
    item: str
    path: str
    expect: Expect


@dataclass(frozen=True)
class FeedPlanned:
    """A feed's metadata is verified: this many items, this many bytes, to go."""

    feed: str
    items: int
    bytes: int


@dataclass(frozen=True)
class ItemDone:
    feed: str
    item: ItemOutcome


@dataclass(frozen=True)
class FeedFailed:
    outcome: FeedOutcome


SyncEvent = FeedPlanned | ItemDone | FeedFailed
Report = Callable[[SyncEvent], None]


def expect_of(props: dict[str, str], where: str = "item") -> Expect:
    """Size and strongest checksum of an item's flattened properties (FormatError if bad)."""
    found = strongest_checksum(props)
    algo, digest = found if found else (None, None)
    size = props.get("size", "")
    if not (isinstance(size, str) and size.isdigit() and len(size) <= 18):
        raise FormatError(f"{where}: invalid size {str(size)[:40]!r}")
    return Expect(size=int(size), algorithm=algo, digest=digest)


def selected_items(
    doc: dict[str, Any], filters: Sequence[Filter], max_items: int | None
) -> list[Selected]:
    """The items to mirror; paths and sizes are checked where they are inherited too."""
    out = []
    for p, v, i, props in select(doc, filters, max_items):
        if "path" not in props:
            continue
        where = f"{p}/{v}/{i}"
        path = safe_path(props["path"], where)
        out.append(Selected(doc["content_id"], p, v, i, path, expect_of(props, where)))
    return out


class FeedMirror:
    def __init__(
        self,
        engine: CacheEngine,
        fetcher: Fetcher,
        feed: FeedConfig,
        verifier: Verifier | None,
        report: Report | None = None,
    ) -> None:
        self.engine = engine
        self.feed = feed
        self.root, self.index_path = split_feed_url(feed.url)
        self.base = UpstreamBase.parse(self.root + "/")
        self.reader = FeedReader(self.root, fetcher, verifier)
        self.filters = parse_filters(feed.filters)
        self.report: Report = report or (lambda _event: None)

    def item_key(self, path: str) -> str:
        return self.base.key(split_path("/" + path))

    def item_url(self, path: str) -> str:
        return self.reader.url(path)

    async def read_metadata(self) -> tuple[dict[str, bytes], list[Selected]]:
        """Every document verified and parsed; raises FeedError before anything is used."""
        documents: dict[str, bytes] = {}
        index, raw = await self.reader.document(self.index_path)
        try:
            entries = parse_index(index)
        except FormatError as exc:
            raise FeedError(f"{self.reader.url(self.index_path)}: {exc}") from None
        selected: list[Selected] = []
        for listed in entries:
            if listed.format != PRODUCTS_FORMAT or listed.path is None:
                continue
            path = self.reader.entry_path(self.index_path, listed.path)
            doc, doc_raw = await self.reader.document(path)
            try:
                validate_products(doc)
                selected += selected_items(doc, self.filters, self.feed.max_items)
            except FormatError as exc:
                raise FeedError(f"{self.reader.url(path)}: {exc}") from None
            documents[path] = doc_raw
        documents.update(await self._other_renderings(documents))
        documents[self.index_path] = raw
        documents.update(await self._other_renderings({self.index_path: raw}))
        for path in [p for p in documents if p.endswith(".json")]:
            signature = self.reader.signatures.get(path)
            if signature is None:  # unverified read: pass upstream's file on if it has one
                with contextlib.suppress(FeedError):
                    signature = await self.reader.raw(path + ".gpg")
            if signature is not None:
                documents[path + ".gpg"] = signature
        return documents, selected

    async def _other_renderings(self, documents: dict[str, bytes]) -> dict[str, bytes]:
        """`.json` beside `.sjson` (and back), verified, for pass-through clients."""
        found: dict[str, bytes] = {}
        for path in documents:
            stem = path.removesuffix(".sjson").removesuffix(".json")
            for other in (stem + ".sjson", stem + ".json"):
                if other == path or other in documents:
                    continue
                try:
                    _doc, found[other] = await self.reader.document(other)
                except FeedError as exc:
                    log.info("%s: no usable %s (%s)", self.feed.name, other, exc)
        return found

    async def previous_selection(self) -> list[Selected]:
        """What the last published snapshot selected (for pruning)."""
        try:
            docs = await asyncio.to_thread(
                layout.snapshot_products, self.engine.store, self.feed.name, self.index_path
            )
        except (OSError, ValueError, FormatError) as exc:
            log.warning(
                "%s: previous snapshot unreadable (%s); nothing pruned", self.feed.name, exc
            )
            return []
        return [s for doc in docs for s in selected_items(doc, self.filters, self.feed.max_items)]

    async def sync(self, dry_run: bool = False) -> FeedOutcome:
        started = time.monotonic()
        outcome = FeedOutcome(self.feed.name, self.feed.url)
        try:
            documents, selected = await self.read_metadata()
        except FeedError as exc:
            outcome.ok, outcome.error = False, str(exc)
            outcome.seconds = time.monotonic() - started
            self.report(FeedFailed(outcome))
            return outcome
        previous = await self.previous_selection()
        current_paths = {s.path for s in selected}
        total = sum(s.expect.size or 0 for s in selected)
        self.report(FeedPlanned(self.feed.name, len(selected), total))

        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(item: Selected) -> None:
            async with semaphore:
                result = await self._fetch(item, dry_run)
            outcome.items.append(result)
            if result.status is ItemStatus.FETCHED:
                outcome.bytes_fetched += result.size
            self.report(ItemDone(self.feed.name, result))

        await asyncio.gather(*(one(s) for s in selected))
        if not dry_run:
            await self._publish(documents)
        for gone in {s.path: s for s in previous if s.path not in current_paths}.values():
            status = ItemStatus.WOULD_REMOVE if dry_run else ItemStatus.REMOVED
            if not dry_run:
                await self.engine.remove(self.item_key(gone.path))
            result = ItemOutcome(
                gone.product, gone.version, gone.item, gone.path, gone.expect.size or 0, status
            )
            outcome.items.append(result)
            self.report(ItemDone(self.feed.name, result))
        outcome.ok = outcome.count(ItemStatus.FAILED) == 0
        if not outcome.ok:
            outcome.error = f"{outcome.count('failed')} item(s) rejected"
        outcome.seconds = time.monotonic() - started
        return outcome

    async def _fetch(self, item: Selected, dry_run: bool) -> ItemOutcome:
        key = self.item_key(item.path)
        size = item.expect.size or 0
        result = ItemOutcome(
            item.product, item.version, item.item, item.path, size, ItemStatus.PRESENT
        )
        existing = await self.engine.lookup(key)
        if dry_run:
            if existing is None or existing.meta.size != size:
                result.status = ItemStatus.WOULD_FETCH
            return result
        try:
            route = Route(key, (self.item_url(item.path),), Freshness.IMMUTABLE, item.expect)
            entry = await self.engine.ensure(route, keep=True)
            await self.engine.keep(entry)  # no-op unless it was cached before, evictable
        except FetchError as exc:
            result.status, result.error = ItemStatus.FAILED, str(exc)
            log.warning("%s: %s rejected: %s", self.feed.name, item.path, exc)
            return result
        if existing is None or entry.meta.fetched != existing.meta.fetched:
            result.status = ItemStatus.FETCHED
        return result

    async def _publish(self, documents: dict[str, bytes]) -> None:
        """The feed descriptor, then products documents, the index last."""
        name = self.feed.name
        descriptor = layout.descriptor_bytes(self.root, self.index_path)
        await self.engine.put(layout.snapshot_key(name, layout.FEED_DESCRIPTOR), descriptor)
        await layout.write_documents(
            self.engine, lambda path: layout.snapshot_key(name, path), documents
        )
