"""The appliance's own feed at `/streams/v1/`: only what is on disk, signed with its key.

Built from every synced feed's verified snapshot: each products document keeps its
upstream `content_id` and properties (so LXD, Juju and MAAS recognise the images), but
lists only items that were mirrored (kept on disk), with `path` rewritten to
`images/NAME/<upstream path>`. Unlike the reference mirror, no client ever sees a
path that would 404. For LXD: an image is listed only with its root file (so `lxc image
list` shows what launches without upstream), and an alias stays with one product per
architecture (LXD resolves an alias to one image).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any

from appliance.cache.engine import CacheEngine
from appliance.cache.store import Store
from appliance.streams import layout
from appliance.streams.gpg import Signer
from appliance.streams.model import (
    LXD_COMBINED,
    PRODUCTS_FORMAT,
    condense,
    image_ids_clouds,
    timestamp,
)

log = logging.getLogger(__name__)

KEY_PATHS = layout.KEY_PATHS
# never hoisted by `condense`: LXD reads these where they belong, not inherited
STICKY = frozenset(
    {"path", "size", "sha256", "md5", "sha512", "ftype", "aliases", "arch", "os", "release"}
    | set(LXD_COMBINED.values())
)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def collect(store: Store) -> dict[str, dict[str, Any]]:
    """content_id -> products document: mirrored items of every synced feed, and the
    image-ids of every seeded target (blocking)."""
    merged: dict[str, dict[str, Any]] = {}
    for name in layout.synced_feeds(store):
        info = layout.descriptor(store, name)
        if info is None:
            continue
        for doc in layout.snapshot_products(store, name, info["index"]):
            _merge(merged, _on_disk(doc, name, info, store))
    unclash_aliases(merged)
    for doc in layout.stored_image_ids(store):
        if doc.get("products"):
            merged[doc["content_id"]] = doc
    return merged


def _on_disk(
    doc: dict[str, Any], feed: str, descriptor: dict[str, Any], store: Store
) -> dict[str, Any]:
    """A copy of `doc` with only kept items, paths under images/<feed>/."""
    out = copy.deepcopy(doc)
    for pname in list(out.get("products", {})):
        product = out["products"][pname]
        for vname in list(product.get("versions", {})):
            version = product["versions"][vname]
            items = version.get("items", {})
            for iname in list(items):
                item = items[iname]
                if item.get("path") is None:
                    continue
                if layout.kept_item(store, descriptor, feed, item) is None:
                    del items[iname]
                    continue
                item["path"] = f"images/{feed}/{item['path']}"
            _drop_incomplete_lxd(items)
            if not items:
                del product["versions"][vname]
        if not product.get("versions"):
            del out["products"][pname]
    return out


def _drop_incomplete_lxd(items: dict[str, Any]) -> None:
    """An LXD metadata item whose root file is not here lists an image nobody can
    launch from this appliance: it goes (its combined hash names the root file)."""
    types = {item.get("ftype") for item in items.values()}
    for name in [n for n, item in items.items() if item.get("ftype") == "lxd.tar.xz"]:
        roots = [f for f, field_name in LXD_COMBINED.items() if field_name in items[name]]
        if roots and not types.intersection(roots):
            del items[name]


def unclash_aliases(merged: dict[str, dict[str, Any]]) -> None:
    """LXD resolves an alias to one image per architecture: where products of several
    feeds name the same alias for the same arch, the first (by content id and product
    name) keeps it and the others drop it."""
    taken: set[tuple[str, str]] = set()
    for _content_id, doc in sorted(merged.items()):
        for _pname, product in sorted(doc.get("products", {}).items()):
            aliases = product.get("aliases")
            if not isinstance(aliases, str):
                continue
            arch = str(product.get("arch", ""))
            kept = []
            for alias in (a.strip() for a in aliases.split(",")):
                if alias and (alias, arch) not in taken:
                    taken.add((alias, arch))
                    kept.append(alias)
            if kept:
                product["aliases"] = ",".join(kept)
            else:
                del product["aliases"]


def _merge(merged: dict[str, dict[str, Any]], doc: dict[str, Any]) -> None:
    if not doc.get("products"):
        return
    target = merged.get(doc["content_id"])
    if target is None:
        merged[doc["content_id"]] = doc
        return
    for pname, product in doc["products"].items():
        mine = target["products"].setdefault(pname, {**product, "versions": {}})
        mine["versions"].update(product.get("versions", {}))


def render(merged: dict[str, dict[str, Any]], signer: Signer, now: str) -> dict[str, bytes]:
    """Every file of the curated feed: documents, signatures, the public key."""
    files: dict[str, bytes] = {}
    index: dict[str, Any] = {"format": "index:1.0", "updated": now, "index": {}}
    for content_id, doc in sorted(merged.items()):
        cloud_list = image_ids_clouds(doc) if doc.get("datatype") == "image-ids" else None
        doc = condense(copy.deepcopy(doc), sticky=STICKY)
        doc["updated"] = now
        path = f"streams/v1/{content_id}.json"
        body = _dump(doc)
        files[path] = body
        files[path + ".gpg"] = signer.detach_sign(body)
        files[path[: -len(".json")] + ".sjson"] = signer.clearsign(body)
        index["index"][content_id] = {
            "datatype": doc.get("datatype", "image-downloads"),
            "format": PRODUCTS_FORMAT,
            "path": path,
            "updated": now,
            "products": sorted(doc["products"]),
        }
        if cloud_list is not None:
            index["index"][content_id]["clouds"] = cloud_list
    body = _dump(index)
    files["streams/v1/index.json"] = body
    files["streams/v1/index.json.gpg"] = signer.detach_sign(body)
    signed_index = copy.deepcopy(index)
    for entry in signed_index["index"].values():
        entry["path"] = entry["path"][: -len(".json")] + ".sjson"
    files["streams/v1/index.sjson"] = signer.clearsign(_dump(signed_index))
    for ext in ("json", "json.gpg", "sjson"):  # Juju also looks for index2.*
        files[f"streams/v1/index2.{ext}"] = files[f"streams/v1/index.{ext}"]
    for path, armor in KEY_PATHS.items():
        files[path] = signer.public_key(armor=armor)
    return files


async def publish_curated(engine: CacheEngine, signer: Signer) -> int:
    """Rebuild and store the curated feed; products documents first, the index last."""
    merged = await asyncio.to_thread(collect, engine.store)
    files = await asyncio.to_thread(render, merged, signer, timestamp())
    await layout.write_documents(engine, layout.curated_key, files, _content_type)
    count = sum(
        len(v.get("items", {}))
        for d in merged.values()
        for p in d["products"].values()
        for v in p["versions"].values()
    )
    log.info("curated feed: %d products documents, %d items", len(merged), count)
    return count


def _content_type(path: str) -> str | None:
    return "application/json" if ".json" in path else None
