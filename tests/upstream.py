"""A fake upstream mirror on 127.0.0.1 that serves a directory, counts requests and can
misbehave: the well-behaved preset of the one scriptable upstream (`tests/hostile.py`).

Runs in its own thread so tests may stay synchronous. Files are answered as a static file
server does (conditionals, one byte range, HEAD). Faults, by path:
`rate[path]` limits bytes/s, `drop_after[path]` announces the full length but closes the
connection after that many bytes, `stall_after[path]` sends that many and goes silent,
`ignore_range` answers 200 with the whole file, `headers[path]` are sent with the file;
each of these answers 200 and the whole length, whatever the request's conditions.
`delay[path]` waits that many seconds before any answer (a 304 too).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.hostile import Conn, Hostile, Request, head, well_formed

STEP = 64 * 1024  # bytes per write when a fault paces or cuts the body


class Upstream(Hostile):
    def __init__(self, root: Path, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(root=Path(root), ssl=ssl_context)
        self.ssl_context = ssl_context
        self.rate: dict[str, float] = {}
        self.drop_after: dict[str, int] = {}
        self.ignore_range: set[str] = set()  # answer 200 with the whole file regardless
        self.stall_after: dict[str, int] = {}  # send this many bytes, then go silent
        self.headers: dict[str, dict[str, str]] = {}  # extra response headers (Content-Encoding)
        self.finished_at: dict[str, float] = {}  # monotonic time the last body byte left
        self.delay: dict[str, float] = {}  # seconds before answering at all
        self.default = Upstream._answer  # a Behaviour: (upstream, request, connection)

    def path_of(self, target: str) -> str:
        """The decoded path, without the query: what the tests name files by."""
        return unquote(urlsplit(target).path)

    def start(self) -> Upstream:
        super().start()
        return self

    async def _answer(self, req: Request, conn: Conn) -> None:
        path = req.path
        if path in self.delay:
            await asyncio.sleep(self.delay[path])
        faults = (self.rate, self.drop_after, self.ignore_range, self.stall_after, self.headers)
        if not any(path in fault for fault in faults):
            await well_formed(self, req, conn)
            return
        res = await asyncio.to_thread(self.resource, path)
        if res is None:
            await conn.send(head("404 Not Found", 0))
            return
        last_modified = formatdate(res.mtime, usegmt=True)
        extra = self.headers.get(path, {})
        await conn.send(head("200 OK", len(res.body), Last_Modified=last_modified, **extra))
        if req.method == "HEAD":
            return
        limit = self.drop_after.get(path, self.stall_after.get(path, len(res.body)))
        rate = self.rate.get(path)
        for pos in range(0, limit, STEP):
            await conn.send(res.body[pos : min(pos + STEP, limit)])
            if rate:
                await asyncio.sleep(STEP / rate)
        if path in self.stall_after:
            await asyncio.sleep(30)  # silent, connection open: only a read timeout ends this
        if limit < len(res.body):
            await asyncio.sleep(0.05)
            conn.close()
            return
        self.finished_at[path] = time.monotonic()
