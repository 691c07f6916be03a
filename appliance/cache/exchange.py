"""One exchange with upstream, without I/O: the headers a request carries (a copy's
validators, a parked partial's Range) and what the answer means (`classify`).

The engine asks (`upstream.Upstream`); these say what to ask with and what came back,
so each rule is a table test away from being checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import Enum

import aiohttp

from appliance.cache.fetcher import close_delimited, content_encoding
from appliance.cache.route import Expect
from appliance.cache.store import Meta


class Answer(Enum):
    """What an upstream answer (not a failure) is; the last three are upstream's fault."""

    WHOLE = "whole"  # the file from its first byte: download it
    RESUMED = "resumed"  # the bytes after the parked ones: append them
    NOT_MODIFIED = "not-modified"  # 304: the copy is still upstream's
    ENCODED = "encoded"  # bytes under an encoding we did not ask for: pass on as sent
    UNVERIFIABLE = "unverifiable"  # the connection's end is the body's: a cut looks whole
    UNASKED_RANGE = "206 to a request without Range"
    WRONG_RANGE = "206 for the wrong range"
    UNASKED_304 = "304 for an unconditional request"

    @property
    def broken(self) -> bool:
        """Upstream answered something it was not asked: a 502 for the client."""
        return self in (Answer.UNASKED_RANGE, Answer.WRONG_RANGE, Answer.UNASKED_304)


def conditional_headers(meta: Meta) -> dict[str, str]:
    """Ask only for a newer file than the copy described by `meta`."""
    headers = {}
    if meta.etag:
        headers["If-None-Match"] = meta.etag
    if meta.last_modified:
        headers["If-Modified-Since"] = meta.last_modified
    return headers


def same_target(info: Mapping[str, object], expect: Expect) -> bool:
    """A parked partial belongs to this download only if it was after the same bytes."""
    return (info.get("size"), info.get("algorithm"), info.get("digest")) == (
        expect.size,
        expect.algorithm,
        expect.digest,
    ) and expect.algorithm is not None


def resume_headers(info: Mapping[str, object]) -> dict[str, str]:
    """The bytes after a parked partial's, as long as upstream's file is the same one."""
    headers = {"Range": f"bytes={info['written']}-"}
    if validator := info.get("etag") or info.get("last_modified"):
        headers["If-Range"] = str(validator)
    return headers


def resume_urls(info: Mapping[str, object], urls: Sequence[str]) -> tuple[str, ...]:
    """The mirror the partial came from first: another's bytes may differ until the end."""
    first = str(info["url"])
    return (first, *(u for u in urls if u != first))


def content_range(value: str | None) -> tuple[int, int | None]:
    """`bytes START-END/TOTAL` -> (START, TOTAL); (-1, None) when unusable."""
    m = re.fullmatch(r"\s*bytes\s+(\d{1,18})-(\d{1,18})/(\d{1,18}|\*)\s*", value or "")
    if not m:
        return -1, None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def classify(
    response: aiohttp.ClientResponse,
    expect: Expect,
    *,
    conditional: bool = False,
    resume_at: int | None = None,
) -> Answer:
    """What `response` is, for a request that was `conditional` (a copy's validators) or
    asked for the bytes from `resume_at` on (a parked partial)."""
    if response.status == 206:
        if resume_at is None:
            return Answer.UNASKED_RANGE
        start, total = content_range(response.headers.get("Content-Range"))
        if start != resume_at or (expect.size is not None and total != expect.size):
            return Answer.WRONG_RANGE
        return Answer.RESUMED
    if response.status == 304:
        return Answer.NOT_MODIFIED if conditional else Answer.UNASKED_304
    if content_encoding(response) and expect.algorithm is None:
        return Answer.ENCODED
    if close_delimited(response) and not expect.known:
        return Answer.UNVERIFIABLE
    return Answer.WHOLE
