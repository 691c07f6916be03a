"""Build a realistic signed simplestreams feed: releases x arches x versions x items.

Written like the official feed: condensed products, `index.json` plus `index.sjson`
whose entries point at `.sjson`, detached `.json.gpg` signatures, Ubuntu-style names.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.gpgkey import ThrowawayKey

CONTENT_ID = "com.example.cloud:released:download"
RELEASES = {"jammy": "22.04", "noble": "24.04", "focal": "20.04"}
ARCHES = ("amd64", "arm64")
SERIALS = ("20240101", "20240301", "20240401")
UPDATED = "Mon, 01 Apr 2024 06:00:00 +0000"


@dataclass
class Feed:
    root: Path
    key: ThrowawayKey
    files: dict[str, bytes] = field(default_factory=dict)  # path -> bytes of every item

    @property
    def products_path(self) -> str:
        return f"streams/v1/{CONTENT_ID}.json"

    def resign(self) -> None:
        sign_documents(self.root, self.key)


def _doc_bytes(doc: dict) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def sign_documents(root: Path, key: ThrowawayKey) -> None:
    """`.json.gpg` and `.sjson` for every document; the signed index points at `.sjson`."""
    for doc in sorted((root / "streams/v1").glob("*.json")):
        key.detach_sign(doc, doc.with_name(doc.name + ".gpg"))
        if doc.name != "index.json":
            key.clearsign(doc, doc.with_suffix(".sjson"))
            continue
        index = json.loads(doc.read_text())
        for entry in index["index"].values():
            entry["path"] = entry["path"].removesuffix(".json") + ".sjson"
        tmp = doc.with_name("index-signed.tmp")
        tmp.write_bytes(_doc_bytes(index))
        key.clearsign(tmp, doc.with_suffix(".sjson"))
        tmp.unlink()


def build_feed(
    base: Path,
    item_size: int = 1024 * 1024,
    serials: tuple[str, ...] = SERIALS,
    key: ThrowawayKey | None = None,
    make_image: Callable[[int], bytes] = os.urandom,
    files: dict[str, bytes] | None = None,
    lxd: bool = False,
) -> Feed:
    """`make_image(size)` makes disk images; `files` keeps the bytes of an earlier build.
    `lxd`: every version also has LXD's items, as the official feed does: `lxd.tar.xz`
    (with `combined_squashfs_sha256`, the image's fingerprint) and `squashfs`, and every
    product `aliases`."""
    root = base / "feed"
    (root / "streams/v1").mkdir(parents=True, exist_ok=True)
    key = key or ThrowawayKey(base)
    feed = Feed(root, key, dict(files or {}))
    products: dict = {}
    for release, version in RELEASES.items():
        for arch in ARCHES:
            pname = f"com.example.cloud:server:{version}:{arch}"
            versions = {}
            for serial in serials:
                items = {}
                kinds = [("disk1.img", "disk1.img", item_size), ("manifest", "manifest", 2000)]
                if lxd:
                    kinds += [("lxd.tar.xz", "lxd.tar.xz", 3000), ("squashfs", "squashfs", 200_000)]
                for ftype, suffix, size in kinds:
                    path = (
                        f"server/releases/{release}/release-{serial}/"
                        f"ubuntu-{version}-server-cloudimg-{arch}.{suffix}"
                    )
                    maker = make_image if ftype == "disk1.img" else os.urandom
                    data = feed.files.get(path) or maker(size)
                    feed.files[path] = data
                    (root / path).parent.mkdir(parents=True, exist_ok=True)
                    (root / path).write_bytes(data)
                    os.utime(root / path, (1711944000, 1711944000))  # whole seconds, like mirrors
                    items[ftype] = {
                        "ftype": ftype,
                        "path": path,
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "md5": hashlib.md5(data).hexdigest(),
                    }
                if lxd:
                    meta = feed.files[items["lxd.tar.xz"]["path"]]
                    root_fs = feed.files[items["squashfs"]["path"]]
                    combined = hashlib.sha256(meta + root_fs).hexdigest()
                    items["lxd.tar.xz"]["combined_squashfs_sha256"] = combined
                versions[serial] = {
                    "label": "release",
                    "pubname": f"ubuntu-{release}-{version}-{arch}-server-{serial}",
                    "items": items,
                }
            products[pname] = {
                "arch": arch,
                "os": "ubuntu",
                "release": release,
                "release_title": f"{version} LTS",
                "version": version,
                "supported": True,
                "versions": versions,
            }
            if lxd:
                products[pname]["aliases"] = f"{version},{release}"
    doc = {
        "content_id": CONTENT_ID,
        "datatype": "image-downloads",
        "format": "products:1.0",
        "updated": UPDATED,
        "license": "http://example.com/license",
        "products": products,
    }
    (root / feed.products_path).write_bytes(_doc_bytes(doc))
    index = {
        "format": "index:1.0",
        "updated": UPDATED,
        "index": {
            CONTENT_ID: {
                "datatype": "image-downloads",
                "format": "products:1.0",
                "path": feed.products_path,
                "updated": UPDATED,
                "products": sorted(products),
            }
        },
    }
    (root / "streams/v1/index.json").write_bytes(_doc_bytes(index))
    sign_documents(root, key)
    return feed


def qcow2_image(size: int) -> bytes:
    """A real qcow2 disk (qemu-img) holding `size` random bytes: what Glance 33 accepts as
    disk_format qcow2."""
    with tempfile.TemporaryDirectory() as tmp:
        raw, qcow = Path(tmp) / "disk.raw", Path(tmp) / "disk.qcow2"
        raw.write_bytes(os.urandom(size))
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)],
            check=True,
            capture_output=True,
        )
        return qcow.read_bytes()
