"""The status page (`/` for browsers), its JSON twin (`/api/status`) and scrape-time metrics.

One snapshot feeds all three. The page is rendered here, on the server, as plain
HTML with an inline SVG chart; a few lines of script re-fetch the page's <main>
every few seconds and swap it in, so it stays current without a full reload.
"""

from __future__ import annotations

import asyncio
import bisect
import html
import logging
import time
from collections.abc import Iterator, Mapping
from itertools import pairwise
from typing import Any, Protocol
from urllib.parse import unquote

from prometheus_client.core import Metric

from appliance import __version__
from appliance.cache.engine import Figures
from appliance.cache.refusals import REASONS, SOURCES
from appliance.cache.store import Store
from appliance.config import human_size
from appliance.metrics import HISTORY_FIELDS, Metrics, counter, gauge
from appliance.streams.layout import stored_image_ids, synced_feeds
from appliance.targets.catalog import CatalogError, feed_images, version_key
from appliance.web import clients, clouds, glance, holdings, maintenance, use

log = logging.getLogger(__name__)

IMAGES_TTL = 30.0  # seconds the image inventory (read from disk) is reused
BUSIEST = 10  # packages the status page lists
SHARED_OPERATIONS = ("hits", "misses", "uploads", "errors", "corrupt")  # shared store counts


class Jobs(Protocol):
    """The scheduler's state, as the status page reads it."""

    running: bool
    last_run: float | None
    progress: Mapping[str, Any] | None  # the running sync: feed, items/bytes done and total
    last_success: float | None
    last: Mapping[str, Any]  # feed -> FeedOutcome
    seeding: bool
    seed_last: Mapping[str, Any]  # target -> TargetOutcome
    sync_stats: Mapping[str, Mapping[str, Any]]
    seed_stats: Mapping[str, Mapping[str, Any]]
    config: Any  # the configuration in force: the seed targets the matrix shows


class Source(Protocol):
    """What the status page, /api/status and the metrics scrape read of the appliance:
    figures and read-only state, never the parts themselves."""

    metrics: Metrics
    jobs: Jobs
    store: Store  # read for the image inventory

    def cache_figures(self) -> Figures: ...
    def integrity(self) -> dict[str, Any]: ...  # refused connections, apt indexes, last runs
    def usage(self) -> dict[str, Any]: ...  # the port, the remaps, the accepted upstreams
    def recent_events(self) -> list[dict[str, Any]]: ...  # newest first
    def client_figures(self, n: int) -> list[dict[str, Any]]: ...  # busiest, last 24 h
    async def cached(self) -> dict[str, Any]: ...  # what the cache holds, per group (holdings)


class Inventory:
    """Mirrored products/versions per feed and where each version is seeded (cached)."""

    def __init__(self) -> None:
        self.value: list[dict[str, Any]] = []
        self.at = 0.0
        self.generation: Any = None
        self.clouds = clouds.Clouds()  # the images x seed targets matrix

    async def get(self, source: Source) -> list[dict[str, Any]]:
        jobs = source.jobs
        # recomputed after each sync or seed of this service, and every IMAGES_TTL
        # (a `sync`/`seed` run from the command line changes the disk too)
        generation = (jobs.last_run, sum(s["runs"] for s in jobs.seed_stats.values()))
        if generation != self.generation or time.monotonic() - self.at > IMAGES_TTL:
            self.value = await asyncio.to_thread(_inventory, source.store)
            self.at, self.generation = time.monotonic(), generation
        return self.value

    def invalidate(self) -> None:
        self.at = 0.0
        self.clouds.invalidate()


def _inventory(store: Store) -> list[dict[str, Any]]:
    seeded: dict[tuple[str, str], list[dict[str, str]]] = {}
    for doc in stored_image_ids(store):
        target = doc["content_id"].rsplit(":", 1)[-1]
        for pname, product in doc.get("products", {}).items():
            for vname, version in product.get("versions", {}).items():
                for item in version.get("items", {}).values():
                    seeded.setdefault((pname, vname), []).append(
                        {"target": target, "region": item.get("region", ""), "id": item["id"]}
                    )
    rows = []
    for feed in synced_feeds(store):
        try:
            images = feed_images(store, feed)
        except CatalogError as exc:  # unreadable (or being rewritten): say so, not hide it
            log.info("status: feed %s: %s", feed, exc)
            rows.append({"feed": feed, "product": None, "versions": [], "error": str(exc)})
            continue
        products: dict[str, dict[str, dict[str, Any]]] = {}
        for i in images:
            v = products.setdefault(i.product, {}).setdefault(
                i.version, {"version": i.version, "items": 0, "bytes": 0}
            )
            v["items"] += 1
            v["bytes"] += i.size
        for pname in sorted(products):
            versions = sorted(products[pname].values(), key=lambda v: version_key(v["version"]))
            for v in reversed(versions):
                v["seeded"] = seeded.get((pname, v["version"]), [])
            rows.append({"feed": feed, "product": pname, "versions": versions[::-1]})
    return rows


