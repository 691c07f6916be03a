"""Where the image side lives in the store, and how it is read and written: the one owner.

    _images/<feed>/feed.json       a synced or published feed: {"url", "index"[, "local"]}
    _images/<feed>/streams/v1/...  its verified documents, byte for byte (pass-through)
    _local/<feed>/<path>           items of feeds built here (`publish`; no upstream)
    <host>/<path>                  items of upstream feeds, keyed like any cached file
    _feed/streams/v1/..., _feed/keys/...  the curated feed, the appliance's public key
    _seed/image-ids/<target>.json  what each seed target holds (for the curated feed)

Every reader (serving, the curated feed, seeding, the status page, discovery) goes through
these functions; documents are written with `write_documents`, products first and the index
last, so a reader never meets an index that names a document not written yet.
All functions that touch the store block: call them in a thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from appliance.cache.keys import UpstreamBase, split_path
from appliance.cache.store import Entry, InvalidKey, Store
from appliance.streams.model import PRODUCTS_FORMAT, parse_index
from appliance.streams.reader import signed_twin, stored_json

SNAPSHOT_PREFIX = "_images"
FEED_DESCRIPTOR = "feed.json"
LOCAL_PREFIX = "_local"
CURATED_PREFIX = "_feed"
IMAGE_IDS_PREFIX = "_seed/image-ids"
KEY_PATHS = {"keys/archive-local.gpg": False, "keys/archive-local.asc": True}  # path -> armor


def snapshot_key(feed: str, path: str = "") -> str:
    return "/".join(p for p in (SNAPSHOT_PREFIX, feed, path) if p)


def local_key(feed: str, path: str) -> str:
    return f"{LOCAL_PREFIX}/{feed}/{path}"


def curated_key(path: str) -> str:
    return f"{CURATED_PREFIX}/{path}"


def image_ids_key(target: str) -> str:
    return f"{IMAGE_IDS_PREFIX}/{target}.json"


def feed_item_key(descriptor: Mapping[str, Any], feed: str, path: str) -> str:
    """Where an item of a synced or published feed lives in the store."""
    if descriptor.get("local"):
        return local_key(feed, path)
    return UpstreamBase.parse(descriptor["url"] + "/").key(split_path("/" + path))


def descriptor_bytes(url: str, index: str, local: bool = False) -> bytes:
    doc: dict[str, Any] = {"url": url, "index": index}
    if local:
        doc["local"] = True
    return json.dumps(doc).encode()


def index_last(paths: Iterable[str]) -> list[str]:
    """Products documents (and signatures) first, index files last."""
    return sorted(paths, key=lambda p: ("/index." in "/" + p, p))


def read_json(store: Store, entry: Entry) -> Any:
    """A stored JSON document (clearsigned ones unwrapped: they were verified when stored)."""
    return json.loads(stored_json(store.read_bytes(entry)))


def synced_feeds(store: Store) -> list[str]:
    """Names of the feeds with a snapshot (synced or published)."""
    try:
        keys = list(store.keys_under(SNAPSHOT_PREFIX))
    except (OSError, InvalidKey):
        return []
    prefix = SNAPSHOT_PREFIX + "/"
    return sorted(
        k[len(prefix) : -len(FEED_DESCRIPTOR) - 1]
        for k in keys
        if k.endswith("/" + FEED_DESCRIPTOR) and k.count("/") == 2
    )


def descriptor(store: Store, feed: str) -> dict[str, Any] | None:
    """A feed's descriptor; None when it has never been synced or published."""
    entry = store.lookup(snapshot_key(feed, FEED_DESCRIPTOR))
    return None if entry is None else json.loads(store.read_bytes(entry))


def snapshot_products(store: Store, feed: str, index_path: str) -> list[dict[str, Any]]:
    """The products documents of a feed's published snapshot ([] if none)."""
    index_entry = store.lookup(snapshot_key(feed, index_path))
    if index_entry is None:
        return []
    docs = []
    for listed in parse_index(read_json(store, index_entry)):
        if listed.format != PRODUCTS_FORMAT or listed.path is None:
            continue
        doc_entry = store.lookup(snapshot_key(feed, signed_twin(index_path, listed.path)))
        if doc_entry is not None:
            docs.append(read_json(store, doc_entry))
    return docs


def snapshot_document(store: Store, feed: str, path: str) -> Any | None:
    """One stored document of a feed's snapshot (None if absent)."""
    entry = store.lookup(snapshot_key(feed, path))
    return None if entry is None else read_json(store, entry)


def kept_item(
    store: Store, desc: Mapping[str, Any], feed: str, item: Mapping[str, Any]
) -> Entry | None:
    """The stored, kept file of an item when it is whole (its listed size), else None."""
    path = item.get("path")
    if path is None:
        return None
    entry = store.lookup(feed_item_key(desc, feed, path))
    if entry is None or not entry.meta.keep or entry.meta.size != int(item["size"]):
        return None
    return entry


def stored_image_ids(store: Store) -> list[dict[str, Any]]:
    """Every target's last image-ids document."""
    docs = []
    try:
        keys = sorted(store.keys_under(IMAGE_IDS_PREFIX))
    except (OSError, InvalidKey):
        return []
    for key in keys:
        if key.endswith(".json") and (entry := store.lookup(key)) is not None:
            docs.append(json.loads(store.read_bytes(entry)))
    return docs


class Writer(Protocol):
    """What writes documents into the store (the engine's verified `put`)."""

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> Entry: ...


async def write_documents(
    writer: Writer,
    key_of: Callable[[str], str],
    files: Mapping[str, bytes],
    content_type: Callable[[str], str | None] = lambda _path: None,
) -> None:
    """Write `files` (path -> bytes) at `key_of(path)`, products first, the index last."""
    for path in index_last(files):
        await writer.put(key_of(path), files[path], content_type(path))
