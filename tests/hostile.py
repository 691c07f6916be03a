"""The tests' scriptable fake upstream: raw HTTP/1.1 on a socket, so framing can be wrong.

aiohttp's own server always frames correctly; a broken mirror does not. Each path
can be given a behaviour (a coroutine writing whatever bytes it likes); the rest are
answered correctly, with keep-alive. Requests are recorded and connections counted.
A test double, so it lives beside `tests/upstream.py`, not in `tests/components/`
(real third-party servers the tests start).

    up = Hostile({"/debian/pool/a.deb": data}).start()
    up.behave["/debian/pool/a.deb"] = short(1000)      # Content-Length, then 1000 bytes
    up.default = answer("403 Forbidden")               # every other path

Given a `root`, it also serves the files under it (`files` first). As a program it is the
plain slow upstream of an appliance the test runs elsewhere (under systemd in a namespace):
`python -m tests.hostile HOST PORT ROOT RATE` serves ROOT at RATE bytes/s until killed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gzip
import http.client
import mimetypes
import re
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

LAST_MODIFIED = 1704067200  # Mon, 01 Jan 2024 00:00:00 GMT: the date every `files` entry has
TYPES = mimetypes.MimeTypes()  # a file's Content-Type by its name, as aiohttp's FileResponse
TYPES.encodings_map.clear()  # Packages.gz is application/gzip, not "text/plain, gzip-encoded"
for _type, _ext in {"application/gzip": ".gz", "application/x-xz": ".xz"}.items():
    TYPES.add_type(_type, _ext)


@dataclass
class Request:
    method: str
    path: str
    headers: http.client.HTTPMessage  # a mapping with case-insensitive names
    conn: int  # which connection carried it (1, 2, ...)
    at: float = field(default_factory=time.monotonic)
    body: bytes = b""  # what the client sent after the head (Content-Length or chunked)
    status: int = 0  # of the answer's head, once sent (0: none, e.g. a connection cut first)


class Conn:
    """One client connection as a behaviour sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int):
        self.reader, self.writer, self.n = reader, writer, n
        self.closed = False
        self.request: Request | None = None  # the one being answered

    async def send(self, data: bytes) -> None:
        req = self.request
        if req is not None and not req.status and data.startswith(b"HTTP/1."):
            code = data[9:12]
            if code.isdigit() and not code.startswith(b"1"):
                req.status = int(code)
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.closed = True
        self.writer.close()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a crashed or hostile server does."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


Behaviour = Callable[["Hostile", Request, Conn], Awaitable[None]]


def head(status: str = "200 OK", length: int | None = None, **extra: str) -> bytes:
    """A response head; `extra` fields (`Content_Type=...`) add to or replace the defaults."""
    fields = {
        "Date": formatdate(usegmt=True),
        "Content-Type": "application/octet-stream",
        "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
    }
    if length is not None:
        fields["Content-Length"] = str(length)
    for key, value in extra.items():
        name = key.replace("_", "-")
        fields = {k: v for k, v in fields.items() if k.lower() != name.lower()}
        fields[name] = value
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(frozen=True)
class Resource:
    """What a path names: its bytes and their validators."""

    body: bytes
    mtime: float
    etag: str
    content_type: str = "application/octet-stream"


async def well_formed(up: Hostile, req: Request, conn: Conn, rate: float | None = None) -> None:
    """A correct answer (RFC 9110, as a static file server gives): 404; 412 or 304 to the
    conditions; 206 to one byte range (416 past the end); else the bytes (at `rate` bytes/s)."""
    res = await asyncio.to_thread(up.resource, req.path)
    if res is None:
        await conn.send(head("404 Not Found", 0))
        return
    fields = {
        "ETag": res.etag,
        "Last_Modified": formatdate(res.mtime, usegmt=True),
        "Content_Type": res.content_type,
        "Accept_Ranges": "bytes",
    }
    refused = _preconditions(up, req, res)
    if refused is not None:
        await conn.send(head(refused, 0 if refused.startswith("412") else None, **fields))
        return
    size = len(res.body)
    status, start, end = _span(req, res)
    if status.startswith("416"):
        await conn.send(head(status, 0, Content_Range=f"bytes */{size}"))
        return
    if status.startswith("206"):
        fields["Content_Range"] = f"bytes {start}-{end - 1}/{size}"
    await conn.send(head(status, end - start, **fields))
    if req.method != "HEAD":
        await _send(conn, res.body[start:end], rate)


def _date(value: str | None) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp() if value else None
    except (TypeError, ValueError):
        return None


def _etag_in(header: str, etag: str, weak: bool) -> bool:
    tags = [t.strip() for t in header.split(",")]
    if weak:
        tags, etag = [t.removeprefix("W/") for t in tags], etag.removeprefix("W/")
    return "*" in tags or etag in tags


