"""Conditional and Range request evaluation (RFC 9110), as a pure function."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_HUGE = 10**18  # beyond any file: positions with more digits mean "past the end"


def _position(digits: str) -> int:
    """A byte position from a client; never int() of thousands of digits (ValueError)."""
    return int(digits) if len(digits) <= 18 else _HUGE


@dataclass(frozen=True)
class Plan:
    """What to send: `status` 200/206/304/416 and the byte span [start, end)."""

    status: int
    start: int = 0
    end: int = 0


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _etag_in(header: str, etag: str) -> bool:
    """Weak comparison, as If-None-Match requires."""
    tags = [t.strip() for t in header.split(",")]
    plain = etag.removeprefix("W/")
    return "*" in tags or any(t.removeprefix("W/") == plain for t in tags)


def plan(
    headers: Mapping[str, str], size: int, etag: str | None, last_modified: str | None
) -> Plan:
    inm = headers.get("If-None-Match")
    if inm is not None:
        if etag and _etag_in(inm, etag):
            return Plan(304)
    elif (ims := headers.get("If-Modified-Since")) is not None:
        since, modified = _http_date(ims), _http_date(last_modified)
        if since is not None and modified is not None and modified <= since:
            return Plan(304)

    header = headers.get("Range")
    if header is None:
        return Plan(200, 0, size)
    if_range = headers.get("If-Range")
    if if_range is not None and if_range not in (etag, last_modified):
        return Plan(200, 0, size)  # the client's copy is outdated: send it all
    m = _RANGE.match(header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return Plan(200, 0, size)  # multiple or malformed ranges: ignoring Range is allowed
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix: the last N bytes
        length = _position(last)
        if length == 0:
            return Plan(416)
        return Plan(206, max(0, size - length), size)
    start = _position(first)
    end = size if last == "" else min(_position(last) + 1, size)
    if start >= size or (last != "" and _position(last) < start):
        return Plan(416)
    return Plan(206, start, end)