def hit_ratio(requests: Mapping[str, Mapping[str, int]]) -> float | None:
    """Answers from the cache (fresh, revalidated or stale) among the apt and image
    answers that were hits or misses; None before there is any."""
    hits = misses = 0
    for service in ("apt", "images"):
        counts = requests.get(service, {})
        hits += sum(counts.get(r, 0) for r in ("hit", "revalidated", "stale"))
        misses += counts.get("miss", 0)
    return round(hits / (hits + misses), 4) if hits + misses else None


async def snapshot(source: Source, inventory: Inventory, busiest: int = BUSIEST) -> dict[str, Any]:
    """The status document of this process. `busiest`: how many packages it lists (a
    sibling merging every worker's asks for more, to add them up before it keeps 10)."""
    m = source.metrics
    totals = m.totals
    jobs = source.jobs
    cache = source.cache_figures()
    images = await inventory.get(source)
    return {
        "version": __version__,
        "uptime_seconds": round(time.time() - m.started, 1),
        "requests": totals.requests,
        "hit_ratio": hit_ratio(totals.requests),
        "bytes": {"cache": totals.bytes_cache, "upstream": totals.bytes_upstream},
        "history": m.points(),  # cumulative counts, one point a minute; the last is now
        "upstreams": {k: v.as_dict() for k, v in sorted(m.upstreams.items())},
        "requests_last_minute": m.recent_requests(),  # requests/s, once summed (glance)
        "busiest": [{"package": n, "requests": c} for n, c in m.busiest(busiest)],
        "downloads": cache.downloads,
        "cache": {
            "bytes": cache.bytes,
            "entries": cache.entries,
            "max_bytes": cache.max_bytes,
            "evictions": cache.evictions,
            "from_peers": cache.from_peers,
            "shared_store": cache.shared_store,
        },
        "images": images,
        "clouds": await inventory.clouds.get(source.store, jobs, images),
        "cached": await source.cached(),
        "use": source.usage(),
        "events": source.recent_events(),
        # a sibling merging every worker's asks for every address (see `busiest`)
        "clients": source.client_figures(clients.TOP if busiest == BUSIEST else clients.LIMIT),
        "sync": {
            "running": jobs.running,
            "progress": jobs.progress,
            "last_run": jobs.last_run,
            "last_success": jobs.last_success,
            "feeds": {n: o.as_dict() for n, o in jobs.last.items()},
        },
        "seed": {
            "running": jobs.seeding,
            "targets": {n: o.as_dict() for n, o in jobs.seed_last.items()},
        },
        "integrity": {
            "rejected_downloads": cache.rejected,
            "fleet_refused": cache.refused or {},
            "not_stored": cache.not_stored,
            **source.integrity(),
        },
    }


