"""The image inventory of the status document: mirrored products and versions per feed
and where each version is seeded, read from disk (in a thread) and reused a while."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from appliance.cache.store import Store
from appliance.streams.layout import stored_image_ids, synced_feeds
from appliance.targets.catalog import CatalogError, feed_images, version_key
from appliance.web import clouds
from appliance.web.status.document import Images, Seeded, Version
from appliance.web.status.sources import Source

log = logging.getLogger(__name__)

IMAGES_TTL = 30.0  # seconds the image inventory (read from disk) is reused


class Inventory:
    """Mirrored products/versions per feed and where each version is seeded (cached)."""

    def __init__(self) -> None:
        self.value: list[Images] = []
        self.at = 0.0
        self.generation: Any = None
        self.clouds = clouds.Clouds()  # the images x seed targets matrix

    async def get(self, source: Source) -> list[Images]:
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


def _seeded(store: Store) -> dict[tuple[str, str], list[Seeded]]:
    """(product, version) -> where the stored image-ids documents say it is."""
    seeded: dict[tuple[str, str], list[Seeded]] = {}
    for doc in stored_image_ids(store):
        target = doc["content_id"].rsplit(":", 1)[-1]
        for pname, product in doc.get("products", {}).items():
            for vname, version in product.get("versions", {}).items():
                for item in version.get("items", {}).values():
                    seeded.setdefault((pname, vname), []).append(
                        {"target": target, "region": item.get("region", ""), "id": item["id"]}
                    )
    return seeded


def _inventory(store: Store) -> list[Images]:
    seeded = _seeded(store)
    rows: list[Images] = []
    for feed in synced_feeds(store):
        try:
            images = feed_images(store, feed)
        except CatalogError as exc:  # unreadable (or being rewritten): say so, not hide it
            log.info("status: feed %s: %s", feed, exc)
            rows.append({"feed": feed, "product": None, "versions": [], "error": str(exc)})
            continue
        products: dict[str, dict[str, Version]] = {}
        for i in images:
            v = products.setdefault(i.product, {}).setdefault(
                i.version, {"version": i.version, "items": 0, "bytes": 0, "seeded": []}
            )
            v["items"] += 1
            v["bytes"] += i.size
        for pname in sorted(products):
            versions = sorted(products[pname].values(), key=lambda v: version_key(v["version"]))
            for v in reversed(versions):
                v["seeded"] = seeded.get((pname, v["version"]), [])
            rows.append({"feed": feed, "product": pname, "versions": versions[::-1]})
    return rows
