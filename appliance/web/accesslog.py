"""The access log and per-request metrics (`Tally`), fed once each answer is sent.

aiohttp calls its access logger (`logger_class`) with the request (carrying the cache's
status once it was delivered: `deliver.CACHE_STATUS`), the response (status, body length)
and the duration once the response is out; the hot path (`hotpath`) counts the hits it
answers itself the same way. Together that is every request, refused ones included, so
metrics are counted there too. What a sibling worker asks on its Unix socket (cache
events, status and metrics to merge, a download it streams for its own client) is neither
logged nor counted: it is no client's request.
Lines are buffered and written once a second, so logging costs no write per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.abc import AbstractAccessLogger

from appliance.cache.results import CacheStatus
from appliance.metrics import Metrics
from appliance.web.clients import Clients
from appliance.web.deliver import CACHE_STATUS
from appliance.web.events import Events
from appliance.web.workers import is_internal

log = logging.getLogger(__name__)

_VERSIONS = {HttpVersion11: "HTTP/1.1", HttpVersion10: "HTTP/1.0"}
_REFUSED = frozenset({400, 403, 405, 406, 411, 413, 414, 431})
MAX_PENDING = 50_000  # lines buffered between two flushes at most
# lines that make the flusher write before its second is up: under thousands of requests a
# second, a second's lines are megabytes of small strings, and the memory they took stays
# with the process (glibc keeps the freed heap); 2,000 lines are half a megabyte
FLUSH_LINES = 2_000


def service_of(path: str) -> str | None:
    """The metrics service of a request path; None for the appliance's own pages."""
    if path.startswith("/images/"):
        return "images"
    if path.startswith(("/streams/", "/keys/")):
        return "feed"
    if path in ("/", "/favicon.ico", "/healthz") or path.startswith(
        ("/api/", "/metrics", "/.well-known/", "/.archive-local/")
    ):
        return None  # (`/.archive-local/`: a unit's call; its client is counted there)
    return "apt"


@dataclass(frozen=True, slots=True)
class Answered:
    """One client request once its answer is out, as the log and the metrics count it."""

    method: str
    path: str
    version: str  # "HTTP/1.1"
    remote: str | None
    agent: str  # "" when none was sent
    status: int
    nbytes: int  # body bytes sent
    cache: CacheStatus | None  # None: not delivered from the cache
    seconds: float
    reason: str | None  # a refusal's or failure's one line