def _preconditions(up: Hostile, req: Request, res: Resource) -> str | None:
    """The status a condition imposes (RFC 9110 13.2.2), or None: go on."""
    h, mtime = req.headers, int(res.mtime)
    if (match := h.get("if-match")) is not None:
        if not _etag_in(match, res.etag, weak=False):
            return "412 Precondition Failed"
    elif (unmodified := _date(h.get("if-unmodified-since"))) is not None and mtime > unmodified:
        return "412 Precondition Failed"
    if (none_match := h.get("if-none-match")) is not None:
        return "304 Not Modified" if _etag_in(none_match, res.etag, weak=True) else None
    since = _date(h.get("if-modified-since"))
    if since is not None and up.honour_conditionals and mtime <= since:
        return "304 Not Modified"
    return None


def _ranged(req: Request, res: Resource) -> bool:
    """Whether a Range applies: no If-Range, or one naming this very file."""
    if_range = req.headers.get("if-range")
    if if_range is None:
        return True
    if if_range.startswith(('"', "W/")):
        return if_range == res.etag and not if_range.startswith("W/")
    return _date(if_range) == int(res.mtime)


def _span(req: Request, res: Resource) -> tuple[str, int, int]:
    """The status and the bytes [start, end) to send: 206 for one valid, applicable byte
    range; 416 when it starts past the end; else 200 and all of them (RFC 9110 14.2: a
    Range of several, an invalid one or one for another file is ignored)."""
    size = len(res.body)
    whole, past = ("200 OK", 0, size), ("416 Range Not Satisfiable", 0, 0)
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("range", "").strip())
    if m is None or not any(m.groups()) or not _ranged(req, res):
        return whole
    first, last = m.groups()
    if not first:  # the last `last` bytes
        return ("206 Partial Content", max(0, size - int(last)), size) if int(last) else past
    start = int(first)
    if last and int(last) < start:
        return whole
    if start >= size:
        return past
    return "206 Partial Content", start, min(int(last) + 1, size) if last else size


async def _send(conn: Conn, body: bytes, rate: float | None) -> None:
    if rate is None:
        await conn.send(body)
        return
    step = max(1, int(rate / 20))
    for pos in range(0, len(body), step):
        await conn.send(body[pos : pos + step])
        await asyncio.sleep(step / rate)


# --- behaviours -----------------------------------------------------------------------------


def short(n: int, reset: bool = False) -> Behaviour:
    """Announce the whole length, send `n` bytes, then close (FIN, or RST)."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        body = up.files[req.path]
        await conn.send(head("200 OK", len(body)) + body[:n])
        await asyncio.sleep(0.05)
        conn.reset() if reset else conn.close()

    return run


def long(extra: bytes) -> Behaviour:
    """Announce the length, then send more than that on the same connection."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        body = up.files[req.path]
        await conn.send(head("200 OK", len(body)) + body + extra)

    return run


def no_length(cut: int | None = None) -> Behaviour:
    """No Content-Length, no chunking: the body ends when the connection does."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        body = up.files[req.path]
        await conn.send(head("200 OK", None, Connection="close"))
        await conn.send(body if cut is None else body[:cut])
        await asyncio.sleep(0.02)
        conn.close()

    return run


def stray(extra_body: bytes, delay: float = 0.1) -> Behaviour:
    """A correct answer, then, unasked, a second complete response on the connection."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        await well_formed(up, req, conn)
        await asyncio.sleep(delay)
        if not conn.closed:
            await conn.send(head("200 OK", len(extra_body)) + extra_body)

    return run


def stall_after(n: int, seconds: float = 30) -> Behaviour:
    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        body = up.files[req.path]
        await conn.send(head("200 OK", len(body)) + body[:n])
        await asyncio.sleep(seconds)
        conn.close()

    return run


def drip(interval: float, chunk: int = 1) -> Behaviour:
    """The whole length announced, then `chunk` bytes every `interval` seconds."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        body = up.files[req.path]
        await conn.send(head("200 OK", len(body)))
        for pos in range(0, len(body), chunk):
            await conn.send(body[pos : pos + chunk])
            await asyncio.sleep(interval)

    return run


def slow(rate: float) -> Behaviour:
    """A correct answer at about `rate` bytes/s (for downloads that must last a while)."""
    return functools.partial(well_formed, rate=rate)


def range_answer(status: str = "200 OK", content_range: str | None = None) -> Behaviour:
    """Ignore a Range (200, whole body) or answer 206 with the given Content-Range."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        body = up.files[req.path]
        extra = {"Content_Range": content_range} if content_range else {}
        await conn.send(head(status, len(body), **extra) + body)

    return run


def answer(status: str = "200 OK", body: bytes = b"", **extra: str) -> Behaviour:
    """The same well-framed answer to any request (a refusal, an API's fixed reply)."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        await conn.send(head(status, len(body), **extra) + (b"" if req.method == "HEAD" else body))

    return run


def redirect(location: str, status: str = "302 Found") -> Behaviour:
    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        await conn.send(head(status, 0, Location=location))

    return run


def gzip_encoded() -> Behaviour:
    """Content-Encoding: gzip although the request said identity."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        data = gzip.compress(up.files[req.path], mtime=0)
        await conn.send(head("200 OK", len(data), Content_Encoding="gzip") + data)

    return run


