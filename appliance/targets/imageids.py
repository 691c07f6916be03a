"""`image-ids` metadata for seeded images, published in the appliance's own signed feed.

Juju (`image-metadata-url`) and sstream-query read it from the appliance itself, so
no object store is needed and the URL always answers. One products document per
target; its index entry lists the target's clouds (region + endpoint).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from appliance.cache.engine import CacheEngine
from appliance.streams.layout import image_ids_key

CONTENT_ID_PREFIX = "archive-local:image-ids:"
_PRODUCT_KEYS = ("arch", "os", "release", "version", "release_title")
_ITEM_SKIP = ("product_name", "version_name", "item_name", *_PRODUCT_KEYS)


def build(target: str, items: Sequence[Mapping[str, Any]], now: str) -> dict[str, Any]:
    """A products:1.0 document of datatype image-ids, items keyed `<region>.<item>`."""
    products: dict[str, Any] = {}
    for item in items:
        product = products.setdefault(
            item["product_name"],
            {k: item[k] for k in _PRODUCT_KEYS if k in item} | {"versions": {}},
        )
        version = product["versions"].setdefault(item["version_name"], {"items": {}})
        key = f"{item['region']}.{item['item_name']}"
        version["items"][key] = {k: v for k, v in item.items() if k not in _ITEM_SKIP}
    return {
        "content_id": CONTENT_ID_PREFIX + target,
        "datatype": "image-ids",
        "format": "products:1.0",
        "updated": now,
        "products": products,
    }


async def store_image_ids(engine: CacheEngine, target: str, doc: dict[str, Any]) -> None:
    body = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
    await engine.put(image_ids_key(target), body, "application/json")
