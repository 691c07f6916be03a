"""The hot path: a plain GET or HEAD of a fresh, small, memoised cache entry, answered
from the connection's bytes in one write, below aiohttp's request and response objects.

Why: such a hit is a dictionary lookup and a send, yet through aiohttp it costs a request
object, a response object, a task, two sends (headers, then body) and an access-logger
call, ten times the work of the lookup itself. Only what this module fully understands
is answered here; everything else goes to aiohttp unchanged, as raw bytes, so every other
request (and every malformed one) gets exactly what it got before:

- `parse` reads a request head strictly (CRLF only, HTTP/1.1, token header names, no
  byte outside printable ASCII and tab, no folded lines) and refuses anything with a
  body or a change of protocol (`Content-Length`, `Transfer-Encoding`, `Expect`,
  `Upgrade`): such a connection is aiohttp's from then on (`None`);
- a plain head whose answer is not a memoised hit (a miss, a large file, a Range or a
  conditional request, the appliance's own pages, a refused path) is handed to aiohttp
  alone, and the connection comes back here once aiohttp has answered it
  (`server._Handler`).

The answer is the same bytes aiohttp would send (same headers in the same order), and it
is counted by the same `Tally` as aiohttp's access logger counts every other request.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Protocol

from aiohttp.http import SERVER_SOFTWARE

from appliance.apt.indexes import classify
from appliance.apt.paths import BadPath
from appliance.apt.routing import Forbidden, Router
from appliance.cache.engine import CacheEngine
from appliance.cache.results import CacheStatus
from appliance.cache.route import Freshness, Route
from appliance.cache.store import Meta
from appliance.web.accesslog import Answered, Tally
from appliance.web.app import SERVER_LIMITS
from appliance.web.holdings import Holdings

HEAD_LIMIT = 16 * 1024  # a longer head is aiohttp's to refuse (its limits: 8190 a line)
# the longest line and the most header lines aiohttp reads
MAX_LINE = int(min(SERVER_LIMITS["max_line_size"], SERVER_LIMITS["max_field_size"]))
MAX_HEADERS = int(SERVER_LIMITS["max_headers"])
PREFIXES_LIMIT = 20_000  # response header blocks memoised (as many as hot entries)

# the appliance's own pages (app.Handler.handle answers them before the apt router)
OWN_PATHS = frozenset({"/", "/metrics", "/healthz", "/favicon.ico"})
OWN_PREFIXES = ("/api/", "/.archive-local/", "/.well-known/", "/images/", "/streams/", "/keys/")

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# RFC 3986 path and query characters only (no fragment, no backslash, no userinfo): the
# origin form, or the absolute form with a plain host (name, IPv4 or bracketed IPv6) and
# port; what aiohttp or yarl might read otherwise is aiohttp's
_PATH = rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*"
_TARGET = re.compile(
    rb"(?:http://(?:[A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?)?" + _PATH + rb"\Z"
)
_VALUE = re.compile(rb"[\t\x20-\x7e]*\Z")
# a request with a body or a new protocol: its framing is aiohttp's to read (and the old
# websocket handshake, which aiohttp refuses)
_FOREIGN = frozenset(
    {b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"sec-websocket-key1"}
)
# what changes the answer of a hit (a part, a 304): aiohttp's `deliver` answers those
_CONDITIONAL = frozenset(
    {b"range", b"if-range", b"if-modified-since", b"if-none-match", b"if-match",
     b"if-unmodified-since"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Head:
    """A request head this module understood (a GET or HEAD without a body)."""

    method: str
    target: str
    agent: str
    close: bool  # `Connection: close`
    plain: bool  # no Range and no condition: a hit's answer is the whole file


def parse(head: bytes) -> Head | None:
    """`head` (up to and including its blank line) if it is a plain HTTP/1.1 GET or HEAD
    read without doubt; None for anything else (aiohttp reads it)."""
    if len(head) > HEAD_LIMIT or head.count(b"\r") != head.count(b"\n"):
        return None  # a bare CR or LF: framing other parsers may read otherwise
    lines = head[:-4].split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1 or max(map(len, lines)) > MAX_LINE:
        return None  # aiohttp refuses it (431, 400): so it is aiohttp's
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in (b"GET", b"HEAD"):
        return None
    if not _TARGET.match(parts[1]):
        return None
    agent, close, plain, seen = "", False, True, set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name) or not _VALUE.match(value):
            return None  # also a folded line (it starts with a space or a tab)
        name = name.lower()
        if name in _FOREIGN or name in seen:  # a header twice: aiohttp's rules (some 400)
            return None
        seen.add(name)
        value = value.strip(b" \t")
        if name in _CONDITIONAL:
            plain = False
        elif name == b"user-agent":
            agent = value.decode("ascii")
        elif name == b"connection":
            tokens = {t.strip(b" \t").lower() for t in value.split(b",")}
            if not tokens <= {b"keep-alive", b"close"}:
                return None
            close = b"close" in tokens
    if b"host" not in seen:  # HTTP/1.1 requires one: aiohttp answers 400
        return None
    return Head(parts[0].decode("ascii"), parts[1].decode("ascii"), agent, close, plain)


def may_start_a_head(buf: bytes) -> bool:
    """Whether bytes without a head's end yet may still become one `parse` reads (else
    they are aiohttp's now: garbage, a TLS hello on the plain port, bare LF lines)."""
    first = buf[:5]
    if not (b"GET ".startswith(first[:4]) or b"HEAD ".startswith(first)):
        return False
    return buf.count(b"\n") == buf.count(b"\r\n")


