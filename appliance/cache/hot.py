"""Recently used entries kept in memory: their metadata, and the bytes of small files.

A cache hit for a hot key needs no disk access and no executor round-trip, which is
what lets a small index or .deb be answered at a rate close to the HTTP server's own.
Bounded by entry count and bytes; the engine drops a key whenever its file changes.
"""

from __future__ import annotations

from collections import OrderedDict

from appliance.cache.store import Entry

MAX_ENTRIES = 20_000
MAX_BYTES = 32 * 1024 * 1024
SMALL_FILE = 64 * 1024  # files up to this size are kept in memory whole


class HotEntries:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        # bumped by every drop, so a disk read that raced with a change is not memoised
        self.generation = 0
        self._items: OrderedDict[str, tuple[Entry, bytes | None]] = OrderedDict()

    def get(self, key: str) -> tuple[Entry, bytes | None] | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, entry: Entry, body: bytes | None) -> None:
        self.drop(key)
        self._items[key] = (entry, body)
        self.bytes += len(body or b"")
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= len(old or b"")

    def drop(self, key: str) -> None:
        self.generation += 1
        item = self._items.pop(key, None)
        if item is not None:
            self.bytes -= len(item[1] or b"")
