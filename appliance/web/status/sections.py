"""The status page's sections, each rendered from its part of the typed status document
(`document`): the tiles, requests, upstreams, busiest packages, downloads, jobs, integrity,
events and clients. Every string from outside (a path, an upstream's error, a client's
agent) is escaped; `Html` marks what is already markup."""

from __future__ import annotations

import time

from appliance.web import glance
from appliance.web.status.document import (
    Busy,
    Client,
    Download,
    Event,
    Integrity,
    Requests,
    Seed,
    StatusDoc,
    Sync,
    Upstream,
)
from appliance.web.status.tables import TABLES, Html, ago, esc, size, state, table, unquoted

RESULTS = ("hit", "miss", "revalidated", "stale", "refused", "error")  # the requests' rows


def tiles(s: StatusDoc) -> str:
    """At a glance: the ratio, bytes saved and fetched, the cache, the shared store."""
    ratio = "-" if s["hit_ratio"] is None else f"{s['hit_ratio'] * 100:.1f} %"
    out = (
        f'<div class="tile"><b id="hit-ratio">{ratio}</b>'
        "<small>hit ratio (apt + images)</small></div>"
        f'<div class="tile"><b id="bytes-saved">{size(s["bytes"]["cache"])}</b>'
        f"<small>served from cache (upstream saved)</small></div>"
        f'<div class="tile"><b id="bytes-upstream">{size(s["bytes"]["upstream"])}</b>'
        f"<small>fetched and passed on</small></div>"
        f'<div class="tile"><b id="cache-size">{size(s["cache"]["bytes"])}</b>'
        f"<small>cache, {s['cache']['entries']} files of "
        f"{size(s['cache']['max_bytes'])}</small></div>"
    )
    if (shared := s["cache"].get("shared_store")) is not None:
        says = "up" if shared["up"] else f"unavailable: {shared['problem']}"
        out += (
            f'<div class="tile"><b id="shared-store">{state(shared["up"], says)}</b>'
            f"<small>shared store {esc(shared['bucket'])}: {shared['hits']} copied here, "
            f"{shared['uploads']} uploaded</small></div>"
        )
    return out + glance.tiles(s)


def requests(req: Requests) -> str:
    """A row per result, a column per service: six results never fit a phone side by side."""
    services = [h for h, _ in TABLES["requests"][1:]]
    return table(
        "requests",
        [
            [r, *(Html(f'<span id="req-{svc}-{r}">{req[svc][r]}</span>') for svc in services)]
            for r in RESULTS
        ],
        "",
    )


def upstreams(ups: dict[str, Upstream]) -> str:
    return table(
        "upstreams",
        [
            [
                name,
                u["requests"],
                u["errors"],
                glance.latency(u.get("median_seconds")),
                Html(glance.upstream_state(u.get("state"))),
                ago(u["last_ok"]),
                state(False, f"{u['last_error']} {ago(u['last_error_at'])}")
                if u["last_error"]
                else "-",
            ]
            for name, u in ups.items()
        ],
        "No upstream requests yet.",
    )


def busiest(rows: list[Busy]) -> str:
    return table(
        "busiest",
        [[unquoted(b["package"]), b["requests"]] for b in rows],
        "No package downloads yet.",
    )


def downloads(rows: list[Download]) -> str:
    return table(
        "downloads",
        [
            [
                unquoted(d["key"].rsplit("/", 1)[-1]),
                f"{size(d['written'])} of {size(d['total'])}" if d["total"] else size(d["written"]),
                d["clients"],
                f"{d['seconds']} s",
            ]
            for d in rows
        ],
        "Nothing downloading.",
    )


def jobs(sync: Sync, seed: Seed) -> str:
    """The last outcome of each feed's sync and each target's seed."""
    rows: list[list[object]] = []
    for kind, outcomes in (("sync", sync["feeds"]), ("seed", seed["targets"])):
        for name, o in outcomes.items():
            finished = sync["last_run"] if kind == "sync" else o.get("finished")
            rows.append(
                [
                    kind,
                    name,
                    state(o["ok"], "ok" if o["ok"] else str(o["error"])),
                    f"{o['seconds']:.1f} s",
                    ago(finished),
                ]
            )
    return table("jobs", rows, "No sync or seed has run yet.")


def clients(rows: list[Client]) -> str:
    """Which instances use the cache (address, what they run), busiest first."""
    if not rows:
        return "<p>No client requests yet.</p>"
    body = "".join(
        f"<tr><td>{esc(r['address'])}</td><td>{esc(r['agent'])}</td>"
        f'<td class="num">{r["requests"]}</td><td class="num">{size(r["bytes"])}</td>'
        f"<td>{ago(r.get('last_seen'))}</td></tr>"
        for r in rows
    )
    return (
        '<table id="clients"><tr><th>address</th><th>client</th><th>requests</th>'
        f"<th>bytes</th><th>last seen</th></tr>{body}</table>"
    )


def events(rows: list[Event]) -> str:
    """The last warnings, errors and refused requests (every string escaped: a refused
    request's path is whatever a client sent)."""
    if not rows:
        return "<p>No warnings, errors or refused requests.</p>"
    body = "".join(
        f"<tr><td>{esc(time.strftime('%H:%M:%S', time.gmtime(e.get('time', 0))))}</td>"
        f"<td>{esc(e.get('level', ''))}</td><td>{esc(e.get('source', ''))}</td>"
        f"<td>{esc(e.get('message', ''))}</td></tr>"
        for e in rows
    )
    return (
        '<table id="events"><tr><th>time (UTC)</th><th>level</th><th>where</th>'
        f"<th>what</th></tr>{body}</table>"
    )


def integrity(i: Integrity) -> str:
    """What was refused or not stored, the index table, the last verify and expiry."""
    not_stored = ", ".join(f"{k} {v}" for k, v in sorted(i["not_stored"].items())) or "none"
    idx = i["apt_indexes"]
    verify, expiry = i["last_verify"], i["last_expiry"]
    rows = [
        [
            "downloads refused (wrong size or digest)",
            state(not i["rejected_downloads"], str(i["rejected_downloads"])),
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
            state(
                not verify["bad"],
                f"{verify['bad']} bad of {verify['checked']}, {ago(verify['at'])}",
            )
            if verify
            else "never (archive-local verify)",
        ],
        [
            "last expiry",
            f"{expiry['expired']} files ({size(expiry['expired_bytes'])}) removed, "
            f"{ago(expiry['at'])}"
            if expiry
            else "not yet (daily)",
        ],
    ]
    return table("integrity", rows, "", head=False)