def other_bytes(data: bytes) -> Behaviour:
    """A well-framed answer with the wrong bytes (a republished or tampered file)."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        await conn.send(head("200 OK", len(data)) + data)

    return run


def listing() -> Behaviour:
    """What a mirror answers for a directory: an HTML index."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        page = f"<html><body><h1>Index of {req.path}</h1></body></html>\n".encode()
        await conn.send(head("200 OK", len(page), Content_Type="text/html") + page)

    return run


def new_bytes_on_conditional(new: bytes) -> Behaviour:
    """Answer a conditional request with 200 and new bytes (the file changed)."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        if "if-none-match" in req.headers or "if-modified-since" in req.headers:
            await conn.send(head("200 OK", len(new), ETag='"new"') + new)
        else:
            await well_formed(up, req, conn)

    return run


# --- the server -----------------------------------------------------------------------------


class Hostile:
    def __init__(
        self,
        files: dict[str, bytes] | None = None,
        host: str = "127.0.0.1",
        root: Path | None = None,
        port: int = 0,
        ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.root = root  # a directory served too (after `files`)
        self.behave: dict[str, Behaviour] = {}
        self.default: Behaviour = well_formed  # for a path `behave` does not name
        self.requests: list[Request] = []
        self.connections = 0
        self.honour_conditionals = True
        self.host = host
        self.port = port  # 0: any free port, known once started
        self.ssl = ssl  # serve HTTPS with this context
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def count(self, suffix: str = "", status: int | None = None) -> int:
        """Requests whose path ends with `suffix` (and answered with `status`)."""
        return sum(
            1
            for r in self.requests
            if r.path.endswith(suffix) and (status is None or r.status == status)
        )

    def path_of(self, target: str) -> str:
        """The path a request is recorded and scripted under: here its target, as sent."""
        return target

    def resource(self, path: str) -> Resource | None:
        """`files[path]`, else a regular file under `root` (never one outside it)."""
        body = self.files.get(path)
        if body is not None:
            return Resource(body, LAST_MODIFIED, f'"{len(body)}-{hash(body) & 0xFFFF:x}"')
        if self.root is None:
            return None
        root = self.root.resolve()
        file = (root / unquote(urlsplit(path).path).lstrip("/")).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            return None
        st = file.stat()
        guessed = TYPES.guess_type(file.name)[0] or "application/octet-stream"
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        return Resource(file.read_bytes(), st.st_mtime, etag, guessed)

    def start(self) -> Hostile:
        """Listen, and serve from a thread of its own; a failed bind raises here."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._listen())
            except OSError as exc:
                ready.set_exception(exc)
                return
            ready.set_result(None)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._client, self.host, self.port, ssl=self.ssl, limit=1 << 20
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the listening socket and every connection: from now on it is unreachable."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for w in list(self._writers):
                w.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)

    def restart(self) -> None:
        """Listen again, on the same port."""
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self._loop)
        if self._thread:
            self._thread.join(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = Conn(reader, writer, self.connections)
        self._writers.add(writer)
        try:
            while not conn.closed:
                try:
                    req = await _read_request(conn)
                except (
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ValueError,
                    OSError,
                ):
                    break  # the client went away, or what it sent is not HTTP/1.1
                req.path = self.path_of(req.path)
                self.requests.append(req)
                conn.request = req
                try:
                    await self.behave.get(req.path, self.default)(self, req, conn)
                except (ConnectionError, OSError):
                    break
                if req.headers.get("connection", "").lower() == "close":
                    break
        except asyncio.CancelledError:
            pass  # close(): ended here, so that asyncio does not report it as a failure
        finally:
            self._writers.discard(writer)
            if not conn.closed:
                writer.close()


async def _read_request(conn: Conn) -> Request:
    """One request, its body included, so that the next one starts where this one ends."""
    line, _, fields = (await conn.reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
    method, path, _version = [*line.decode("latin-1").split(" "), "", ""][:3]
    headers = BytesHeaderParser(_class=http.client.HTTPMessage).parsebytes(fields)
    req = Request(method, path, headers, conn.n)  # type: ignore[arg-type]
    if headers.get("expect", "").lower() == "100-continue":
        await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while size := int((await conn.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await conn.reader.readexactly(size))
            await conn.reader.readexactly(2)
        while await conn.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        req.body = b"".join(chunks)
    else:
        req.body = await conn.reader.readexactly(int(headers.get("content-length", 0)))
    return req


class Canary:
    """A listener that must never be connected to (another loopback address or port)."""

    def __init__(self, host: str = "127.0.0.2", port: int = 0) -> None:
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
        )
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.hits = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def main(argv: list[str]) -> None:
    """`HOST PORT ROOT RATE`: serve ROOT's files at RATE bytes/s until killed."""
    host, port, root, rate = argv
    up = Hostile(host=host, port=int(port), root=Path(root))
    up.default = slow(float(rate))
    up.start()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
