"""The filter grammar of feeds, targets and `query`: `key=value`, `key!=value`,
`key~regex`, `key!~regex`, as sstream-query reads them.

Here, beside the configuration that validates them; `streams.filters` applies them to
documents.

Evaluated on an item's flattened properties; a missing key compares as "". The regex is
`re.search` (unanchored), all filters must match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