def scrape(source: Source) -> Iterator[Metric]:
    cache, jobs = source.cache_figures(), source.jobs
    extra = source.integrity()
    flights = cache.downloads
    size = gauge("cache_size_bytes", "Bytes of evictable cached files")
    size.add_metric([], cache.bytes)
    entries = gauge("cache_entries", "Evictable cached files")
    entries.add_metric([], cache.entries)
    limit = gauge("cache_max_size_bytes", "Configured cache.max_size")
    limit.add_metric([], cache.max_bytes)
    evictions = counter("cache_evictions", "Files evicted to stay under cache.max_size")
    evictions.add_metric([], cache.evictions)
    downloads = gauge("downloads_in_flight", "Upstream downloads in progress")
    downloads.add_metric([], len(flights))
    waiting = gauge("download_clients", "Clients streaming a download in progress")
    waiting.add_metric([], sum(int(f["clients"]) for f in flights))  # type: ignore[call-overload]
    peers = counter(
        "peer_streams",
        "Answers streamed from the download of the worker or unit holding the fetch lease",
    )
    peers.add_metric([], cache.from_peers)
    yield from (size, entries, limit, evictions, downloads, waiting, peers)
    if (shared := cache.shared_store) is not None:
        up = gauge("shared_store_up", "1 while the shared object store answers, else 0")
        up.add_metric([], 1 if shared["up"] else 0)
        ops = counter(
            "shared_store_operations",
            "What the shared object store did for this unit (hit: copied to disk)",
            ["result"],
        )
        for count, label in zip(
            SHARED_OPERATIONS, ("hit", "miss", "upload", "error", "corrupt"), strict=True
        ):
            ops.add_metric([label], shared[count])  # type: ignore[arg-type]
        pending = gauge("shared_store_pending_uploads", "Shared entries not uploaded yet")
        pending.add_metric([], shared["pending_uploads"])  # type: ignore[arg-type]
        yield from (up, ops, pending)
    rejected = counter(
        "integrity_rejected_downloads",
        "Upstream answers refused for a wrong size or digest (never cached, never completed)",
    )
    rejected.add_metric([], cache.rejected)
    passed = counter(
        "not_stored_responses", "Upstream answers passed to a client without storing", ["reason"]
    )
    for reason in ("disk-full", "conflict", "store-error", "unverifiable", "encoded"):
        passed.add_metric([reason], cache.not_stored.get(reason, 0))
    refused = counter(
        "connections_refused",
        "Connections turned away (limits.connections_per_client, TLS handshake caps)",
    )
    refused.add_metric([], extra["connections_refused"])
    indexed = gauge("apt_index_files", "Files listed by the cached apt indexes")
    indexed.add_metric([], extra["apt_indexes"]["files"])
    yield from (rejected, passed, refused, indexed)
    fleet = counter(
        "fleet_refused",
        "What crossing the unit's boundary was refused: bucket objects it cannot tie to "
        "upstream, peers' streams that are not the file, leases no longer its own",
        ["source", "reason"],
    )
    counts = cache.refused or {}
    for source in SOURCES:
        for reason in REASONS:
            if (n := counts.get(f"{source}/{reason}")) is not None or source == "bucket":
                fleet.add_metric([source, reason], n or 0)
    yield fleet
    for kind, stats, label in (
        ("sync", jobs.sync_stats, "feed"),
        ("seed", jobs.seed_stats, "target"),
    ):
        runs = counter(f"{kind}_runs", f"{kind.title()} runs", [label])
        failures = counter(f"{kind}_failures", f"{kind.title()} runs that failed", [label])
        duration = gauge(f"{kind}_duration_seconds", f"Duration of the last {kind}", [label])
        success = gauge(
            f"{kind}_last_success_timestamp_seconds", f"When a {kind} last succeeded", [label]
        )
        for name, s in sorted(stats.items()):
            runs.add_metric([name], s["runs"])
            failures.add_metric([name], s["failures"])
            duration.add_metric([name], s["seconds"])
            if s["last_success"] is not None:
                success.add_metric([name], s["last_success"])
        yield from (runs, failures, duration, success)
    mirrored = gauge("images_mirrored", "Image items kept on disk by the last sync", ["feed"])
    for name, o in sorted(jobs.last.items()):
        mirrored.add_metric([name], o.count("fetched") + o.count("present"))
    seeded = gauge("images_seeded", "Images present in a target after its last seed", ["target"])
    for name, o in sorted(jobs.seed_last.items()):
        seeded.add_metric([name], len(o.images))
    yield from (mirrored, seeded)


# -- HTML ------------------------------------------------------------------------------------

