"""`key=value`, `key!=value`, `key~regex`, `key!~regex` filters, as sstream-query reads them.

Evaluated on an item's flattened properties; a missing key compares as "". The regex is
`re.search` (unanchored), all filters must match.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.streams.model import iter_items

_FILTER = re.compile(r"^([A-Za-z0-9_|-]+)(!=|!~|=|~)(.*)$", re.DOTALL)


class FilterError(ValueError):
    pass


@dataclass(frozen=True)
class Filter:
    key: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str) -> Filter:
        m = _FILTER.match(text)
        if not m:
            raise FilterError(
                f"bad filter {text!r}: expected key=value, key!=value, key~re or key!~re"
            )
        key, op, value = m.groups()
        regex = None
        if "~" in op:
            try:
                regex = re.compile(value)
            except re.error as exc:
                raise FilterError(f"bad regular expression in filter {text!r}: {exc}") from None
        return cls(key, op, value, regex)

    def __call__(self, props: Mapping[str, str]) -> bool:
        actual = props.get(self.key, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.regex is not None
        found = self.regex.search(actual) is not None
        return found if self.op == "~" else not found

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


def parse_filters(texts: Sequence[str]) -> list[Filter]:
    return [Filter.parse(t) for t in texts]


def matches(filters: Sequence[Filter], props: Mapping[str, str]) -> bool:
    return all(f(props) for f in filters)


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
