"""Filters applied to simplestreams documents (the grammar is `config.filters`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from appliance.config.filters import Filter, FilterError, matches, parse_filters
from appliance.streams.model import iter_items

__all__ = ["Filter", "FilterError", "matches", "parse_filters", "select"]


def select(
    doc: Mapping[str, Any], filters: Sequence[Filter], max_versions: int | None = None
) -> Iterator[tuple[str, str, str, dict[str, str]]]:
    """Matching items of a products document, newest `max_versions` versions per product.

    A version counts only if at least one of its items matches, as in sstream-mirror.
    """
    kept: dict[str, list[str]] = defaultdict(list)
    for pname, vname, iname, props in iter_items(doc):
        if not matches(filters, props):
            continue
        versions = kept[pname]
        if vname not in versions:
            if max_versions is not None and len(versions) >= max_versions:
                continue
            versions.append(vname)
        yield pname, vname, iname, props
