"""Least-recently-used accounting for the size cap (pure bookkeeping, no I/O)."""

from __future__ import annotations

from collections import Counter, OrderedDict


class LruIndex:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.total = 0
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._pins: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def add(self, key: str, size: int) -> None:
        self.total += size - self._sizes.pop(key, 0)
        self._sizes[key] = size

    def discard(self, key: str) -> None:
        self.total -= self._sizes.pop(key, 0)

    def touch(self, key: str) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)

    def pin(self, key: str) -> None:
        """Mark a file as being served: it is never chosen for eviction."""
        self._pins[key] += 1

    def unpin(self, key: str) -> None:
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]

    def victims(self, room: int = 0) -> list[str]:
        """Oldest unpinned keys to drop until the total fits (and `room` bytes are freed).

        Removes them from the index.
        """
        chosen: list[str] = []
        freed = 0
        if self.total <= self.max_size and room <= 0:
            return chosen
        for key in list(self._sizes):
            if self.total <= self.max_size and freed >= room:
                break
            if self._pins[key]:
                continue
            chosen.append(key)
            freed += self._sizes.get(key, 0)
            self.discard(key)
        return chosen
