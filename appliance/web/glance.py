"""The status page's "At a glance": the service's state in a few tiles, and `glance` in
`/api/status`.

Computed from the status document as a client gets it, so under `workers: N` from the
merged one (`merge_status`): the service's figures, never one worker's. "Today" and
"last 24 h" are differences of the history's cumulative points (which outlive restarts),
"since start" the totals; requests/s is what the workers counted in the last minute.
"""

from __future__ import annotations

import bisect
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.config import human_size
from appliance.metrics import RATE_WINDOW

DAY = 86400.0
COLOURS = {"cache": "#3b82f6", "other": "#9aa3b2", "free": "#bfe3c8", "over": "#f3b5ae"}


def disk_usage(path: Path) -> dict[str, int] | None:
    """The file system holding the cache: its size and what an unprivileged writer (the
    service) may still use; None when it cannot be read."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return {"total": st.f_blocks * st.f_frsize, "free": st.f_bavail * st.f_frsize}


def figures(
    doc: Mapping[str, Any], disk: Mapping[str, int] | None, configured: int
) -> dict[str, Any]:
    """The `glance` object of a (merged) status document. `configured`: the worker
    processes the service runs, to say whether all of them answered."""
    history = doc.get("history") or []
    now = history[-1]["t"] if history else None
    today = _between(history, now // DAY * DAY) if now is not None else None
    day = _between(history, now - DAY) if now is not None else None
    cache = doc.get("cache") or {}
    upstreams = doc.get("upstreams") or {}
    recent = int(doc.get("requests_last_minute") or 0)
    return {
        "hit_ratio": {
            "today": _ratio(today),
            "day": _ratio(day),
            "start": doc.get("hit_ratio"),
        },
        "saved": {
            "today": today["bytes_cache"] if today else None,
            "day": day["bytes_cache"] if day else None,
            "start": (doc.get("bytes") or {}).get("cache"),
        },
        "requests_last_minute": recent,
        "requests_per_second": round(recent / RATE_WINDOW, 3),
        "disk": {
            "used": cache.get("bytes"),
            "max": cache.get("max_bytes"),
            "free": disk["free"] if disk else None,
            "total": disk["total"] if disk else None,
        },
        "upstreams": {
            "count": len(upstreams),
            "failing": sorted(n for n, u in upstreams.items() if u.get("state") == "failing"),
        },
        "workers": {"answered": int(doc.get("workers") or 1), "configured": configured},
    }


def _between(history: Sequence[Mapping[str, float]], edge: float) -> dict[str, float]:
    """What the history counted after `edge`: now less the latest point at or before it
    (before the first point, the first: what the history does not cover is not counted)."""
    times = [p["t"] for p in history]
    then = history[max(0, bisect.bisect_right(times, edge) - 1)]
    now = history[-1]
    return {k: max(0, now[k] - then[k]) for k in now if k != "t"}


def _ratio(counts: Mapping[str, float] | None) -> float | None:
    if not counts or not counts["hits"] + counts["misses"]:
        return None
    return round(counts["hits"] / (counts["hits"] + counts["misses"]), 4)


# -- HTML ------------------------------------------------------------------------------------

CSS = (
    ".tile.disk{grid-column:1/-1}"  # the bar takes the tiles' whole row
    ".bar{position:relative;display:flex;height:.9rem;margin:.3rem 0;border-radius:4px;"
    "overflow:hidden;background:#eef0f4}"
    ".bar i{display:block;height:100%;flex-grow:0;flex-shrink:1;min-width:0}"
    ".bar .cap{position:absolute;top:0;bottom:0;width:2px;background:#1d2330}"
    ".legend-disk{display:flex;flex-wrap:wrap;gap:.1rem 1rem;font-size:.8rem;color:#445}"
    ".legend-disk i{display:inline-block;width:.8em;height:.8em;margin-right:.3em;"
    "vertical-align:middle}"
    ".legend-disk .cap-key{width:2px;height:1em;background:#1d2330}"
    ".tile b.word{font-size:1.15rem;line-height:1.9rem}"  # a state, not a number
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _size(n: float | None) -> str:
    return "-" if n is None else human_size(n).replace(" ", "\u00a0")


def _percent(r: float | None) -> str:
    return "-" if r is None else f"{r * 100:.1f}\u00a0%"


def tiles(s: Mapping[str, Any]) -> str:
    """The tiles the status page adds to "At a glance" (hit ratio and bytes saved since
    start are the page's own): ratio and savings today and over 24 h, requests/s,
    upstreams, workers and the disk bar. Every name shown is escaped."""
    g = s.get("glance")
    if not g:
        return ""
    ratio, saved = g["hit_ratio"], g["saved"]
    ups, workers = g["upstreams"], g["workers"]
    if not ups["count"]:
        state, detail = '<span class="muted">none asked</span>', "no upstream request yet"
    elif ups["failing"]:
        state = f'<span class="bad">{len(ups["failing"])} failing</span>'
        detail = "failing: " + ", ".join(_e(n) for n in ups["failing"])
    else:
        state, detail = '<span class="ok">all answering</span>', f"{ups['count']} upstreams"
    everyone = workers["answered"] >= workers["configured"]
    answered = f"{workers['answered']} of {workers['configured']}"
    return (
        f'<div class="tile"><b id="saved-today">{_size(saved["today"])}</b>'
        f'<small>served from cache today (UTC), hit ratio <span id="hit-ratio-today">'
        f"{_percent(ratio['today'])}</span></small></div>"
        f'<div class="tile"><b id="saved-day">{_size(saved["day"])}</b>'
        f'<small>served from cache, last 24 h, hit ratio <span id="hit-ratio-day">'
        f"{_percent(ratio['day'])}</span></small></div>"
        f'<div class="tile"><b id="requests-per-second">{g["requests_per_second"]:g}/s</b>'
        f"<small>requests, last minute ({g['requests_last_minute']})</small></div>"
        f'<div class="tile"><b id="upstream-state" class="word">{state}</b>'
        f"<small>{detail}</small></div>"
        f'<div class="tile"><b id="workers" class="{"ok" if everyone else "bad"}">{answered}'
        f"</b><small>worker processes answered</small></div>" + _disk(g["disk"])
    )


def _disk(d: Mapping[str, Any]) -> str:
    """One bar for the cache's file system: the cache's files, the rest in use, what is
    free, and a mark at the cap (cache.max_size); a cap larger than the disk extends the
    bar (hatched part). Widths are % of the bar, which never outgrows its tile."""
    used, cap, free, total = d["used"] or 0, d["max"] or 0, d["free"], d["total"]
    if total is None or free is None:  # no file system figures: the cache against its cap
        parts = [("cache", used), ("free", max(0, cap - used))]
        scale = max(cap, used, 1)
    else:
        other = max(0, total - free - used)
        parts = [("cache", used), ("other", other), ("free", free)]
        parts.append(("over", max(0, cap - (used + other + free))))
        scale = max(cap, used + other + free, 1)
    titles = {
        "cache": "the cache's files",
        "other": "used by other files",
        "free": "free",
        "over": "cap beyond the disk",
    }
    segments = "".join(
        f'<i class="seg-{k}" title="{titles[k]}" style="flex-basis:{n / scale * 100:.2f}%;'
        f'background:{COLOURS[k]}"></i>'
        for k, n in parts
        if n
    )
    mark = min(cap / scale * 100, 100)
    cap_mark = f'<i class="cap" style="left:min({mark:.2f}%,calc(100% - 2px))"></i>' if cap else ""
    other = max(0, total - free - used) if total is not None and free is not None else None
    labels = [
        ("cache", "disk-used", "cache", used),
        ("cap", "disk-max", "cap", d["max"]),
        ("other", "disk-other", "other files", other),
        ("free", "disk-free", "free", free),
        ("", "disk-total", "file system", total),
    ]
    legend = "".join(
        f'<span>{_swatch(c)}{label} <span id="{i}">{_size(n)}</span></span>'
        for c, i, label, n in labels
    )
    return (
        f'<div class="tile disk"><div class="bar" role="img" aria-label="disk: cache '
        f'{_e(human_size(used))} of cap {_e(human_size(cap))}">{segments}{cap_mark}</div>'
        f'<div class="legend-disk">{legend}</div></div>'
    )


def _swatch(part: str) -> str:
    """A legend's square of a segment's colour, the cap's mark, or nothing."""
    if part == "cap":
        return '<i class="cap-key"></i>'
    return f'<i style="background:{COLOURS[part]}"></i>' if part else ""


def upstream_state(state: str | None) -> str:
    """An upstream's state as the table shows it: coloured markup, escaped."""
    colour = {"ok": "ok", "failing": "bad"}.get(state or "", "muted")
    return f'<span class="{colour}">{_e(state or "unknown")}</span>'


def latency(seconds: float | None) -> str:
    """A median time to the headers: ms below a second."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}\u00a0ms" if seconds < 1 else f"{seconds:.2f}\u00a0s"


def lines(s: Mapping[str, Any]) -> list[str]:
    """`archive-local status`'s lines for the same figures."""
    g = s.get("glance")
    if not g:
        return []
    ratio, saved, d = g["hit_ratio"], g["saved"], g["disk"]
    ups, workers = g["upstreams"], g["workers"]
    if ups["failing"]:
        upstreams = f"{len(ups['failing'])} failing ({', '.join(ups['failing'])})"
    else:
        upstreams = "all answering" if ups["count"] else "none asked yet"
    return [
        "saved: "
        + "; ".join(
            f"{label} {human_size(saved[k]) if saved[k] is not None else '-'} "
            f"(hit ratio {_percent(ratio[k]).replace(chr(160), ' ')})"
            for k, label in (("today", "today"), ("day", "24 h"), ("start", "since start"))
        ),
        f"requests/s {g['requests_per_second']:g} ({g['requests_last_minute']} in the last minute)",
        f"disk: cache {_plain(d['used'])}, cap {_plain(d['max'])}, free {_plain(d['free'])}"
        f" of {_plain(d['total'])}",
        f"upstreams: {upstreams}",
        f"workers: {workers['answered']} of {workers['configured']} answered",
    ]


def _plain(n: float | None) -> str:
    return "-" if n is None else human_size(n)
