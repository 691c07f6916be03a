"""`archive-local query`: list a feed's items like sstream-query, from any mirror root."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from appliance.streams.filters import Filter, select
from appliance.streams.model import (
    PRODUCTS_FORMAT,
    FormatError,
    parse_index,
    validate_products,
)
from appliance.streams.reader import FeedError, FeedReader


async def query(
    reader: FeedReader, index_path: str, filters: Sequence[Filter], max_versions: int | None = None
) -> AsyncIterator[dict[str, str]]:
    """Flattened items that match, newest versions first, at most `max_versions` per product."""
    index, _ = await reader.document(index_path)
    try:
        entries = parse_index(index)
    except FormatError as exc:
        raise FeedError(f"{reader.url(index_path)}: {exc}") from None
    for listed in entries:
        if listed.format != PRODUCTS_FORMAT or listed.path is None:
            continue
        path = reader.entry_path(index_path, listed.path)
        doc, _ = await reader.document(path)
        try:
            validate_products(doc)
        except FormatError as exc:
            raise FeedError(f"{reader.url(path)}: {exc}") from None
        for _p, _v, _i, props in select(doc, filters, max_versions):
            if "path" in props:
                props["item_url"] = reader.url(props["path"])
            yield props


TABLE_COLUMNS = ("product_name", "version_name", "item_name", "ftype", "size", "path")


def format_table(rows: Sequence[dict[str, str]]) -> str:
    if not rows:
        return "no items match\n"
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in TABLE_COLUMNS}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in TABLE_COLUMNS).rstrip()]
    for r in rows:
        lines.append("  ".join(r.get(c, "").ljust(widths[c]) for c in TABLE_COLUMNS).rstrip())
    return "\n".join(lines) + "\n"


def format_rows(rows: Sequence[dict[str, str]], fmt: str) -> tuple[str, list[str]]:
    """`%(key)s` formatting like sstream-query -o; rows missing a key are reported."""
    out, errors = [], []
    for r in rows:
        try:
            out.append(fmt % r)
        except KeyError as exc:
            errors.append(f"output format failed: missing {exc} in {r.get('product_name')}")
        except (TypeError, ValueError) as exc:
            raise FeedError(f"bad output format {fmt!r}: {exc}") from None
    return "".join(line + "\n" for line in out), errors
