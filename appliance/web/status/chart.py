"""The status page's "Over time": the history's last hour and last 24 h as inline SVG,
bytes from the cache and upstream as stacked bars and the hit ratio as a line.

Sizes are px whatever the page's width (only the plot stretches), so the text stays
readable on a phone; times are UTC.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from itertools import pairwise

from appliance.config import human_size
from appliance.metrics import HISTORY_FIELDS
from appliance.web.status.document import Point
from appliance.web.status.tables import esc, size

CHARTS = (  # id, title, span, one bar per, a time tick every (seconds)
    ("hour", "Last hour", 3600, 60, 900),
    ("day", "Last 24 h", 86400, 900, 4 * 3600),
)
CHART_COLOURS = {"cache": "#3b82f6", "upstream": "#f59e0b", "ratio": "#17803d"}
CHART_HEIGHT = 196  # px: the plot, then the time axis under it
PLOT_TOP, PLOT_HEIGHT = 8, 160  # px
TEXT = (  # a label over the plot: a white halo keeps it readable over the bars
    'font-size="12" fill="#445" paint-order="stroke" stroke="#fff" stroke-width="3" '
    'stroke-linejoin="round"'
)
Buckets = list[dict[str, float]]  # what each interval added, by HISTORY_FIELDS


def chart(history: Sequence[Point]) -> str:
    """The last hour (a bar a minute) and the last 24 h (a bar per 15 min) of the history
    (cumulative points, the last now): bytes served from the cache and fetched upstream,
    stacked, and the hit ratio as a line."""
    if not history:
        return '<p class="muted">No history yet.</p>'
    return "".join(_figure(history, *c) for c in CHARTS)


def _buckets(history: Sequence[Point], start: float, step: int, n: int) -> Buckets:
    """What each of `n` intervals from `start` added: the counts at its end less those at
    its start (the latest point before each; before the first point, the first's values:
    what a history does not cover is never shown as traffic)."""
    times = [p["t"] for p in history]

    def at(edge: float) -> Point:
        return history[max(0, bisect.bisect_left(times, edge) - 1)]

    ends = [at(start + i * step) for i in range(n + 1)]
    return [{k: max(0, b[k] - a[k]) for k in HISTORY_FIELDS} for a, b in pairwise(ends)]


def _figure(history: Sequence[Point], key: str, title: str, span: int, step: int, tick: int) -> str:
    """One chart: a bar per `step` seconds over the `span` that ends with now's interval,
    a time tick every `tick` seconds, and a caption that sums the window."""
    now = history[-1]["t"]
    end = (now // step + 1) * step  # the interval of now is the last bar
    start, n = end - span, span // step
    buckets = _buckets(history, start, step, n)
    top = 1024.0  # the bytes axis: a power of two (IEC), its half labelled too
    while top < max(b["bytes_cache"] + b["bytes_upstream"] for b in buckets):
        top *= 2
    bars, steps = _bars(buckets, top)
    lines, dots = _ratio(steps, n)
    grid, values = _scale(top)
    per = "minute" if step == 60 else f"{step // 60} min"
    return (
        f'<figure class="chart" id="chart-{key}" style="margin:0 0 .8rem">'
        f'<figcaption style="font-size:.85rem"><b>{esc(title)}</b>, per {per}, UTC: '
        f"{_summary(buckets)}</figcaption>"
        '<div class="legend" style="display:flex;flex-wrap:wrap;gap:.1rem 1rem;'
        f'font-size:.8rem;color:#445;margin:.2rem 0">{_legend()}</div>'
        f'<svg width="100%" height="{CHART_HEIGHT}" role="img" '
        f'style="display:block;width:100%;height:{CHART_HEIGHT}px" '
        f'aria-label="{esc(title)}: bytes from cache and upstream per {per}, hit ratio">'
        f"{grid}"
        f'<svg x="0" y="{PLOT_TOP}" width="100%" height="{PLOT_HEIGHT}" '
        f'style="width:100%;height:{PLOT_HEIGHT}px;overflow:visible" '
        f'viewBox="0 0 {n} 1000" preserveAspectRatio="none">{bars}{lines}'
        f"</svg>{dots}{values}{_ticks(start, end, span, tick)}</svg></figure>"
    )


def _bars(buckets: Buckets, top: float) -> tuple[str, list[float | None]]:
    """The stacked bars (in the plot's 1000-high viewBox), and the hit ratio's height in
    each interval (None: no answer in it)."""
    bars: list[str] = []
    steps: list[float | None] = []
    for i, b in enumerate(buckets):
        y = 1000.0
        for field, colour in (("bytes_cache", "cache"), ("bytes_upstream", "upstream")):
            if height := b[field] / top * 1000:
                y -= height
                bars.append(
                    f'<rect x="{i + 0.1:g}" y="{y:.1f}" width="0.8" height="{height:.1f}" '
                    f'fill="{CHART_COLOURS[colour]}"/>'
                )
        answered = b["hits"] + b["misses"]
        steps.append(None if not answered else 1000 - b["hits"] / answered * 1000)
    return "".join(bars), steps


def _ratio(steps: list[float | None], n: int) -> tuple[str, str]:
    """The hit ratio: a line over each run of intervals with answers (in the viewBox), and
    a dot (in px, outside it) where a run is one interval, its line only a bar wide."""
    lines: list[str] = []
    dots: list[str] = []
    run: list[str] = []
    last = 0.0
    for i, y in enumerate([*steps, None]):
        if y is not None:
            run += [f"{i},{y:.1f}", f"{i + 1},{y:.1f}"]
            last = y
            continue
        if len(run) == 2:
            cy = PLOT_TOP + last / 1000 * PLOT_HEIGHT
            dots.append(
                f'<circle cx="{(i - 0.5) / n * 100:.2f}%" cy="{cy:.1f}" r="4" '
                f'fill="{CHART_COLOURS["ratio"]}" stroke="#fff" stroke-width="1.5"/>'
            )
        if run:
            lines.append(
                f'<polyline points="{" ".join(run)}" fill="none" '
                f'stroke="{CHART_COLOURS["ratio"]}" stroke-width="2.5" '
                'vector-effect="non-scaling-stroke" stroke-linejoin="round"/>'
            )
            run = []
    return "".join(lines), "".join(dots)


def _scale(top: float) -> tuple[str, str]:
    """Grid lines at 0, half and top; at half and top the bytes (left) and ratio (right)."""
    bottom = PLOT_TOP + PLOT_HEIGHT
    grid, values = [], []
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * PLOT_HEIGHT
        grid.append(f'<line x1="0" x2="100%" y1="{y:g}" y2="{y:g}" stroke="#dde"/>')
        if frac:
            values.append(
                f'<text class="value-tick" x="3" y="{y + 13:g}" {TEXT}>'
                f"{esc(human_size(top * frac))}</text>"
                f'<text class="value-tick" x="100%" dx="-3" y="{y + 13:g}" '
                f'text-anchor="end" {TEXT}>{frac * 100:.0f} %</text>'
            )
    return "".join(grid), "".join(values)


def _ticks(start: float, end: float, span: int, tick: int) -> str:
    """The time axis: a tick and HH:MM every `tick` seconds (UTC), kept inside at the ends."""
    bottom = PLOT_TOP + PLOT_HEIGHT
    ticks = []
    for t in range(int(-(-start // tick) * tick), int(end) + 1, tick):
        x = (t - start) / span * 100
        anchor = "start" if x < 6 else "end" if x > 94 else "middle"
        ticks.append(
            f'<line x1="{x:.2f}%" x2="{x:.2f}%" y1="{bottom}" y2="{bottom + 4}" stroke="#889"/>'
            f'<text class="time-tick" x="{x:.2f}%" y="{bottom + 17}" text-anchor="{anchor}" '
            f'font-size="12" fill="#445">{time.strftime("%H:%M", time.gmtime(t))}</text>'
        )
    return "".join(ticks)


def _summary(buckets: Buckets) -> str:
    """The caption's sums over the window."""
    cache = sum(b["bytes_cache"] for b in buckets)
    upstream = sum(b["bytes_upstream"] for b in buckets)
    hits, misses = sum(b["hits"] for b in buckets), sum(b["misses"] for b in buckets)
    ratio = f"{hits / (hits + misses) * 100:.1f}\u00a0%" if hits + misses else "-"
    return (
        f'<span class="chart-sum">{esc(size(cache))} from cache, {esc(size(upstream))} '
        f"from upstream, {hits} hits, {misses} misses, hit ratio {ratio}</span>"
    )


def _legend() -> str:
    swatch = "display:inline-block;vertical-align:middle;margin-right:.3em;"
    return "".join(
        f'<span><i style="{swatch}{dims}background:{CHART_COLOURS[c]}"></i>{esc(label)}</span>'
        for c, dims, label in (
            ("cache", "width:.8em;height:.8em;", "bytes served from cache"),
            ("upstream", "width:.8em;height:.8em;", "bytes fetched upstream"),
            ("ratio", "width:1.2em;height:3px;", "hit ratio (right axis)"),
        )
    )
