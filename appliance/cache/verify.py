"""`verify`: re-read every stored entry and check it against what it must be.

An entry is bad when its bytes no longer match the digest recorded when it was
committed (bit rot, a file changed behind the cache's back), or when a cached index
now says something else of it (a mirror republished it, the cached copy is stale).
With `fix`, bad entries are removed through the engine, so nothing keeps serving them
from memory; files being downloaded are left alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.cache.route import Expect
from appliance.cache.store import Entry, Store

MAX_LISTED = 1000  # bad entries named in a report


@dataclass
class VerifyReport:
    fix: bool
    checked: int = 0
    bytes: int = 0
    ok: int = 0
    bad: int = 0
    removed: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[int, int], None]  # (entries checked, bytes read)


def check_entry(store: Store, entry: Entry, expected: Expect | None) -> str | None:
    """Why `entry` is bad, or None (blocking: reads the whole file)."""
    meta = entry.meta
    algorithms = {"sha256"}
    if expected is not None and expected.algorithm:
        algorithms.add(expected.algorithm)
    digests = {name: hashlib.new(name) for name in algorithms}
    size = 0
    try:
        with store.open_read(entry) as fh:
            while chunk := fh.read(1 << 20):
                size += len(chunk)
                for d in digests.values():
                    d.update(chunk)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if size != meta.size:
        return f"size {size}, recorded {meta.size}"
    found = {name: d.hexdigest() for name, d in digests.items()}
    if meta.sha256 and found["sha256"] != meta.sha256:
        return f"sha256 {found['sha256']}, recorded {meta.sha256}"
    if expected is not None:  # kept or not: `keep` is no reason to trust the bytes
        source = f" ({expected.source})" if expected.source else ""
        if expected.size is not None and expected.size != size:
            return f"size {size}, the index says {expected.size}{source}"
        if expected.algorithm and found[expected.algorithm] != (expected.digest or "").lower():
            return f"{expected.algorithm} differs from the index{source}"
    return None


def scan(
    store: Store,
    expected: Callable[[str], Expect | None],
    fix: bool,
    progress: Progress | None = None,
) -> tuple[VerifyReport, list[str]]:
    """Check every entry (blocking); returns the report and the bad keys."""
    started = time.monotonic()
    report = VerifyReport(fix)
    bad: list[str] = []
    for entry in store.entries():
        problem = check_entry(store, entry, expected(entry.key))
        report.checked += 1
        report.bytes += entry.meta.size
        if problem is None:
            report.ok += 1
        else:
            report.bad += 1
            bad.append(entry.key)
            if len(report.problems) < MAX_LISTED:
                report.problems.append({"key": entry.key, "problem": problem})
        if progress is not None:
            progress(report.checked, report.bytes)
    report.seconds = round(time.monotonic() - started, 2)
    return report, bad


async def verify(
    engine: Any,
    expected: Callable[[str], Expect | None],
    fix: bool = False,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check the whole store in a worker thread; with `fix`, remove the bad entries."""
    report, bad = await asyncio.to_thread(scan, engine.store, expected, fix, progress)
    if fix:
        for key in bad:
            if not engine.downloading_key(key):
                await engine.evict(key)  # this disk's bad copy
                report.removed += 1
    return report
