"""The status page's charts across restarts: each process keeps its history in a file."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from appliance.metrics import HISTORY_STEP, Metrics, load_history, save_history

log = logging.getLogger(__name__)


class History:
    """Where this process's chart history is kept, and when it was last written."""

    def __init__(self, metrics: Metrics, path: Path) -> None:
        self.metrics = metrics
        self.path = path
        self._saved = 0  # `metrics.history_changes` at the last save
        self._failing = False  # a failed save was logged (once until one works)

    async def restore(self) -> None:
        """The charts' history of the previous run of this process (a bad file: none)."""
        self.metrics.restore(await asyncio.to_thread(load_history, self.path))

    async def save(self) -> None:
        """Write the history when it moved since the last write (a minute's last request
        is recorded first); a failure is logged once, until a write works again."""
        self.metrics.settle()
        changes = self.metrics.history_changes
        if changes == self._saved:
            return
        try:
            points = list(self.metrics.history)
            await asyncio.to_thread(save_history, self.path, points, changes)
        except OSError as exc:
            if not self._failing:
                log.warning("history: cannot write %s: %s", self.path, exc)
            self._failing = True
            return
        self._saved, self._failing = changes, False

    async def keep(self) -> None:
        """At most one write a minute; the last at shutdown (`serving`)."""
        while True:
            await asyncio.sleep(HISTORY_STEP)
            await self.save()
