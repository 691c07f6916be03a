"""The status page's "Images and clouds": mirrored images by seed targets.

An operator with several Glance registries and EC2 regions wants one answer per image and
place: is it there (and under which id), is it still to come, did its upload fail, or did
the last seed prune it. The states come from three sources of truth, freshest first:

- the last seed's outcome for the target (this service's scheduler, the primary under
  `workers: N`): its actions say uploaded / present / failed / removed per region;
- the target's stored image-ids document (what the last complete seed found there; a
  `seed` run from the command line writes it too, and then it is newer than the outcome);
- what each target selects of the mirrored images (`wanted`: its feeds, filters and
  `max_items`): selected but not there is pending.

`matrix` is a pure function of those; `Clouds` caches the parts read from disk.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from appliance.cache.store import Store
from appliance.config import Ec2TargetConfig, GlanceTargetConfig, TargetConfig
from appliance.streams.layout import stored_image_ids
from appliance.targets.catalog import CatalogError, version_key, wanted
from appliance.targets.seeder import ActionKind

log = logging.getLogger(__name__)

TTL = 30.0  # seconds the disk-read parts are reused (a command-line seed changes them)
STATES = ("present", "pending", "failed", "pruned")
# rows the page shows (failed, then pending first): 200 images in three places would be
# most of a 100 KB page; /api/status and `archive-local status` hold every one
PAGE_ROWS = 40
_URGENCY = {"failed": 0, "pending": 1}
Key = tuple[str, str]  # (product, version)
Place = tuple[str, str]  # (target, region)


class SeedJobs(Protocol):
    """What the matrix reads of the scheduler."""

    config: Any  # the configuration in force: `seed.targets`
    last_run: float | None
    seeding: bool
    seed_last: Mapping[str, Any]  # target -> TargetOutcome
    seed_stats: Mapping[str, Mapping[str, Any]]


def regions_of(target: TargetConfig) -> tuple[str, ...]:
    """The regions a target seeds, as its image-ids items name them."""
    if isinstance(target, GlanceTargetConfig):
        return (target.region,)
    if isinstance(target, Ec2TargetConfig):
        return tuple(target.regions)
    return ()


def read_disk(store: Store, targets: Sequence[TargetConfig]) -> dict[str, Any]:
    """The blocking part: every stored image-ids document and what each target selects."""
    docs = {doc["content_id"].rsplit(":", 1)[-1]: doc for doc in stored_image_ids(store)}
    selected: dict[str, set[Key]] = {}
    for target in targets:
        try:
            selected[target.name] = {(i.product, i.version) for i in wanted(store, target)}
        except CatalogError as exc:  # a feed not synced yet: nothing selected
            log.debug("status: target %s: %s", target.name, exc)
            selected[target.name] = set()
    return {"docs": docs, "selected": selected}


class Clouds:
    """The matrix of this process, its disk-read parts reused until a sync or a seed of
    this service or `TTL` (the inventory's rule)."""

    def __init__(self) -> None:
        self.disk: dict[str, Any] = {"docs": {}, "selected": {}}
        self.at = 0.0
        self.generation: Any = None

    async def get(
        self, store: Store, jobs: SeedJobs, inventory: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        targets = tuple(jobs.config.seed.targets)
        generation = (jobs.last_run, sum(s["runs"] for s in jobs.seed_stats.values()), targets)
        if generation != self.generation or time.monotonic() - self.at > TTL:
            self.disk = await asyncio.to_thread(read_disk, store, targets)
            self.at, self.generation = time.monotonic(), generation
        outcomes = {n: o.as_dict() for n, o in jobs.seed_last.items()}
        return matrix(inventory, self.disk, targets, outcomes, jobs.seeding)

    def invalidate(self) -> None:
        self.at = 0.0


def _doc_items(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"product_name": p, "version_name": v, **item}
        for p, product in doc.get("products", {}).items()
        for v, version in product.get("versions", {}).items()
        for item in version.get("items", {}).values()
    ]


def matrix(
    inventory: Sequence[Mapping[str, Any]],
    disk: Mapping[str, Any],
    targets: Sequence[TargetConfig],
    outcomes: Mapping[str, Mapping[str, Any]],
    seeding: bool = False,
) -> dict[str, Any]:
    """`/api/status`'s `clouds`: `targets` (one per target and region, configured first),
    `images` (one per mirrored or seeded product and version, each with `cells`, one per
    target in that order: null where the target does not want it, else state, id, error),
    `errors` (feeds that could not be read) and `counts` per state."""
    docs: Mapping[str, Mapping[str, Any]] = disk["docs"]
    seen = _Seen(targets)
    for name in sorted(set(docs) | set(outcomes)):
        seen.target(name, docs.get(name), outcomes.get(name))
    errors = []
    for r in inventory:
        if r.get("error"):
            errors.append({"feed": r["feed"], "error": r["error"]})
            continue
        for v in r["versions"]:
            seen.rows[(r["product"], v["version"])] = r["feed"]
    images = []
    counts = dict.fromkeys(STATES, 0)
    rows = seen.rows
    order = sorted(sorted(rows, key=lambda k: version_key(k[1]), reverse=True), key=lambda k: k[0])
    for key in order:
        cells = [seen.cell(pl, key, disk["selected"], seeding) for pl in seen.places]
        for cell in cells:
            if cell is not None:
                counts[cell["state"]] += 1
        feed = rows[key]
        images.append(
            {
                "feed": feed,
                "product": key[0],
                "version": key[1],
                "mirrored": bool(feed),
                "cells": cells,
            }
        )
    return {"targets": seen.places, "images": images, "errors": errors, "counts": counts}


class _Seen:
    """Where each image was seen, per place (target, region): the ids there, the ids
    pruned, the errors of failed uploads; and every image seen, with its feed ("" if it is
    not mirrored any more). Places are the configured ones first, then any a document or
    an outcome still names (no longer configured: still shown)."""

    def __init__(self, targets: Sequence[TargetConfig]) -> None:
        self.places: list[dict[str, Any]] = [
            {"target": t.name, "type": t.type, "region": r, "configured": True}
            for t in targets
            for r in regions_of(t)
        ]
        self._known = {(p["target"], p["region"]) for p in self.places}
        self.present: dict[tuple[Place, Key], list[str]] = {}
        self.pruned: dict[tuple[Place, Key], list[str]] = {}
        self.failed: dict[tuple[Place, Key], list[str]] = {}
        self.rows: dict[Key, str] = {}

    def place(self, target: str, region: str, kind: str) -> Place:
        if (target, region) not in self._known:
            self._known.add((target, region))
            self.places.append(
                {"target": target, "type": kind, "region": region, "configured": False}
            )
        return (target, region)

    def target(self, name: str, doc: Mapping[str, Any] | None, o: Mapping[str, Any] | None) -> None:
        """One target's images: from its stored document where that is the freshest truth
        (no outcome, a newer document, an incomplete outcome), then from its outcome."""
        newer = doc is not None and o is not None and _doc_is_newer(doc, o)
        kind = o["type"] if o is not None else ""
        if doc is not None and (o is None or newer or not o["complete"]):
            for item in _doc_items(doc):
                key = (item["product_name"], item["version_name"])
                at = self.place(name, item.get("region", ""), kind)
                self.present.setdefault((at, key), []).append(item["id"])
                self.rows.setdefault(key, "")
        if o is not None and not newer:
            self._outcome(name, o, kind)

    def _outcome(self, name: str, o: Mapping[str, Any], kind: str) -> None:
        for item in o["images"] if o["complete"] else []:
            key = (item["product_name"], item["version_name"])
            at = self.place(name, item["region"], kind)
            self.present.setdefault((at, key), []).append(item["id"])
            self.rows.setdefault(key, "")
        for a in o["actions"]:
            if not a["product"]:
                continue  # a leftover cleaned up: no image of the feed
            key, p = (a["product"], a["version"]), self.place(name, a["region"], kind)
            action = ActionKind(a["action"])  # as the seeder wrote it (via JSON)
            if action in (ActionKind.UPLOADED, ActionKind.PRESENT):
                self.present.setdefault((p, key), []).append(a["image_id"])
            elif action is ActionKind.REMOVED:
                self.pruned.setdefault((p, key), []).append(a["image_id"])
            elif action is ActionKind.FAILED:
                self.failed.setdefault((p, key), []).append(a["error"] or "failed")
            else:
                continue
            self.rows.setdefault(key, "")

    def cell(
        self,
        pl: Mapping[str, Any],
        key: Key,
        selected: Mapping[str, set[Key]],
        seeding: bool,
    ) -> dict[str, Any] | None:
        """An image at a place: failed, present, pruned, pending (selected, mirrored, not
        there), or None (not wanted by this target)."""
        at = ((pl["target"], pl["region"]), key)
        ids = sorted(set(self.present.get(at, [])) - set(self.pruned.get(at, [])))
        if at in self.failed:
            return {"state": "failed", "id": ids[0] if ids else None, "error": self.failed[at][0]}
        if ids:
            return {"state": "present", "id": ids[0], "error": None}
        if at in self.pruned:
            return {"state": "pruned", "id": self.pruned[at][0], "error": None}
        if key in selected.get(pl["target"], set()) and self.rows[key]:
            why = "the seed is running" if seeding else "not uploaded yet"
            return {"state": "pending", "id": None, "error": None, "note": why}
        return None


def _doc_is_newer(doc: Mapping[str, Any], outcome: Mapping[str, Any]) -> bool:
    """Whether a target's image-ids document is newer than this service's last outcome
    for it: a complete outcome wrote its images as the document, so other ids there mean
    a later seed (from the command line). An incomplete one left the document as it was
    (older: the outcome's actions go over it)."""
    if not outcome["complete"]:
        return False
    return {i["id"] for i in _doc_items(doc)} != {i["id"] for i in outcome["images"]}


# -- HTML ------------------------------------------------------------------------------------

# The first two columns are laid out by `web.status.tables.TABLES["clouds"]` (widths, the
# ellipsised name, the phone's "heading: value" rows); a column per target follows, as
# many as are configured, so their rules are written here: headings and cells cut with an
# ellipsis (a heading's title, a failure's title say it whole), and on a phone each cell
# is a line labelled with its target and region.
CSS = (
    "main>#images-and-clouds{grid-column:1/-1}"  # the matrix takes the page's width
    ".t-clouds th,.t-clouds td{overflow:hidden;text-overflow:ellipsis}"
    ".t-clouds td i{display:block;font-style:normal;font-size:.75rem;color:#556;"
    "overflow:hidden;text-overflow:ellipsis;white-space:nowrap}"
    ".t-clouds td.s-present{color:#17803d}"
    ".t-clouds td.s-failed,.t-clouds td.s-pruned{color:#b42318}"
    ".t-clouds td.s-pending{color:#8a5a00}.t-clouds td.s-pruned{text-decoration:line-through}"
)
PHONE = "@media(max-width:40rem)"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _css_string(text: str) -> str:
    """`text` as a CSS string: every character but letters, digits and a few marks as an
    escape, so no name closes the string or the <style> element."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.:")
    return '"' + "".join(c if c in safe else f"\\{ord(c):x} " for c in text) + '"'


def _cell(i: int, j: int, cell: Mapping[str, Any] | None) -> str:
    if cell is None:
        return '<td class="muted">-</td>'
    state = cell["state"]
    why = cell.get("error") or cell.get("note")
    title = f' title="{_e(why)}"' if why else ""
    ident = f"<i>{_e(cell['id'])}</i>" if cell.get("id") else ""
    return f'<td id="cloud-{i}-{j}" class="s-{state}"{title}>{state}{ident}</td>'


def render(c: Mapping[str, Any] | None, columns: Sequence[tuple[str, str]]) -> str:
    """The matrix: a row per image, a column per target and region; each cell the state
    and the image's id there (ids `cloud-<row>-<column>`, in `/api/status`'s order)."""
    if not c:
        return '<p class="muted">-</p>'
    targets, images = c["targets"], c["images"]
    problems = "".join(
        f'<p class="bad why">{_e(x["feed"])}: {_e(x["error"])}</p>' for x in c["errors"]
    )
    if not images:
        return problems + '<p class="muted">No images mirrored or seeded.</p>'
    first = len(columns)
    labels = "".join(
        f".t-clouds td:nth-child({first + 1 + j})::before"
        f"{{content:{_css_string(t['target'] + ' ' + t['region'])}}}"
        for j, t in enumerate(targets)
    )
    style = f"<style>{CSS}{PHONE}{{{labels}}}</style>"
    counts = ", ".join(f"{n} {s}" for s, n in c["counts"].items())
    heads = "".join(f"<th>{_e(h)}</th>" for h, _ in columns) + "".join(
        f'<th title="{_e(t["target"])} {_e(t["region"])}'
        f'{"" if t["configured"] else " (no longer configured)"}">'
        f"{_e(t['target'])}<br>{_e(t['region'])}</th>"
        for t in targets
    )

    def urgency(i: int) -> int:
        return min((_URGENCY.get(x["state"], 2) for x in images[i]["cells"] if x), default=2)

    shown = sorted(sorted(range(len(images)), key=urgency)[:PAGE_ROWS])
    body = []
    for i in shown:
        row = images[i]
        product = row["product"] + ("" if row["mirrored"] else " (not mirrored)")
        body.append(
            f'<tr title="{_e(product)} · {_e(row["version"])}"><td>{_e(product)}</td>'
            f"<td>{_e(row['version'])}</td>"
            + "".join(_cell(i, j, cell) for j, cell in enumerate(row["cells"]))
            + "</tr>"
        )
    return (
        f'{style}{problems}<p id="clouds-counts" class="muted">{_e(counts)}</p>'
        f'<table class="t-clouds" id="clouds"><thead><tr>{heads}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        + (
            f'<p class="muted" id="clouds-more">… {len(images) - len(shown)} more images '
            "(failed and pending ones are kept on the page; every one is in /api/status and "
            "<code>archive-local status</code>)</p>"
            if len(shown) < len(images)
            else ""
        )
    )


def summary(c: Mapping[str, Any] | None) -> list[str]:
    """`archive-local status`: a line per image, each target's state and id on it."""
    if not c:
        return []
    lines = [f"feed {x['feed']}: {x['error']}" for x in c["errors"]]
    for row in c["images"]:
        where = [
            f"{t['target']}/{t['region']} {cell['state']}"
            + (f" {cell['id']}" if cell.get("id") else "")
            + (f" ({cell['error']})" if cell.get("error") else "")
            for t, cell in zip(c["targets"], row["cells"], strict=True)
            if cell is not None
        ]
        lines.append(
            f"image {row['feed'] or '-'} {row['product']} {row['version']}: "
            + (", ".join(where) or "not seeded")
        )
    return lines