def router_target(target: str) -> bool:
    """Answered by the apt router in `app.Handler.handle` (not one of the own pages)."""
    if target.startswith("http://"):
        return True
    return (
        target.startswith("/") and target not in OWN_PATHS and not target.startswith(OWN_PREFIXES)
    )


class Parts(Protocol):
    """What the hot path reads of the running service (the router is replaced whole by a
    reload: it is read at each request)."""

    router: Router
    engine: CacheEngine
    holdings: Holdings


class HotPath:
    """Answers the hot requests of one process's plain port (`answer`)."""

    def __init__(self, parts: Parts, tally: Tally) -> None:
        self.parts, self.tally = parts, tally
        self.answered = 0  # requests answered here (the rest: aiohttp's)
        self._prefixes: dict[str, tuple[Meta, bytes]] = {}
        self._second = -1
        self._date = b""

    def answer(self, head: Head, remote: str) -> bytes | None:
        """The whole response to `head` when it is a memoised hit; None: aiohttp's."""
        started = time.monotonic()
        if not head.plain or not router_target(head.target):
            return None
        parts = self.parts
        try:
            route = parts.router.route(head.target)
        except (BadPath, Forbidden, ValueError):  # aiohttp's handler writes the refusal
            return None
        hit = parts.engine.hot_hit(route)
        if hit is None or hit.body is None:
            return None
        prefix = self._prefix(hit.entry.key, hit.entry.meta)
        if prefix is None:
            return None
        get = head.method == "GET"
        if get:
            parts.holdings.hit(route.key)
        tail = b"Connection: close\r\n\r\n" if head.close else b"\r\n"
        out = b"".join((prefix, self._now(), tail, hit.body if get else b""))
        self.answered += 1
        nbytes = len(hit.body) if get else 0
        self.tally.count(
            Answered(
                head.method, head.target, "HTTP/1.1", remote, head.agent, 200, nbytes,
                CacheStatus.HIT, time.monotonic() - started, None,
            )
        )  # fmt: skip
        return out

    def ahead(self, head: Head) -> Route | None:
        """The route of a request a client queued, if its download may start before the
        requests queued ahead of it are answered (`_Handler._look_ahead`): a plain GET of
        a file that never changes and is not an index. An index may teach what the files
        after it must be (the digests of a Packages file), and the apt router's refusals
        and the appliance's own pages are answered in turn; so these are not fetched
        ahead, nor anything behind them until they are answered."""
        if head.method != "GET" or not head.plain or head.close:
            return None  # (nothing after a `close` is answered: aiohttp refuses it)
        if not router_target(head.target):
            return None
        try:
            route = self.parts.router.route(head.target)
        except (BadPath, Forbidden, ValueError):
            return None
        if route.freshness is not Freshness.IMMUTABLE or classify(route.key) is not None:
            return None
        return route

    def fetch_ahead(self, route: Route) -> asyncio.Task[bool] | None:
        """Start `route`'s download now (`CacheEngine.prefetch`)."""
        return self.parts.engine.prefetch(route)

    def _prefix(self, key: str, meta: Meta) -> bytes | None:
        """The response's status line and headers up to `Date:` (memoised per entry)."""
        known = self._prefixes.get(key)
        if known is not None and known[0] is meta:
            return known[1]
        values = (
            meta.content_type or "application/octet-stream",
            meta.last_modified or formatdate(usegmt=True),
            meta.etag or f'"{meta.sha256 or meta.size}"',
        )
        if any("\r" in v or "\n" in v for v in values):
            return None  # aiohttp refuses to send such a header: so does this
        prefix = (
            "HTTP/1.1 200 OK\r\n"
            f"Content-Type: {values[0]}\r\n"
            "Accept-Ranges: bytes\r\n"
            f"X-Cache: {CacheStatus.HIT.value}\r\n"
            f"Last-Modified: {values[1]}\r\n"
            f"ETag: {values[2]}\r\n"
            f"Content-Length: {meta.size}\r\n"
        ).encode()
        if meta.last_modified is not None:  # without one, the time of this answer
            if len(self._prefixes) >= PREFIXES_LIMIT:
                self._prefixes.clear()
            self._prefixes[key] = (meta, prefix)
        return prefix

    def _now(self) -> bytes:
        """`Date:` and `Server:` lines, the date formatted once a second."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._date = (
                f"Date: {formatdate(second, usegmt=True)}\r\nServer: {SERVER_SOFTWARE}\r\n"
            ).encode()
        return self._date
