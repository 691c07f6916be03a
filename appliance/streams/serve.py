"""Serving mirrored feeds: `/images/NAME/...` passes each synced feed through.

Documents come only from the verified snapshot that `sync` published (never fetched
on demand), so clients keep checking upstream's own signatures. Items listed in the
snapshot come from the cache, and those not mirrored yet are fetched on demand through
it, checked against the size and checksum the signed metadata gives (no other mirror
does this). Anything else under a feed is 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from appliance.cache.engine import CacheEngine
from appliance.cache.keys import BadPath, encode_path, split_path
from appliance.cache.route import Expect, Freshness, Route
from appliance.streams import layout
from appliance.streams.layout import FEED_DESCRIPTOR, KEY_PATHS, curated_key, snapshot_key
from appliance.streams.model import FormatError, iter_items
from appliance.streams.sync import expect_of

log = logging.getLogger(__name__)

RECHECK = 5.0  # seconds between looks at whether a feed's snapshot changed


class NotFound(LookupError):
    pass


@dataclass
class _FeedState:
    stamp: float = -1.0  # `fetched` of the snapshot index that the item map was built from
    checked: float = 0.0
    descriptor: dict[str, object] = field(default_factory=dict)
    root: str = ""
    items: dict[str, Expect] = field(default_factory=dict)


def curated_route(raw_path: str) -> Route:
    """`/streams/v1/...` and `/keys/...`: the appliance's own signed feed and its key."""
    path = "/".join(split_path(raw_path))
    if not (path.startswith("streams/v1/") or path in KEY_PATHS):
        raise NotFound(path)
    return Route(curated_key(path), (), Freshness.MANAGED)


class ImageRoutes:
    def __init__(self, engine: CacheEngine) -> None:
        self.engine = engine
        self._feeds: dict[str, _FeedState] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def route(self, raw_path: str) -> Route:
        segments = split_path(raw_path)  # ("images", NAME, ...)
        if len(segments) < 3:
            raise NotFound("no file named")
        name, rest = segments[1], segments[2:]
        path = "/".join(rest)
        if rest[:2] == ("streams", "v1") or path == FEED_DESCRIPTOR:
            if path == FEED_DESCRIPTOR:
                raise NotFound(path)
            return Route(snapshot_key(name, path), (), Freshness.MANAGED)
        state = await self._state(name)
        if path not in state.items:  # maybe synced or published a moment ago: look again
            state = await self._state(name, force=True)
        expect = state.items.get(path)
        if expect is None or not state.descriptor:
            raise NotFound(f"{path} is not an item of feed {name!r}")
        key = layout.feed_item_key(state.descriptor, name, path)
        if state.descriptor.get("local"):
            return Route(key, (), Freshness.MANAGED)
        return Route(
            key=key,
            urls=(f"{state.root}/{encode_path(rest)}",),
            freshness=Freshness.IMMUTABLE,
            expect=expect,
        )

    async def _state(self, name: str, force: bool = False) -> _FeedState:
        state = self._feeds.get(name)
        if state is None:  # only feeds that exist get state: clients choose the names
            if await self.engine.lookup(snapshot_key(name, FEED_DESCRIPTOR)) is None:
                raise NotFound(f"no feed named {name!r} has been synced")
            state = self._feeds.setdefault(name, _FeedState())
        if not force and time.monotonic() - state.checked < RECHECK:
            return state
        async with self._locks.setdefault(name, asyncio.Lock()):
            if not force and time.monotonic() - state.checked < RECHECK:
                return state
            await self._reload(name, state)
            state.checked = time.monotonic()
        return state

    async def _reload(self, name: str, state: _FeedState) -> None:
        store = self.engine.store
        try:
            info = await asyncio.to_thread(layout.descriptor, store, name)
            if info is None:
                raise NotFound(f"no feed named {name!r} has been synced")
            index_entry = await self.engine.lookup(snapshot_key(name, info["index"]))
            if index_entry is None or index_entry.meta.fetched == state.stamp:
                return
            items = await asyncio.to_thread(self._items, name, info["index"])
        except (OSError, ValueError, KeyError, FormatError, BadPath) as exc:
            log.warning("feed %s: snapshot unreadable: %s", name, exc)
            return
        state.root = info["url"]
        state.descriptor = info
        state.items = items
        state.stamp = index_entry.meta.fetched
        log.info("feed %s: %d items servable", name, len(items))

    def _items(self, name: str, index_path: str) -> dict[str, Expect]:
        return {
            props["path"]: expect_of(props)
            for doc in layout.snapshot_products(self.engine.store, name, index_path)
            for _p, _v, _i, props in iter_items(doc)
            if "path" in props
        }
