"""`archive-local publish`: locally built images -> a signed simplestreams feed.

The products file (YAML) names the products, their properties, and which files of the
build directory are their items:

    content_id: org.example:built:download
    products:
      org.example:server:24.04:amd64:
        properties: {os: ubuntu, release: noble, version: "24.04", arch: amd64}
        items:
          disk1.img: {file: noble-server-amd64.img}          # ftype from the name
          root.tar.xz: {file: noble-amd64-root.tar.xz, ftype: root.tar.xz}

An LXD image (what distrobuilder writes: `lxd.tar.xz` and `rootfs.squashfs`) is two
items of one product, `lxd.tar.xz: {file: lxd.tar.xz}` and `squashfs: {file:
rootfs.squashfs}`, with `arch` and `aliases` among its properties; publish adds the
combined sha256 LXD checks (`combined_squashfs_sha256`, the image's fingerprint).

Each run adds one version (`--version`, default today's `YYYYMMDD`, then `.1`, `.2`...)
to every product; earlier versions and their `updated` stamps stay. Items are copied
into the store (kept, never evicted) and served at `/images/NAME/`, the documents are
signed with the appliance key, and the curated root feed includes them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from appliance.cache.engine import CacheEngine
from appliance.cache.store import Mismatch
from appliance.streams import layout
from appliance.streams.curated import publish_curated
from appliance.streams.gpg import Signer
from appliance.streams.layout import FEED_DESCRIPTOR, local_key, snapshot_key
from appliance.streams.model import (
    LXD_COMBINED,
    FormatError,
    safe_path,
    timestamp,
    validate_products,
)

INDEX = "streams/v1/index.sjson"
FTYPES = (
    "lxd.tar.xz",
    "root.tar.xz",
    "tar.gz",
    "disk1.img",
    "squashfs",
    "qcow2",
    "img",
    "manifest",
    "vmdk",
    "ova",
)


class PublishError(ValueError):
    pass


@dataclass
class PublishPlan:
    feed: str
    content_id: str
    version: str
    items: list[dict[str, Any]] = field(default_factory=list)  # product, item, path, file, size


def _ftype(name: str) -> str:
    return next((f for f in FTYPES if name.endswith(f)), name.rsplit(".", 1)[-1])


def _digests(path: Path) -> tuple[int, str, str]:
    sha256, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return size, sha256.hexdigest(), md5.hexdigest()


def load_products_file(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PublishError(f"{path}: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("products"), dict):
        raise PublishError(f"{path}: expected a mapping with 'products'")
    for pname, product in spec["products"].items():
        if not isinstance(product, dict) or not isinstance(product.get("items"), dict):
            raise PublishError(f"{path}: products.{pname}.items: expected a mapping")
        for iname, item in product["items"].items():
            if not isinstance(item, dict) or not isinstance(item.get("file"), str):
                raise PublishError(f"{path}: products.{pname}.items.{iname}.file is required")
    return spec


class Publisher:
    def __init__(self, engine: CacheEngine, signer: Signer, feed: str = "local") -> None:
        self.engine = engine
        self.signer = signer
        self.feed = feed

    async def _stored_doc(self, path: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(layout.snapshot_document, self.engine.store, self.feed, path)

    async def publish(
        self, build_dir: Path, spec: dict[str, Any], version: str | None, dry_run: bool = False
    ) -> PublishPlan:
        content_id = spec.get("content_id", f"archive-local:{self.feed}:download")
        products_path = f"streams/v1/{content_id}.json"
        doc = await self._stored_doc(products_path) or {
            "content_id": content_id,
            "datatype": "image-downloads",
            "format": "products:1.0",
            "products": {},
        }
        version = version or _next_version(doc)
        plan = PublishPlan(self.feed, content_id, version)
        now = timestamp()
        for pname, pspec in spec["products"].items():
            product = doc["products"].setdefault(pname, {"versions": {}})
            product.update(pspec.get("properties") or {})
            if version in product["versions"]:
                raise PublishError(f"{pname}: version {version} is already published")
            items = {}
            sources: dict[str, Path] = {}
            for iname, ispec in pspec["items"].items():
                source = (build_dir / ispec["file"]).resolve()
                if not source.is_file() or not source.is_relative_to(build_dir.resolve()):
                    raise PublishError(f"{ispec['file']}: not a file in {build_dir}")
                path = safe_path(f"{pname.replace(':', '/')}/{version}/{source.name}", pname)
                size, sha256, md5 = await asyncio.to_thread(_digests, source)
                sources[iname] = source
                items[iname] = {
                    "ftype": ispec.get("ftype", _ftype(source.name)),
                    "path": path,
                    "size": size,
                    "sha256": sha256,
                    "md5": md5,
                }
                plan.items.append(
                    {
                        "product": pname,
                        "item": iname,
                        "path": path,
                        "file": str(source),
                        "size": size,
                        "sha256": sha256,
                    }
                )
            await _combine(items, sources)
            product["versions"][version] = {"updated": now, "items": items}
        doc["updated"] = now
        try:
            validate_products(doc)
        except FormatError as exc:
            raise PublishError(str(exc)) from None
        if dry_run:
            return plan
        for item in plan.items:  # the bytes first, then the documents that point at them
            try:
                await self.engine.put_file(
                    local_key(self.feed, item["path"]),
                    Path(item["file"]),
                    item["size"],
                    item["sha256"],
                )
            except Mismatch:
                raise PublishError(
                    f"{item['file']} changed while it was being published (nothing stored)"
                ) from None
        await self._write_documents(doc, products_path, now)
        await publish_curated(self.engine, self.signer)
        return plan

    async def _write_documents(self, doc: dict[str, Any], products_path: str, now: str) -> None:
        index = await self._stored_doc("streams/v1/index.json") or {
            "format": "index:1.0",
            "index": {},
        }
        index["updated"] = now
        index["index"][doc["content_id"]] = {
            "datatype": "image-downloads",
            "format": "products:1.0",
            "path": products_path,
            "updated": now,
            "products": sorted(doc["products"]),
        }
        files: dict[str, bytes] = {}
        for path, body in ((products_path, doc), ("streams/v1/index.json", index)):
            raw = json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"
            files[path] = raw
            files[path + ".gpg"] = self.signer.detach_sign(raw)
        signed_index = json.loads(files["streams/v1/index.json"])
        for entry in signed_index["index"].values():
            entry["path"] = entry["path"].removesuffix(".json") + ".sjson"
        files[products_path.removesuffix(".json") + ".sjson"] = self.signer.clearsign(
            files[products_path]
        )
        files[INDEX] = self.signer.clearsign(
            json.dumps(signed_index, indent=1, sort_keys=True).encode() + b"\n"
        )
        descriptor = layout.descriptor_bytes(f"local:{self.feed}", INDEX, local=True)
        await self.engine.put(snapshot_key(self.feed, FEED_DESCRIPTOR), descriptor)
        await layout.write_documents(self.engine, lambda path: snapshot_key(self.feed, path), files)


async def _combine(items: dict[str, dict[str, Any]], sources: dict[str, Path]) -> None:
    """Give each `lxd.tar.xz` item the combined sha256 with the root files beside it."""
    for meta_name, meta in items.items():
        if meta["ftype"] != "lxd.tar.xz":
            continue
        for root_name, root in items.items():
            field_name = LXD_COMBINED.get(root["ftype"])
            if field_name is not None:
                meta[field_name] = await asyncio.to_thread(
                    _sha256_of, sources[meta_name], sources[root_name]
                )


def _sha256_of(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _next_version(doc: dict[str, Any]) -> str:
    today = time.strftime("%Y%m%d", time.gmtime())
    taken = {v for p in doc.get("products", {}).values() for v in p.get("versions", {})}
    if today not in taken:
        return today
    n = 1
    while f"{today}.{n}" in taken:
        n += 1
    return f"{today}.{n}"
