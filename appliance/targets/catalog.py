"""The images a target should hold: mirrored items of its feeds, newest versions first.

Read from the feeds' verified snapshots and the files kept on disk, so a target is
only ever seeded with bytes that were checked against signed metadata.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from appliance.cache.store import Entry, Store
from appliance.config import TargetConfig
from appliance.config.filters import matches, parse_filters
from appliance.streams import layout
from appliance.streams.model import iter_items

# how sstream-mirror-glance names architectures in Glance's `architecture` property
CANONICAL_ARCH = {
    "amd64": "x86_64",
    "i386": "i686",
    "arm64": "aarch64",
    "armhf": "armv7l",
    "ppc64el": "ppc64le",
    "powerpc": "ppc",
}
# ftype -> Glance disk_format, as the reference mirror maps them
DISK_FORMATS = {
    "disk1.img": "qcow2",
    "disk.img": "qcow2",
    "root.tar.gz": "root-tar",
    "root.tar.xz": "root-tar",
    "squashfs": "squashfs",
    "raw": "raw",
}
# not copied into `simplestreams_metadata` (the reference leaves these out too)
_METADATA_SKIP = ("path", "product_name", "version_name", "item_name")


class CatalogError(RuntimeError):
    """A target's feeds cannot be read; nothing is seeded or pruned."""


@dataclass(frozen=True)
class SeedImage:
    """One mirrored item that a target should hold."""

    feed: str
    source_content_id: str
    product: str
    version: str
    item: str
    props: dict[str, str]  # flattened simplestreams properties
    size: int
    store: Store = field(compare=False, repr=False)  # where the verified bytes are
    entry: Entry = field(compare=False, repr=False)

    def open(self) -> BinaryIO:
        """The verified bytes, for streaming to a cloud (blocking)."""
        return self.store.open_read(self.entry)

    def local_file(self) -> AbstractContextManager[Path]:
        """A local file with the bytes, for tools that need one (qemu-img)."""
        return self.store.local_file(self.entry)

    def scratch(self) -> AbstractContextManager[Path]:
        """A private staging directory in the store's scratch area (swept at start-up)."""
        return self.store.scratch("seed-")

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.product, self.version, self.item)

    @property
    def md5(self) -> str | None:
        return self.props.get("md5")

    @property
    def sha256(self) -> str | None:
        return self.props.get("sha256")

    @property
    def arch(self) -> str:
        arch = self.props.get("arch", "")
        return CANONICAL_ARCH.get(arch, arch.lower())

    @property
    def disk_format(self) -> str:
        return DISK_FORMATS.get(self.props.get("ftype", ""), "qcow2")

    def image_name(self, prefix: str) -> str:
        """`auto-sync/ubuntu-jammy-22.04-amd64-server-20240401-disk1.img`, as the reference."""
        pubname = self.props.get("pubname") or f"{self.product}-{self.version}"
        if not pubname.endswith(self.item):
            pubname = f"{pubname}-{self.item}"
        return prefix + pubname

    def metadata_json(self) -> str:
        """The `simplestreams_metadata` property: the flattened item, sorted keys."""
        return json.dumps(
            {k: v for k, v in self.props.items() if k not in _METADATA_SKIP}, sort_keys=True
        )


def version_key(version: str) -> list[tuple[int, int | str]]:
    """Numeric-aware order: 20240101.10 after 20240101.9."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", version) if p]


def feed_images(store: Store, feed: str) -> list[SeedImage]:
    """Every item of `feed` that is kept on disk and matches its checksum size (blocking)."""
    try:
        descriptor = layout.descriptor(store, feed)
        if descriptor is None:
            raise CatalogError(f"feed {feed!r} has not been synced or published yet")
        docs = layout.snapshot_products(store, feed, descriptor["index"])
    except (OSError, ValueError, KeyError) as exc:
        raise CatalogError(f"feed {feed!r}: snapshot unreadable ({exc})") from None
    images = []
    for doc in docs:
        for pname, vname, iname, props in iter_items(doc):
            entry = layout.kept_item(store, descriptor, feed, props)
            if entry is None:
                continue
            images.append(
                SeedImage(
                    feed,
                    doc["content_id"],
                    pname,
                    vname,
                    iname,
                    props,
                    entry.meta.size,
                    store,
                    entry,
                )
            )
    return images


def wanted(store: Store, target: TargetConfig) -> list[SeedImage]:
    """The newest `max_items` versions of each product with a matching item, newest first."""
    filters = parse_filters(target.filters)
    by_product: dict[str, list[SeedImage]] = defaultdict(list)
    for feed in target.feeds:
        for image in feed_images(store, feed):
            if matches(filters, image.props):
                by_product[image.product].append(image)
    chosen: list[SeedImage] = []
    for images in by_product.values():
        versions = sorted({i.version for i in images}, key=version_key, reverse=True)
        keep = set(versions[: target.max_items])
        chosen += sorted(
            (i for i in images if i.version in keep),
            key=lambda i: (version_key(i.version), i.item),
            reverse=True,
        )
    return chosen


def newest_versions(images: Sequence[SeedImage]) -> set[tuple[str, str]]:
    """(product, version) of each product's newest version: where `latest` goes."""
    best: dict[str, str] = {}
    for i in images:
        if i.product not in best or version_key(i.version) > version_key(best[i.product]):
            best[i.product] = i.version
    return set(best.items())
