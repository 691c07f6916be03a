"""A fake upstream mirror on 127.0.0.1 that counts requests and can misbehave.

Runs an aiohttp server in its own thread so tests may stay synchronous.
Faults: `rate[path]` limits bytes/s, `drop_after[path]` announces the full length
but closes the connection after that many bytes; `headers[path]` are sent with the file;
`delay[path]` waits that many seconds before any answer (a 304 too).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from aiohttp import web


@dataclass
class Seen:
    method: str
    path: str
    status: int
    headers: dict[str, str]


SEEN = web.RequestKey("seen", Seen)


class Upstream:
    def __init__(self, root: Path, ssl_context: ssl.SSLContext | None = None) -> None:
        self.root = Path(root)
        self.ssl_context = ssl_context
        self.requests: list[Seen] = []
        self.rate: dict[str, float] = {}
        self.drop_after: dict[str, int] = {}
        self.ignore_range: set[str] = set()  # answer 200 with the whole file regardless
        self.stall_after: dict[str, int] = {}  # send this many bytes, then go silent
        self.headers: dict[str, dict[str, str]] = {}  # extra response headers (Content-Encoding)
        self.finished_at: dict[str, float] = {}  # monotonic time the last body byte left
        self.delay: dict[str, float] = {}  # seconds before answering at all
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def count(self, suffix: str = "", status: int | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if r.path.endswith(suffix) and (status is None or r.status == status)
        )

    def start(self) -> Upstream:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(self._on_prepare)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        """Close the listening socket: from now on the upstream is unreachable."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None

    def restart(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)

    @web.middleware
    async def _record(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        seen = Seen(request.method, request.path, 0, dict(request.headers))
        request[SEEN] = seen
        self.requests.append(seen)
        return await handler(request)

    @staticmethod
    async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if SEEN in request:
            request[SEEN].status = response.status  # final: FileResponse picks 304 late

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in self.delay:
            await asyncio.sleep(self.delay[path])
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.root.resolve()) or not file.is_file():
            raise web.HTTPNotFound()
        faults = (
            path in self.rate
            or path in self.drop_after
            or path in self.ignore_range
            or path in self.stall_after
            or path in self.headers
        )
        if not faults:
            return web.FileResponse(file)
        data = file.read_bytes()
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Last-Modified": formatdate(file.stat().st_mtime, usegmt=True),
                **self.headers.get(path, {}),
            }
        )
        resp.content_length = len(data)
        await resp.prepare(request)
        limit = self.drop_after.get(path, self.stall_after.get(path, len(data)))
        rate = self.rate.get(path)
        step = 64 * 1024
        for pos in range(0, limit, step):
            await resp.write(data[pos : min(pos + step, limit)])
            if rate:
                await asyncio.sleep(step / rate)
        if path in self.stall_after:
            await asyncio.sleep(30)  # silent, connection open: only a read timeout ends this
        if limit < len(data):
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        self.finished_at[path] = time.monotonic()
        return resp
