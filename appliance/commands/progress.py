"""One progress renderer for the long commands (sync, seed): a bar on a terminal, one
line per finished item otherwise; always on stderr, so stdout stays for `--json`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TextIO

from appliance.config import human_size
from appliance.streams.sync import FeedFailed, FeedPlanned, ItemDone, ItemStatus, SyncEvent
from appliance.targets.seeder import (
    ActionDone,
    BytesSent,
    RegionPlanned,
    SeedEvent,
    TargetDone,
    UploadStarted,
)


def mb(n: int) -> str:
    """A size as the configuration writes them (IEC)."""
    return human_size(n)


class Progress:
    """Renders the typed events of the sync and seed jobs."""

    def __init__(
        self,
        tty: bool,
        in_flight: Callable[[], int] = lambda: 0,
        out: TextIO | None = None,
    ) -> None:
        self.tty = tty
        self.in_flight = in_flight  # bytes of downloads in progress, for the bar
        self.out = out or sys.stderr
        self.label = ""
        self.total_items = self.total_bytes = self.done_items = self.done_bytes = 0

    def __call__(self, event: SyncEvent | SeedEvent) -> None:
        match event:
            case FeedPlanned(feed, items, nbytes):
                self.label, self.total_items, self.total_bytes = feed, items, nbytes
                self.done_items = self.done_bytes = 0
            case ItemDone(feed, item):
                if item.status in (ItemStatus.FETCHED, ItemStatus.PRESENT, ItemStatus.FAILED):
                    self.done_items += 1
                    self.done_bytes += item.size
                line = f"{item.status:<12} {item.path} ({mb(item.size)})"
                self.line(f"[{feed}] {line}" + (f": {item.error}" if item.error else ""))
            case FeedFailed(outcome):
                self.line(f"[{outcome.feed}] sync failed: {outcome.error}")
            case RegionPlanned(target, region, plan):
                self.line(
                    f"[{target}/{region}] plan: upload {len(plan.upload)}, present "
                    f"{len(plan.present)}, remove {len(plan.remove)}, clean {len(plan.broken)}"
                )
            case UploadStarted(_target, _region, name, size):
                self.label, self.total_items, self.total_bytes = name[-40:], 0, size
                self.done_bytes = 0
            case BytesSent(count):
                self.done_bytes += count
                self.draw()
            case ActionDone(a):
                text = f"[{a.target}/{a.region}] {a.action:<12} {a.name}"
                text += f" ({a.image_id})" if a.image_id else ""
                self.line(text + (f": {a.error}" if a.error else ""))
            case TargetDone(o):
                if o.error:
                    self.line(f"[{o.target}] FAILED: {o.error}")

    def line(self, text: str) -> None:
        self.clear()
        print(text, file=self.out)
        self.draw()

    def clear(self) -> None:
        if self.tty:
            self.out.write("\r\033[K")

    def draw(self) -> None:
        if not self.tty or not self.total_bytes:
            return
        got = self.done_bytes + (self.in_flight() if self.total_items else 0)
        frac = min(1.0, got / self.total_bytes)
        items = f" {self.done_items}/{self.total_items} items" if self.total_items else ""
        self.out.write(
            f"\r[{self.label}] [{'#' * int(frac * 30):<30}] {frac:4.0%}{items} "
            f"{mb(got)} of {mb(self.total_bytes)}"
        )
        self.out.flush()

    async def ticker(self) -> None:
        """Redraw twice a second while downloads run (bytes arrive between events)."""
        while True:
            await asyncio.sleep(0.5)
            self.draw()
