"""The last warnings, errors and refused requests, for the status page's "Recent events".

An operator opening the page after a complaint wants the last things that went wrong with
their time and reason, without a shell on the machine: the service's own warnings and
errors (integrity rejections, store problems, sync and seed failures, upstream errors)
arrive through `logging`; refused requests (403, 400, ...) are not logged as warnings (a
scan would flood the log) and are added here by the access logger. A bounded ring per
process; `/api/status` merges the workers' rings by time.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from appliance.config import redact

RECENT = 50  # events kept (per process, and after the merge)
MESSAGE = 300  # characters of a message kept


class Events(logging.Handler):
    """A logging handler (WARNING and above) that also takes refused requests."""

    def __init__(self, size: int = RECENT) -> None:
        super().__init__(logging.WARNING)
        self.ring: deque[dict[str, Any]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string is still an event
            message = str(record.msg)
        source = record.name.removeprefix("appliance.")
        self._add(record.created, record.levelname.lower(), source, message)

    def refused(self, method: str, path: str, status: int, reason: str | None) -> None:
        """A client's request refused (what it asked may be anything: kept as text)."""
        why = f": {reason}" if reason else ""
        self._add(time.time(), "refused", "http", f"{status} {method} {path[:200]}{why}")

    def _add(self, when: float, level: str, source: str, message: str) -> None:
        text = redact(message).replace("\n", " ")[:MESSAGE]
        self.ring.append(
            {"time": round(when, 3), "level": level, "source": source, "message": text}
        )

    def recent(self) -> list[dict[str, Any]]:
        """Newest first."""
        return list(reversed(self.ring))


def merge_events(lists: Iterable[Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Every worker's events, newest first, the last `RECENT` of them."""
    merged = [dict(e) for events in lists for e in events]
    merged.sort(key=lambda e: e.get("time", 0), reverse=True)
    return merged[:RECENT]
