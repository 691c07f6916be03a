"""The simplestreams documents (`index:1.0`, `products:1.0`) as plain data, no I/O.

Validation turns a malformed document into `FormatError` naming where it is wrong.
`flatten` gives each item its effective properties exactly as the reference client
does (top -> product -> version -> item, scalars only, as strings); `condense` hoists
shared properties when writing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from appliance.cache.keys import BadPath, split_path

INDEX_FORMAT = "index:1.0"
PRODUCTS_FORMAT = "products:1.0"
# LXD: an image is a metadata tarball (`lxd.tar.xz`) plus one root file; the metadata item
# carries the sha256 of both together (the image's fingerprint), named after the root type
LXD_COMBINED = {
    "squashfs": "combined_squashfs_sha256",
    "disk-kvm.img": "combined_disk-kvm-img_sha256",
    "root.tar.xz": "combined_rootxz_sha256",
    "uefi1.img": "combined_uefi1-img_sha256",
}
CHECKSUMS = ("sha512", "sha256", "md5")  # strongest first
LEVELS = ("products", "versions", "items")
NAME_FIELDS = ("product_name", "version_name", "item_name")


class FormatError(ValueError):
    """A document that is not valid simplestreams; the message says where."""


def timestamp(when: float | None = None) -> str:
    """The `updated` format the reference writes: RFC 2822 in UTC."""
    return formatdate(when, usegmt=False).replace("-0000", "+0000")


def safe_path(path: Any, where: str) -> str:
    """Item and document paths are relative to the mirror root and never climb out of it.

    They become request paths and cache keys, so they obey the same rules as a client's
    request path (`keys.split_path`): no `.`/`..` or hidden segments, decoded or not.
    """
    if not isinstance(path, str) or not path:
        raise FormatError(f"{where}: path must be a non-empty string")
    if path.startswith("/") or "\\" in path or "\0" in path or "?" in path or "#" in path:
        raise FormatError(f"{where}: unsafe path {path[:200]!r}")
    if any(part in ("", ".", "..") or part.startswith(".") for part in path.split("/")):
        raise FormatError(
            f"{where}: unsafe path {path[:200]!r} (hidden, empty or relative segment)"
        )
    try:
        split_path("/" + path)
    except BadPath as exc:
        raise FormatError(f"{where}: unsafe path {path[:200]!r} ({exc})") from None
    return posixpath.normpath(path)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FormatError(f"{where}: expected an object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class IndexEntry:
    content_id: str
    path: str | None
    format: str | None
    datatype: str | None
    data: Mapping[str, Any]


def parse_index(doc: Any) -> list[IndexEntry]:
    doc = _mapping(doc, "index")
    if doc.get("format") != INDEX_FORMAT:
        raise FormatError(f"index: format must be {INDEX_FORMAT!r}, got {doc.get('format')!r}")
    entries = []
    for content_id, entry in _mapping(doc.get("index", {}), "index.index").items():
        where = f"index[{content_id}]"
        entry = _mapping(entry, where)
        path = entry.get("path")
        entries.append(
            IndexEntry(
                content_id=content_id,
                path=safe_path(path, where) if path is not None else None,
                format=entry.get("format"),
                datatype=entry.get("datatype"),
                data=entry,
            )
        )
    return entries


def validate_products(doc: Any) -> Mapping[str, Any]:
    """Check a `products:1.0` tree; items with a path need a size and a checksum."""
    doc = _mapping(doc, "products")
    if doc.get("format") != PRODUCTS_FORMAT:
        raise FormatError(
            f"products: format must be {PRODUCTS_FORMAT!r}, got {doc.get('format')!r}"
        )
    if not isinstance(doc.get("content_id"), str):
        raise FormatError("products: content_id is required")
    for pname, product in _mapping(doc.get("products", {}), "products").items():
        product = _mapping(product, f"products[{pname}]")
        for vname, version in _mapping(product.get("versions", {}), f"{pname}.versions").items():
            version = _mapping(version, f"{pname}/{vname}")
            for iname, item in _mapping(version.get("items", {}), f"{pname}/{vname}.items").items():
                where = f"{pname}/{vname}/{iname}"
                item = _mapping(item, where)
                if "path" not in item:
                    continue
                safe_path(item["path"], where)
                size = item.get("size")
                try:
                    ok = int(size) >= 0 and not isinstance(size, bool)
                except (TypeError, ValueError):
                    ok = False
                if not ok:
                    raise FormatError(f"{where}: invalid size {size!r}")
                if not any(isinstance(item.get(c), str) for c in CHECKSUMS):
                    raise FormatError(f"{where}: needs one of {', '.join(CHECKSUMS)}")
    return doc


def _scalars(level: Mapping[str, Any]) -> dict[str, str]:
    """Inheritable properties: str, int, float (and bool) values, as strings."""
    return {k: str(v) for k, v in level.items() if isinstance(v, str | int | float)}


def flatten(doc: Mapping[str, Any], pname: str, vname: str, iname: str) -> dict[str, str]:
    """An item's effective properties: top, product, version, item; deeper wins."""
    product = doc["products"][pname]
    version = product["versions"][vname]
    item = version["items"][iname]
    flat = _scalars(doc)
    flat.update(_scalars(product))
    flat["product_name"] = pname
    flat.update(_scalars(version))
    flat["version_name"] = vname
    flat.update(_scalars(item))
    flat["item_name"] = iname
    return flat


def iter_items(doc: Mapping[str, Any]) -> Iterator[tuple[str, str, str, dict[str, str]]]:
    """Every (product, version, item, flattened properties), versions newest first."""
    for pname, product in sorted(doc.get("products", {}).items()):
        for vname in sorted(product.get("versions", {}), reverse=True):
            for iname in sorted(product["versions"][vname].get("items", {})):
                yield pname, vname, iname, flatten(doc, pname, vname, iname)


def strongest_checksum(item: Mapping[str, Any]) -> tuple[str, str] | None:
    for name in CHECKSUMS:
        if isinstance(item.get(name), str):
            return name, item[name].lower()
    return None


def condense(doc: dict[str, Any], sticky: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Hoist properties every child shares (same string value) one level up, in place.

    Items -> version, versions -> product. `sticky` keys never move.
    """
    for product in doc.get("products", {}).values():
        for version in product.get("versions", {}).values():
            _hoist(version, version.get("items", {}), sticky)
        _hoist(product, product.get("versions", {}), sticky)
    return doc


def _hoist(
    parent: dict[str, Any], children: Mapping[str, dict[str, Any]], sticky: frozenset[str]
) -> None:
    if not children:
        return
    kids = list(children.values())
    shared = set(kids[0]) - sticky - set(LEVELS)
    for kid in kids[1:]:
        shared &= set(kid)
    for key in sorted(shared):
        values = {_as_text(kid[key]) for kid in kids}
        first = kids[0][key]
        if len(values) != 1 or not isinstance(first, str | int | float):
            continue
        if key in parent and _as_text(parent[key]) != _as_text(first):
            continue
        parent[key] = first
        for kid in kids:
            del kid[key]


def _as_text(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int | float) else None


def image_ids_clouds(doc: Mapping[str, Any]) -> list[dict[str, str]]:
    """The distinct (region, endpoint) pairs of an image-ids document, for its index entry."""
    found = {
        (item.get("region", ""), item.get("endpoint", ""))
        for product in doc.get("products", {}).values()
        for version in product.get("versions", {}).values()
        for item in version.get("items", {}).values()
    }
    return [{"region": r, "endpoint": e} for r, e in sorted(found)]
