"""The status page's tables: each table's columns and the CSS they imply, the table
itself (every cell escaped unless it is `Html`), and the small formatters the cells use.
The page, "What is cached" (`web.holdings`, handed `table`, `size`, `ago`) and the matrix
(`web.clouds`, handed `TABLES["clouds"]`) lay out their tables through here."""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import unquote

from appliance.config import human_size

# Each table's columns: (heading, kind). "name": one line, ellipsised (the row's `title`
# holds it whole); "text": wraps anywhere; "num", "small" (a few digits), "count", "when",
# "size": right-aligned, never wrapped; "short", "label", "time": a word. Kinds in `WIDTHS`
# get that width, the others share the rest, so a fixed-layout table always fits its card.
# Phone widths stack the rows as "heading: value", the headings coming from the CSS below
# (cells stay plain `<td>`s, so the fragment re-fetched every 5 s does not repeat them).
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
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
SELECTORS = {"events": "#events", "clients": "#clients"}  # else .t-<kind>, see table
STACKED = ("upstreams", "downloads", "clouds", "jobs", "events", "clients")  # many columns
STACKED += ("cached", "cached-images")  # what is cached (holdings)
WIDTHS = {
    "num": "7em",  # 10 digits
    "small": "5.5em",
    "when": "8em",  # "1439 min ago"
    "size": "7.5em",
    "short": "5.5em",
    "time": "7em",
    "label": "7.5em",
}
RIGHT = ("num", "small", "count", "when", "size")  # right-aligned, never wrapped


def css() -> str:
    """Per-table rules: column widths and alignment, which cells ellipsise, and the phone
    layout's "heading: value" rows."""
    stacked = [SELECTORS.get(k, f".t-{k}") for k in STACKED]

    def each(suffix: str) -> str:
        return ",".join(f"{t}{suffix}" for t in stacked)

    rules, clip, right, labels = [], [], [], []
    for kind, cols in TABLES.items():
        selector = SELECTORS.get(kind, f".t-{kind}")
        for i, (heading, col) in enumerate(cols, 1):
            cell = f"{selector} td:nth-child({i})"
            if col in WIDTHS:  # a fixed layout takes the widths from the first row
                rules.append(f"{selector} th:nth-child({i}){{width:{WIDTHS[col]}}}")
            if col in RIGHT:
                right += [cell, f"{selector} th:nth-child({i})"]
            if col == "name":
                clip.append(cell)
            if kind in STACKED:
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


def esc(value: Any) -> str:
    return html.escape(str(value))


def size(n: float | None) -> str:
    """IEC, as the configuration writes sizes; a number and its unit never wrap apart."""
    return "-" if n is None else human_size(n).replace(" ", "\u00a0")


def ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(0, int(time.time() - ts))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


def table(kind: str, rows: list[list[Any]], empty: str, head: bool = True) -> str:
    """A table laid out by `TABLES[kind]`; a row's `title` holds its names whole (the
    cells may cut them)."""
    if not rows:
        return f'<p class="muted">{esc(empty)}</p>'
    cols = TABLES[kind]
    n = [" class=n" if col in RIGHT else "" for _, col in cols]  # marks a count for readers
    names = [i for i, (_, col) in enumerate(cols) if col == "name"]
    ths = "".join(f"<th{n[i]}>{esc(h)}</th>" for i, (h, _) in enumerate(cols))
    thead = f"<thead><tr>{ths}</tr></thead>" if head else ""
    body = []
    for row in rows:
        title = " · ".join(str(row[i]) for i in names if not isinstance(row[i], Html))
        body.append(
            (f'<tr title="{esc(title)}">' if title else "<tr>")
            + "".join(
                f"<td{n[i]}>{c if isinstance(c, Html) else esc(c)}</td>" for i, c in enumerate(row)
            )
            + "</tr>"
        )
    return f'<table class="t-{kind}">' + f"{thead}<tbody>{''.join(body)}</tbody></table>"


class Html(str):
    """Already-escaped markup for a table cell."""


def state(ok: bool, text: str) -> Html:
    return Html(f'<span class="{"ok" if ok else "bad"}">{esc(text)}</span>')


def unquoted(quoted: str) -> str:
    """A file name as the request spelled it (`bash_5.2.15-2%2bb13_amd64.deb`), readable;
    escaped later, like every upstream-controlled string."""
    return unquote(quoted)
