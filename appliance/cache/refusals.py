"""What a unit refused at its boundary: a bucket object it could not tie to upstream, a
peer's stream that was not the file, a lease it no longer held.

Every refusal is counted by source and reason (`archive_local_fleet_refused_total`) and
logged, once a minute per source and reason: a bucket full of planted objects must not
flood the log, and one refusal must never go unseen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

log = logging.getLogger(__name__)

SOURCES = ("bucket", "peer", "lease")
REASONS = (
    "metadata",  # fields of the wrong type, characters or size
    "unverifiable",  # nothing ties it to upstream: no expectation, no fleet record
    "record",  # a fleet record (HMAC) that does not verify
    "size",  # not the size upstream's index or feed says
    "digest",  # not the digest upstream's index or feed says, or its own record's
    "stolen",  # a lease another unit holds now: not renewed, not released
    "expired",  # waited for another unit's lease for longer than it may take
)


class Refusals:
    """Counts by (source, reason); safe from the store's threads."""

    def __init__(self, quiet: float = 60.0) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._logged: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self.quiet = quiet

    def refuse(self, source: str, reason: str, key: str, detail: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            self.counts[(source, reason)] += 1
            loud = now - self._logged.get((source, reason), -self.quiet) >= self.quiet
            if loud:
                self._logged[(source, reason)] = now
        message = "refused from the %s (%s): %s%s"
        if loud:
            log.warning(message + " (logged once a minute)", source, reason, key, detail)
        else:
            log.debug(message, source, reason, key, detail)

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """`source/reason` -> count, for the status API."""
        with self._lock:
            return {f"{s}/{r}": n for (s, r), n in sorted(self.counts.items())}