class AccessLog:
    """Buffered access log lines (common log format or JSON) to a file or stderr."""

    def __init__(self, target: str, fmt: str = "common") -> None:
        self.target = target
        self.json = fmt == "json"
        self._lines: list[str] = []
        self._file: IO[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._due: asyncio.Event | None = None  # FLUSH_LINES are waiting
        self._stamp_second = -1
        self._stamp = ""
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self.target != "off"

    def start(self) -> None:
        if not self.enabled:
            return
        # a header's bytes that are not UTF-8 (kept by aiohttp as surrogates) are written
        # escaped: one client's User-Agent must not stop the log (stderr does the same)
        self._file = (
            sys.stderr
            if self.target == "stderr"
            else open(self.target, "a", errors="backslashreplace")  # noqa: SIM115
        )
        self._due = asyncio.Event()
        self._task = asyncio.create_task(self._flusher())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.flush()
        if self._file is not None and self._file is not sys.stderr:
            self._file.close()

    def flush(self) -> None:
        """Write the buffered lines now (at shutdown; the flusher does it while running)."""
        if self._lines and self._file is not None:
            lines, self._lines = self._lines, []
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        """Line by line: no multi-megabyte string is built (nor kept by a thread's arena)."""
        assert self._file is not None
        try:
            if self.dropped:
                self._file.write(f"# access log: {self.dropped} lines dropped (slow disk)\n")
                self.dropped = 0
            self._file.writelines(lines)
            self._file.flush()
        except OSError as exc:  # a full disk must not stop the service
            log.warning("access log: %s", exc)

    async def _flusher(self) -> None:
        """Once a second, or once FLUSH_LINES wait, hand the lines to a thread: a slow disk
        never stalls serving."""
        due = self._due
        assert due is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await due.wait()
            due.clear()
            if self._lines and self._file is not None:
                lines, self._lines = self._lines, []
                await asyncio.to_thread(self._write, lines)

    def _append(self, line: str) -> None:
        if len(self._lines) >= MAX_PENDING:  # the disk is slower than the requests: bounded
            self.dropped += 1
            return
        self._lines.append(line)
        if len(self._lines) == FLUSH_LINES and self._due is not None:
            self._due.set()

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
        return self._stamp

    def write(self, a: Answered) -> None:
        now = time.time()
        agent = a.agent or "-"
        if self.json:
            record: dict[str, Any] = {
                "time": round(now, 3),
                "remote": a.remote,
                "method": a.method,
                "path": _clip(a.path),
                "status": a.status,
                "bytes": a.nbytes,
                "cache": a.cache.value if a.cache else None,
                "seconds": round(a.seconds, 6),
                "agent": _clip(agent, 256),
            }
            if a.reason:
                record["reason"] = a.reason
            self._append(json.dumps(record) + "\n")
        else:  # common log format + cache result + duration in microseconds (Apache's %D)
            stamp = self._stamp if int(now) == self._stamp_second else self._timestamp(now)
            end = f' reason="{a.reason}"\n' if a.reason else "\n"
            mark = a.cache.value if a.cache else "-"
            self._append(
                f'{a.remote or "-"} - - [{stamp}] "{a.method} {_clip(a.path)} '
                f'{a.version}" {a.status} {a.nbytes} "-" "{_clip(agent, 256)}" {mark} '
                f"{int(a.seconds * 1e6)}{end}"
            )


def _clip(text: str, limit: int = 1024) -> str:
    """Client-chosen text in a log line, bounded (an 8 KB path is logged as its first KB)."""
    text = text.replace('"', "%22") if '"' in text else text
    return text if len(text) <= limit else text[:limit] + "...(clipped)"


def _reason(response: web.StreamResponse) -> str | None:
    """The one-line reason a refused or failed request got (the body of our error pages)."""
    if response.status < 400 or not isinstance(response, web.Response):
        return None
    if response.status == 406:  # the usage answer to apt's GET /, not a failure
        return response.reason
    body = response.body
    if not isinstance(body, bytes | bytearray) or len(body) > 500:
        return response.reason
    return body.decode("utf-8", "replace").strip().replace('"', "'").replace("\n", " ")[:300]


class Tally:
    """Counts a client's answered request: metrics, the clients table, the status page's
    events and the access log. aiohttp's access logger (`logger_class`) calls it for
    every request aiohttp answers, the hot path (`hotpath`) for the ones it answers."""

    def __init__(
        self,
        metrics: Metrics,
        access: AccessLog,
        events: Events | None = None,
        clients: Clients | None = None,
    ) -> None:
        self.metrics, self.access, self.events, self.clients = metrics, access, events, clients

    def count(self, a: Answered) -> None:
        """One request answered."""
        service = None if a.method == "CONNECT" else service_of(a.path)
        if service is not None:
            if a.status < 400:  # one not delivered from the cache counts as a hit
                result = (a.cache or CacheStatus.HIT).result
            else:
                result = "refused" if a.status in _REFUSED else "error"
            served = a.nbytes if a.status < 300 else 0
            upstream = a.cache is not None and a.cache.upstream
            self.metrics.request(service, result, served, upstream, a.path)
            if self.clients is not None:
                self.clients.add(a.remote or "?", a.agent, served)
        if self.events is not None and a.status in _REFUSED and a.status != 406:
            self.events.refused(a.method, a.path, a.status, a.reason)
        if self.access.enabled:
            self.access.write(a)


def logger_class(tally: Tally) -> type[AbstractAccessLogger]:
    """An aiohttp access logger class counting with `tally`."""

    class Observer(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            path = request.raw_path
            status = response.status
            reason = _reason(response) if status >= 400 else None
            if reason and status >= 500:
                log.warning("%s %s: %d %s", request.method, path, status, reason)
            if is_internal(request):  # a sibling worker's call: its client is counted there
                return
            v = request.version
            # body bytes of the response as sent (Content-Length: the whole file or range)
            nbytes = (response.content_length or 0) if request.method != "HEAD" else 0
            tally.count(
                Answered(
                    request.method,
                    path,
                    _VERSIONS.get(v) or f"HTTP/{v.major}.{v.minor}",
                    request.remote,
                    request.headers.get("User-Agent", ""),
                    status,
                    nbytes,
                    request.get(CACHE_STATUS),
                    time,
                    reason,
                )
            )

        @property
        def enabled(self) -> bool:
            return True

    return Observer