# Each table's columns: (heading, kind). "name": one line, ellipsised (the row's `title`
# holds it whole); "text": wraps anywhere; "num", "small" (a few digits), "count", "when",
# "size": right-aligned, never wrapped; "short", "label", "time": a word. Kinds in `_WIDTHS`
# get that width, the others share the rest, so a fixed-layout table always fits its card.
# Phone widths stack the rows as "heading: value", the headings coming from the CSS below
# (cells stay plain `<td>`s, so the fragment re-fetched every 5 s does not repeat them).
_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "requests": (("result", "label"), ("apt", "count"), ("images", "count"), ("feed", "count")),
    "upstreams": (
        ("upstream", "name"),
        ("requests", "num"),
        ("errors", "num"),
        ("median", "small"),  # time to the headers, the last 64 answers
        ("state", "short"),
        ("last ok", "when"),
        ("last error", "text"),
    ),
    "busiest": (("package", "name"), ("requests", "num")),
    "downloads": (
        ("file", "name"),
        ("progress", "text"),
        ("clients", "small"),
        ("running", "small"),
    ),
    "clouds": (("image", "name"), ("version", "text")),  # then a column per target, clouds.py
    "jobs": (
        ("job", "short"),
        ("name", "name"),
        ("result", "text"),
        ("took", "num"),
        ("finished", "when"),
    ),
    "integrity": (("", "text"), ("", "text")),
    "events": (("time (UTC)", "time"), ("level", "short"), ("where", "name"), ("what", "text")),
    "clients": (
        ("address", "name"),
        ("client", "text"),
        ("requests", "num"),
        ("bytes", "size"),
        ("last seen", "when"),
    ),
    "cached": (
        ("distribution", "name"),
        ("files", "num"),
        ("bytes", "size"),
        ("hits", "num"),
        ("last use", "when"),
    ),
    "cached-images": (
        ("feed", "name"),
        ("images", "small"),
        ("bytes", "size"),
        ("hits", "num"),
        ("last use", "when"),
    ),
}
_SELECTORS = {"events": "#events", "clients": "#clients"}  # else .t-<kind>, see _table
_STACKED = ("upstreams", "downloads", "clouds", "jobs", "events", "clients")  # many columns
_STACKED += ("cached", "cached-images")  # what is cached (holdings)
_WIDTHS = {
    "num": "7em",  # 10 digits
    "small": "5.5em",
    "when": "8em",  # "1439 min ago"
    "size": "7.5em",
    "short": "5.5em",
    "time": "7em",
    "label": "7.5em",
}
_RIGHT = ("num", "small", "count", "when", "size")  # right-aligned, never wrapped


def _table_css() -> str:
    """Per-table rules: column widths and alignment, which cells ellipsise, and the phone
    layout's "heading: value" rows."""
    stacked = [_SELECTORS.get(k, f".t-{k}") for k in _STACKED]

    def each(suffix: str) -> str:
        return ",".join(f"{t}{suffix}" for t in stacked)

    rules, clip, right, labels = [], [], [], []
    for kind, cols in _TABLES.items():
        table = _SELECTORS.get(kind, f".t-{kind}")
        for i, (heading, col) in enumerate(cols, 1):
            cell = f"{table} td:nth-child({i})"
            if col in _WIDTHS:  # a fixed layout takes the widths from the first row
                rules.append(f"{table} th:nth-child({i}){{width:{_WIDTHS[col]}}}")
            if col in _RIGHT:
                right += [cell, f"{table} th:nth-child({i})"]
            if col == "name":
                clip.append(cell)
            if kind in _STACKED:
                labels.append(f'{cell}::before{{content:"{heading}"}}')
    return (
        "".join(rules) + f"{','.join(right)}{{text-align:right;white-space:nowrap;"
        "font-variant-numeric:tabular-nums}"
        f"{','.join(clip)}{{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}}"
        "@media(max-width:40rem){"
        # a phone has no pointer to show a title: names wrap, whole
        f"{','.join(clip)}{{white-space:normal}}"
        f"{each('')},{each(' tbody')},{each(' tr')},{each(' td')}{{display:block;width:auto}}"
        f"{each(' tr:has(th)')}{{display:none}}"
        f"{each(' tr')}{{border-bottom:1px solid #dde;padding:.25rem 0}}"
        f"{each(' td:nth-child(n)')}{{border:0;padding:.05rem .2rem;text-align:right;"
        "white-space:normal;overflow:visible}"
        f"{each(' td::before')}{{float:left;margin-right:1rem;color:#667}}" + "".join(labels) + "}"
    )


_CSS = (
    "*{box-sizing:border-box}"
    "body{margin:0;font:15px/1.4 system-ui,sans-serif;color:#1d2330;background:#f4f6f9}"
    "header{background:#1d2330;color:#fff;padding:.7rem 1rem;display:flex;flex-wrap:wrap;"
    "gap:.3rem 1rem;align-items:baseline;overflow-wrap:anywhere}"
    "header h1{font-size:1.15rem;margin:0}header span{opacity:.75;font-size:.85rem}"
    # cards in a grid: as many 24rem columns as fit, a phone gets one; a card never
    # grows past its column (min-width:0), its text wraps rather than pushes
    "main{padding:.8rem;display:grid;gap:.8rem;align-items:start;grid-auto-flow:row dense;"
    "grid-template-columns:repeat(auto-fill,minmax(min(100%,24rem),1fr))}"
    "section{min-width:0;background:#fff;border-radius:8px;padding:.7rem .9rem;"
    "box-shadow:0 1px 2px #0002;overflow-wrap:anywhere}"
    "main>section:first-child{grid-column:1/-1}"
    "@media(min-width:56rem){section.wide{grid-column:span 2}}"  # 2 columns fit from here
    "h2{font-size:.95rem;margin:.1rem 0 .5rem;color:#445}"
    ".tiles{display:grid;gap:.8rem;"
    "grid-template-columns:repeat(auto-fill,minmax(min(100%,10rem),1fr))}"
    ".tile b{display:block;font-size:1.5rem}.tile small{color:#667}"
    "table{border-collapse:collapse;width:100%;font-size:.85rem;table-layout:fixed}"
    "td,th{padding:.2rem .4rem;text-align:left;vertical-align:top;border-bottom:1px solid #eee}"
    "th{white-space:nowrap;color:#445}"
    "td .why{display:block;white-space:normal}"  # an error in a name column wraps
    ".ok{color:#17803d}.bad{color:#b42318}.muted{color:#889}"
    "svg{width:100%;height:auto}" + glance.CSS + _table_css() + use.CSS + maintenance.CSS
)

_SCRIPT = """
setInterval(async () => {
  try {
    const r = await fetch(location.pathname, {headers: {'X-Status-Fragment': '1'}});
    if (r.ok) document.querySelector('main').innerHTML = await r.text();
  } catch (e) { /* the next refresh will try again */ }
}, 5000);
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _bytes(n: float | None) -> str:
    """IEC, as the configuration writes sizes; a number and its unit never wrap apart."""
    return "-" if n is None else human_size(n).replace(" ", "\u00a0")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(0, int(time.time() - ts))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


CHARTS = (  # id, title, span, one bar per, a time tick every (seconds)
    ("hour", "Last hour", 3600, 60, 900),
    ("day", "Last 24 h", 86400, 900, 4 * 3600),
)
CHART_COLOURS = {"cache": "#3b82f6", "upstream": "#f59e0b", "ratio": "#17803d"}
CHART_HEIGHT = 196  # px: the plot, then the time axis under it
PLOT_TOP, PLOT_HEIGHT = 8, 160  # px


def _chart(history: list[dict[str, float]]) -> str:
    """The last hour (a bar a minute) and the last 24 h (a bar per 15 min) of the history
    (cumulative points, the last now): bytes served from the cache and fetched upstream,
    stacked, and the hit ratio as a line; times in UTC. Sizes are px whatever the page's
    width (only the plot stretches), so the text stays readable on a phone."""
    if not history:
        return '<p class="muted">No history yet.</p>'
    return "".join(_figure(history, *chart) for chart in CHARTS)


def _buckets(
    history: list[dict[str, float]], start: float, step: int, n: int
) -> list[dict[str, float]]:
    """What each of `n` intervals from `start` added: the counts at its end less those at
    its start (the latest point before each; before the first point, the first's values:
    what a history does not cover is never shown as traffic)."""
    times = [p["t"] for p in history]

    def at(edge: float) -> dict[str, float]:
        return history[max(0, bisect.bisect_left(times, edge) - 1)]

    ends = [at(start + i * step) for i in range(n + 1)]
    return [{k: max(0, b[k] - a[k]) for k in HISTORY_FIELDS} for a, b in pairwise(ends)]


def _figure(
    history: list[dict[str, float]], key: str, title: str, span: int, step: int, tick: int
) -> str:
    """One chart: a bar per `step` seconds over the `span` that ends with now's interval,
    a time tick every `tick` seconds, and a caption that sums the window."""
    now = history[-1]["t"]
    end = (now // step + 1) * step  # the interval of now is the last bar
    start, n = end - span, span // step
    buckets = _buckets(history, start, step, n)
    top = 1024.0  # the bytes axis: a power of two (IEC), its half labelled too
    while top < max(b["bytes_cache"] + b["bytes_upstream"] for b in buckets):
        top *= 2
    bars: list[str] = []
    steps: list[float | None] = []  # the hit ratio's height in each interval (None: no answer)
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
    lines: list[str] = []
    dots: list[str] = []
    run: list[str] = []
    last = 0.0
    for i, y in enumerate([*steps, None]):
        if y is not None:
            run += [f"{i},{y:.1f}", f"{i + 1},{y:.1f}"]
            last = y
            continue
        if len(run) == 2:  # one interval alone: its line is a bar wide, a dot shows it
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
    text = (
        'font-size="12" fill="#445" paint-order="stroke" stroke="#fff" stroke-width="3" '
        'stroke-linejoin="round"'
    )
    bottom = PLOT_TOP + PLOT_HEIGHT
    grid, values = [], []
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * PLOT_HEIGHT
        grid.append(f'<line x1="0" x2="100%" y1="{y:g}" y2="{y:g}" stroke="#dde"/>')
        if frac:
            values.append(
                f'<text class="value-tick" x="3" y="{y + 13:g}" {text}>'
                f"{_e(human_size(top * frac))}</text>"
                f'<text class="value-tick" x="100%" dx="-3" y="{y + 13:g}" '
                f'text-anchor="end" {text}>{frac * 100:.0f} %</text>'
            )
    ticks = []
    for t in range(int(-(-start // tick) * tick), int(end) + 1, tick):
        x = (t - start) / span * 100
        anchor = "start" if x < 6 else "end" if x > 94 else "middle"
        ticks.append(
            f'<line x1="{x:.2f}%" x2="{x:.2f}%" y1="{bottom}" y2="{bottom + 4}" stroke="#889"/>'
            f'<text class="time-tick" x="{x:.2f}%" y="{bottom + 17}" text-anchor="{anchor}" '
            f'font-size="12" fill="#445">{time.strftime("%H:%M", time.gmtime(t))}</text>'
        )
    cache = sum(b["bytes_cache"] for b in buckets)
    upstream = sum(b["bytes_upstream"] for b in buckets)
    hits, misses = sum(b["hits"] for b in buckets), sum(b["misses"] for b in buckets)
    ratio = f"{hits / (hits + misses) * 100:.1f}\u00a0%" if hits + misses else "-"
    per = "minute" if step == 60 else f"{step // 60} min"
    summary = (
        f'<span class="chart-sum">{_e(_bytes(cache))} from cache, {_e(_bytes(upstream))} '
        f"from upstream, {hits} hits, {misses} misses, hit ratio {ratio}</span>"
    )
    swatch = "display:inline-block;vertical-align:middle;margin-right:.3em;"
    legend = "".join(
        f'<span><i style="{swatch}{size}background:{CHART_COLOURS[c]}"></i>{_e(label)}</span>'
        for c, size, label in (
            ("cache", "width:.8em;height:.8em;", "bytes served from cache"),
            ("upstream", "width:.8em;height:.8em;", "bytes fetched upstream"),
            ("ratio", "width:1.2em;height:3px;", "hit ratio (right axis)"),
        )
    )
    return (
        f'<figure class="chart" id="chart-{key}" style="margin:0 0 .8rem">'
        f'<figcaption style="font-size:.85rem"><b>{_e(title)}</b>, per {per}, UTC: '
        f"{summary}</figcaption>"
        '<div class="legend" style="display:flex;flex-wrap:wrap;gap:.1rem 1rem;'
        f'font-size:.8rem;color:#445;margin:.2rem 0">{legend}</div>'
        f'<svg width="100%" height="{CHART_HEIGHT}" role="img" '
        f'style="display:block;width:100%;height:{CHART_HEIGHT}px" '
        f'aria-label="{_e(title)}: bytes from cache and upstream per {per}, hit ratio">'
        f"{''.join(grid)}"
        f'<svg x="0" y="{PLOT_TOP}" width="100%" height="{PLOT_HEIGHT}" '
        f'style="width:100%;height:{PLOT_HEIGHT}px;overflow:visible" '
        f'viewBox="0 0 {n} 1000" preserveAspectRatio="none">{"".join(bars)}{"".join(lines)}'
        f"</svg>{''.join(dots)}{''.join(values)}{''.join(ticks)}</svg></figure>"
    )


def _table(kind: str, rows: list[list[Any]], empty: str, head: bool = True) -> str:
    """A table laid out by `_TABLES[kind]`; a row's `title` holds its names whole (the
    cells may cut them)."""
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    cols = _TABLES[kind]
    n = [" class=n" if col in _RIGHT else "" for _, col in cols]  # marks a count for readers
    names = [i for i, (_, col) in enumerate(cols) if col == "name"]
    ths = "".join(f"<th{n[i]}>{_e(h)}</th>" for i, (h, _) in enumerate(cols))
    thead = f"<thead><tr>{ths}</tr></thead>" if head else ""
    body = []
    for row in rows:
        title = " · ".join(str(row[i]) for i in names if not isinstance(row[i], _Html))
        body.append(
            (f'<tr title="{_e(title)}">' if title else "<tr>")
            + "".join(
                f"<td{n[i]}>{c if isinstance(c, _Html) else _e(c)}</td>" for i, c in enumerate(row)
            )
            + "</tr>"
        )
    return f'<table class="t-{kind}">' + f"{thead}<tbody>{''.join(body)}</tbody></table>"


class _Html(str):
    """Already-escaped markup for a table cell."""


def _state(ok: bool, text: str) -> _Html:
    return _Html(f'<span class="{"ok" if ok else "bad"}">{_e(text)}</span>')


def _problem(text: str) -> _Html:
    """An error in a name column: wraps, whole, where names are cut."""
    return _Html(f'<span class="bad why">{_e(text)}</span>')


def _name(quoted: str) -> str:
    """A file name as the request spelled it (`bash_5.2.15-2%2bb13_amd64.deb`), readable;
    escaped later, like every upstream-controlled string."""
    return unquote(quoted)


def render_main(s: dict[str, Any]) -> str:
    req = s["requests"]
    ratio = "-" if s["hit_ratio"] is None else f"{s['hit_ratio'] * 100:.1f} %"
    tiles = (
        f'<div class="tile"><b id="hit-ratio">{ratio}</b>'
        "<small>hit ratio (apt + images)</small></div>"
        f'<div class="tile"><b id="bytes-saved">{_bytes(s["bytes"]["cache"])}</b>'
        f"<small>served from cache (upstream saved)</small></div>"
        f'<div class="tile"><b id="bytes-upstream">{_bytes(s["bytes"]["upstream"])}</b>'
        f"<small>fetched and passed on</small></div>"
        f'<div class="tile"><b id="cache-size">{_bytes(s["cache"]["bytes"])}</b>'
        f"<small>cache, {s['cache']['entries']} files of "
        f"{_bytes(s['cache']['max_bytes'])}</small></div>"
    )
    if (shared := s["cache"].get("shared_store")) is not None:
        state = "up" if shared["up"] else f"unavailable: {shared['problem']}"
        tiles += (
            f'<div class="tile"><b id="shared-store">{_state(shared["up"], state)}</b>'
            f"<small>shared store {_e(shared['bucket'])}: {shared['hits']} copied here, "
            f"{shared['uploads']} uploaded</small></div>"
        )
    tiles += glance.tiles(s)
    results = ["hit", "miss", "revalidated", "stale", "refused", "error"]
    # a row per result, a column per service: six results never fit a phone side by side
    services = [h for h, _ in _TABLES["requests"][1:]]
    traffic = _table(
        "requests",
        [
            [r, *(_Html(f'<span id="req-{svc}-{r}">{req[svc][r]}</span>') for svc in services)]
            for r in results
        ],
        "",
    )
    upstreams = _table(
        "upstreams",
        [
            [
                name,
                u["requests"],
                u["errors"],
                glance.latency(u.get("median_seconds")),
                _Html(glance.upstream_state(u.get("state"))),
                _ago(u["last_ok"]),
                _state(False, f"{u['last_error']} {_ago(u['last_error_at'])}")
                if u["last_error"]
                else "-",
            ]
            for name, u in s["upstreams"].items()
        ],
        "No upstream requests yet.",
    )
    busiest = _table(
        "busiest",
        [[_name(b["package"]), b["requests"]] for b in s["busiest"]],
        "No package downloads yet.",
    )
    downloads = _table(
        "downloads",
        [
            [
                _name(d["key"].rsplit("/", 1)[-1]),
                f"{_bytes(d['written'])} of {_bytes(d['total'])}"
                if d["total"]
                else _bytes(d["written"]),
                d["clients"],
                f"{d['seconds']} s",
            ]
            for d in s["downloads"]
        ],
        "Nothing downloading.",
    )
    matrix = clouds.render(s.get("clouds"), _TABLES["clouds"])
    jobs = []
    for name, o in s["sync"]["feeds"].items():
        jobs.append(
            [
                "sync",
                name,
                _state(o["ok"], "ok" if o["ok"] else str(o["error"])),
                f"{o['seconds']:.1f} s",
                _ago(s["sync"]["last_run"]),
            ]
        )
    for name, o in s["seed"]["targets"].items():
        jobs.append(
            [
                "seed",
                name,
                _state(o["ok"], "ok" if o["ok"] else str(o["error"])),
                f"{o['seconds']:.1f} s",
                _ago(o.get("finished")),
            ]
        )
    results_table = _table("jobs", jobs, "No sync or seed has run yet.")
    integrity = _integrity(s["integrity"])
    return (
        f'<section><h2>At a glance</h2><div class="tiles">{tiles}</div></section>'
        f'<section class="wide"><h2>Over time</h2>{_chart(s["history"])}</section>'
        f"<section><h2>Requests</h2>{traffic}</section>"
        f'<section class="wide"><h2>Upstream health</h2>{upstreams}</section>'
        f"<section><h2>Busiest packages</h2>{busiest}</section>"
        f"<section><h2>Downloading now</h2>{downloads}</section>"
        f'<section class="wide" id="images-and-clouds"><h2>Images and clouds</h2>{matrix}</section>'
        f'<section class="wide"><h2>Last sync and seed</h2>{results_table}</section>'
        '<section class="wide" id="cached"><h2>What is cached</h2>'
        f"{holdings.render(s.get('cached'), _table, _bytes, _ago)}</section>"
        f"<section><h2>Integrity</h2>{integrity}</section>"
        f'<section class="wide"><h2>Use it</h2>{_use(s.get("use"))}</section>'
        f'<section class="wide"><h2>Recent events</h2>{_events(s.get("events") or [])}</section>'
        '<section class="wide"><h2>Clients, last 24 h</h2>'
        f"{_clients(s.get('clients') or [])}</section>"
    )


def _clients(rows: list[dict[str, Any]]) -> str:
    """Which instances use the cache (address, what they run), busiest first."""
    if not rows:
        return "<p>No client requests yet.</p>"
    body = "".join(
        f"<tr><td>{_e(r['address'])}</td><td>{_e(r['agent'])}</td>"
        f'<td class="num">{r["requests"]}</td><td class="num">{_bytes(r["bytes"])}</td>'
        f"<td>{_ago(r.get('last_seen'))}</td></tr>"
        for r in rows
    )
    return (
        '<table id="clients"><tr><th>address</th><th>client</th><th>requests</th>'
        f"<th>bytes</th><th>last seen</th></tr>{body}</table>"
    )


def _events(events: list[dict[str, Any]]) -> str:
    """The last warnings, errors and refused requests (every string escaped: a refused
    request's path is whatever a client sent)."""
    if not events:
        return "<p>No warnings, errors or refused requests.</p>"
    rows = "".join(
        f"<tr><td>{_e(time.strftime('%H:%M:%S', time.gmtime(e.get('time', 0))))}</td>"
        f"<td>{_e(e.get('level', ''))}</td><td>{_e(e.get('source', ''))}</td>"
        f"<td>{_e(e.get('message', ''))}</td></tr>"
        for e in events
    )
    return (
        '<table id="events"><tr><th>time (UTC)</th><th>level</th><th>where</th>'
        f"<th>what</th></tr>{rows}</table>"
    )


def _use(use_: dict[str, Any] | None) -> str:
    """The lines to give apt, LXD and Juju, and what proxy-form requests may name."""
    return use.render(use_)


def _integrity(i: dict[str, Any]) -> str:
    """What was refused or not stored, the index table, the last verify and expiry."""
    not_stored = ", ".join(f"{k} {v}" for k, v in sorted(i["not_stored"].items())) or "none"
    idx = i["apt_indexes"]
    verify, expiry = i["last_verify"], i["last_expiry"]
    rows = [
        [
            "downloads refused (wrong size or digest)",
            _state(not i["rejected_downloads"], str(i["rejected_downloads"])),
        ],
        ["answers passed through, not stored", not_stored],
        ["connections turned away (per-client cap)", i["connections_refused"]],
        [
            "apt indexes checked against",
            f"{idx['indexes']} indexes listing {idx['files']} files"
            + (f", {idx['parsing']} being read" if idx["parsing"] else ""),
        ],
        [
            "last verify",
            _state(
                not verify["bad"],
                f"{verify['bad']} bad of {verify['checked']}, {_ago(verify['at'])}",
            )
            if verify
            else "never (archive-local verify)",
        ],
        [
            "last expiry",
            f"{expiry['expired']} files ({_bytes(expiry['expired_bytes'])}) removed, "
            f"{_ago(expiry['at'])}"
            if expiry
            else "not yet (daily)",
        ],
    ]
    return _table("integrity", rows, "", head=False)


def render_page(s: dict[str, Any]) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>archive-local</title><style>{_CSS}</style></head><body>"
        f"<header><h1>archive-local</h1><span>version {_e(s['version'])}</span>"
        f"<span>up {int(s['uptime_seconds'] // 60)} min</span>"
        '<span><a style="color:#9ec5fe" href="/api/status">JSON</a> · '
        '<a style="color:#9ec5fe" href="/metrics">metrics</a></span></header>'
        f"<main>{render_main(s)}</main>{maintenance.card((s.get('use') or {}).get('port', 0))}"
        f"<script>{_SCRIPT}{use.SCRIPT}{maintenance.SCRIPT}</script></body></html>"
    )
