"""Send a cached file to a client: one path for complete files and growing downloads.

Bytes go out with `loop.sendfile` (zero copy) in bounded chunks, each under a
stall timeout, so a client that stops reading cannot hold a handler forever.
If the download behind a growing file fails, the connection is closed before
the announced length is reached: the client sees an error, never a short file
that looks complete. A pass-through answer (not stored) is relayed chunk by
chunk under the same rule: with a size or digest to check, its last byte waits
for the check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import BinaryIO

import aiohttp
from aiohttp import web

from appliance.cache.download import Download, Phase
from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import TransferLimits, body_chunks
from appliance.cache.results import CacheStatus, FetchError, FromPeer, Hit, Miss, PassThrough
from appliance.cache.route import Expect
from appliance.cache.store import header_value
from appliance.web.ranges import Plan, plan

log = logging.getLogger(__name__)

# sendfile chunks start small and double while the client keeps up: a fast client gets
# few large calls (throughput), a slow one small calls, each under the stall timeout.
FIRST_CHUNK = 1024 * 1024
MAX_CHUNK = 16 * 1024 * 1024
STALL_TIMEOUT = 120.0  # seconds one chunk may take: ~9 KB/s is the slowest client kept


# what the cache did for a request (its response says it in `X-Cache`), for the access
# log to count: typed on the request, never parsed back from the header
CACHE_STATUS = web.RequestKey("cache_status", CacheStatus)


class ClientGone(Exception):
    """The client stopped reading or went away."""


async def answers_read(request: web.BaseRequest) -> bool:
    """Wait until the client has read enough of the answers before this request: False
    (the connection closed) when it read none for STALL_TIMEOUT. aiohttp reads and answers
    pipelined requests without waiting for that: a client sending thousands and reading
    none would have every answer buffered here."""
    protocol = request.protocol
    if protocol.transport is None or not protocol.writing_paused:
        return True
    try:
        async with asyncio.timeout(STALL_TIMEOUT):
            await request.writer.drain()
    except TimeoutError:
        protocol.force_close()
        return False
    return True


async def deliver(
    request: web.BaseRequest, engine: CacheEngine, result: Hit | Miss | PassThrough
) -> web.StreamResponse:
    """`result` to the client; once its response is out, its status on the request
    (`CACHE_STATUS`). An error raised on the way has no status, as its page has none."""
    if isinstance(result, Miss):
        resp = await _deliver_download(request, engine, result.download)
    elif isinstance(result, FromPeer):
        resp = await _deliver_from_peer(request, engine, result)
    elif isinstance(result, PassThrough):
        resp = await _deliver_passthrough(request, engine, result)
    else:
        resp = await _deliver_entry(request, engine, result)
    request[CACHE_STATUS] = result.status
    return resp


async def _deliver_entry(
    request: web.BaseRequest, engine: CacheEngine, hit: Hit
) -> web.StreamResponse:
    entry = hit.entry
    meta = entry.meta
    headers = _headers(
        meta.etag or f'"{meta.sha256 or meta.size}"',
        meta.last_modified,
        meta.content_type,
        hit.status,
    )
    if hit.warning:
        headers["Warning"] = '111 archive-local "Revalidation Failed"'
        headers["X-Archive-Local-Offline"] = "upstream unreachable, serving the cached copy"
    if hit.body is not None:
        return await _send(request, hit.body, meta.size, headers, download=None)
    async with engine.lease(entry) as file:
        if file is None:
            raise web.HTTPServiceUnavailable(text="cache entry vanished, retry\n")
        return await _send(request, file, meta.size, headers, download=None)


async def _deliver_download(
    request: web.BaseRequest, engine: CacheEngine, download: Download
) -> web.StreamResponse:
    with engine.joined(download) as file:
        if download.total is None:  # no length known: wait for the whole, verified file
            await download.finished()
            if download.state is not Phase.DONE:
                raise web.HTTPBadGateway(text=f"upstream transfer failed: {download.error}\n")
        headers = _headers(
            download.etag, download.last_modified, download.content_type, CacheStatus.MISS
        )
        assert download.total is not None
        return await _send(request, file, download.total, headers, download=download)


async def _deliver_passthrough(
    request: web.BaseRequest, engine: CacheEngine, p: PassThrough
) -> web.StreamResponse:
    """Relay upstream's answer as it comes; Range and conditions are not applied (200)."""
    upstream = p.response
    headers = _relayed_headers(p)
    headers["X-Archive-Local-Not-Stored"] = p.reason
    if p.encoding:
        headers["Content-Encoding"] = p.encoding
    length = upstream.content_length
    if None not in (length, p.expect.size) and length != p.expect.size:
        upstream.close()
        engine.rejected(str(upstream.url))
        raise web.HTTPBadGateway(
            text=f"upstream: {length} bytes announced, {p.expect.size} expected\n"
        )
    resp = web.StreamResponse(status=200, headers=headers)
    if length is None:
        length = p.expect.size
    if length is not None:
        resp.content_length = length
    try:
        await resp.prepare(request)
        if request.method == "HEAD":
            upstream.close()
            await resp.write_eof()
            return resp
        await _relay(upstream, resp, p)
    except (ConnectionError, TimeoutError) as exc:
        upstream.close()
        _abort(request, resp, f"client transfer aborted at {request.path}: {exc}")
        return resp
    except (_UpstreamBroke, aiohttp.ClientError) as exc:
        upstream.close()
        if isinstance(exc, _UpstreamBroke):
            engine.rejected(str(upstream.url))
        _abort(request, resp, f"upstream failed, aborting client transfer: {exc}")
        return resp
    upstream.release()
    await resp.write_eof()
    return resp


async def _deliver_from_peer(
    request: web.BaseRequest, engine: CacheEngine, p: FromPeer
) -> web.StreamResponse:
    """Relay the holder's download as it arrives (it sends its last byte only once the
    file is verified there). If the holder breaks off, the rest comes from the file got
    another way (`p.resume`: the lease taken over, or the next holder's), once its first
    bytes are shown to be the ones already sent; else the client's transfer is cut."""
    peer = p.response
    length = peer.content_length
    headers = _relayed_headers(p)
    headers["X-Archive-Local-From"] = header_value(p.holder, 300) or "peer"  # bucket text
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_length = length
    sent, digest = 0, hashlib.sha256()  # digest: of the bytes sent
    check = _Check(p.expect)  # a peer is trusted no more than an upstream

    async def send(data: bytes | memoryview) -> None:
        nonlocal sent
        if data:
            digest.update(data)
            sent += len(data)
            await resp.write(data)

    try:
        await resp.prepare(request)
        if request.method == "HEAD" or length is None:
            peer.close()
            await resp.write_eof()
            return resp
        broke = await _relay_peer(peer, length, p.limits, check, send)
        if broke is None:
            try:
                await send(check.finish())
            except _UpstreamBroke as exc:
                peer.close()
                engine.refusals.refuse("peer", "digest", request.path, f": {exc}")
                raise
            peer.release()
        else:
            peer.close()
            log.warning(
                "peer %s broke off %s at byte %d of %d (%s): getting the file another way",
                p.holder,
                request.path,
                sent,
                length,
                broke,
            )
            await _send_rest(request, engine, p, sent, digest.hexdigest(), length)
        await resp.write_eof()
    except (ClientGone, ConnectionError, TimeoutError, _UpstreamBroke) as exc:
        peer.close()
        _cut(request, resp, exc)
    return resp


async def _relay_peer(
    peer: aiohttp.ClientResponse,
    length: int,
    limits: TransferLimits,
    check: _Check,
    send: Callable[[bytes | memoryview], Awaitable[None]],
) -> Exception | None:
    """The peer's `length` bytes through `check` to `send`; what broke them off, if any."""
    chunks = body_chunks(peer, limits).__aiter__()
    received = 0
    while received < length:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return _UpstreamBroke(f"{received} of {length} bytes")
        except Exception as exc:  # the peer's connection failed or timed out
            return exc
        chunk = chunk[: length - received]
        received += len(chunk)
        for piece in check.take(chunk):
            await send(piece)
    return None


async def _send_rest(
    request: web.BaseRequest, engine: CacheEngine, p: FromPeer, sent: int, digest: str, length: int
) -> None:
    """Bytes `sent`.. of the file from another source, if it starts with what was sent."""
    if p.resume is None:
        raise _UpstreamBroke("the peer broke off")
    try:
        entry = await p.resume()
    except FetchError as exc:
        raise _UpstreamBroke(str(exc)) from None
    async with engine.lease(entry) as file:
        if file is None or entry.meta.size != length:
            raise _UpstreamBroke(f"the file got again is not the one announced ({length} bytes)")
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, _prefix_sha256, file, sent) != digest:
            raise _UpstreamBroke("the file got again does not start with the bytes sent")
        await _copy(request, file, sent, length, None)


def _prefix_sha256(file: BinaryIO, size: int) -> str:
    digest, pos = hashlib.sha256(), 0
    while pos < size:
        block = os.pread(file.fileno(), min(1 << 20, size - pos), pos)
        if not block:
            break
        digest.update(block)
        pos += len(block)
    return digest.hexdigest()


async def _relay(
    upstream: aiohttp.ClientResponse, resp: web.StreamResponse, p: PassThrough
) -> None:
    """Copy the body; with an expectation, the last byte only once it checks out."""
    check = _Check(p.expect)
    async for chunk in body_chunks(upstream, p.limits):
        for piece in check.take(chunk):
            if piece:
                await resp.write(piece)
    if out := check.finish():
        await resp.write(out)


class _Check:
    """A relayed body against what it must be (an upstream's or a peer's): with an
    expectation the last byte is held back until size and digest match, so a wrong
    body never reaches a client as a complete one."""

    def __init__(self, expect: Expect) -> None:
        self.expect = expect
        self.digest = hashlib.new(expect.algorithm) if expect.algorithm else None
        self.size = 0
        self.held = b""

    def take(self, chunk: bytes) -> tuple[bytes | memoryview, ...]:
        """What may be sent now, in pieces (the byte held so far, then `chunk` but its
        last byte): no copy of the chunk."""
        expect = self.expect
        self.size += len(chunk)
        if expect.size is not None and self.size > expect.size:
            raise _UpstreamBroke(f"body longer than the expected {expect.size} bytes")
        if self.digest is not None:
            self.digest.update(chunk)
        if not expect.known or not chunk:
            return (chunk,)
        pieces = (self.held, memoryview(chunk)[:-1])
        self.held = chunk[-1:]
        return pieces

    def finish(self) -> bytes:
        """The held byte, once the whole body checks out."""
        expect = self.expect
        if expect.size is not None and self.size != expect.size:
            raise _UpstreamBroke(f"size {self.size}, expected {expect.size}")
        if self.digest is not None and self.digest.hexdigest() != (expect.digest or "").lower():
            raise _UpstreamBroke(f"{expect.algorithm} mismatch")
        return self.held


def _relayed_headers(p: PassThrough) -> dict[str, str]:
    """Headers for a body relayed as it comes (no Range on it); an upstream's or a peer's
    values only where they can be sent as they are."""
    got = p.response.headers
    headers = _headers(
        header_value(got.get("ETag")),
        header_value(got.get("Last-Modified")),
        header_value(got.get("Content-Type")),
        p.status,
    )
    del headers["Accept-Ranges"]
    return headers


def _headers(
    etag: str | None, last_modified: str | None, content_type: str | None, status: CacheStatus
) -> dict[str, str]:
    headers = {
        "Content-Type": content_type or "application/octet-stream",
        "Accept-Ranges": "bytes",
        "X-Cache": status.value,
        "Last-Modified": last_modified or formatdate(usegmt=True),
    }
    if etag:
        headers["ETag"] = etag
    return headers


async def _send(
    request: web.BaseRequest,
    source: BinaryIO | bytes,
    size: int,
    headers: dict[str, str],
    download: Download | None,
) -> web.StreamResponse:
    p = plan(request.headers, size, headers.get("ETag"), headers.get("Last-Modified"))
    resp = web.StreamResponse(status=p.status, headers=headers)
    try:
        await _respond(request, resp, p, source, size, download)
    except (ClientGone, ConnectionError, TimeoutError, _UpstreamBroke) as exc:
        _cut(request, resp, exc)
    return resp


async def _respond(
    request: web.BaseRequest,
    resp: web.StreamResponse,
    p: Plan,
    source: BinaryIO | bytes,
    size: int,
    download: Download | None,
) -> None:
    if p.status == 304:
        for h in ("Content-Type", "Accept-Ranges"):
            resp.headers.pop(h, None)
        await resp.prepare(request)
        return
    if p.status == 416:
        resp.headers["Content-Range"] = f"bytes */{size}"
        resp.content_length = 0
        await resp.prepare(request)
        return
    if p.status == 206:
        resp.headers["Content-Range"] = f"bytes {p.start}-{p.end - 1}/{size}"
    resp.content_length = p.end - p.start
    await resp.prepare(request)
    if request.method == "HEAD" or p.end == p.start:
        await resp.write_eof()
        return
    if isinstance(source, bytes):  # small and in memory: one write, no sendfile round-trip
        await resp.write(source[p.start : p.end])
    else:
        await _copy(request, source, p.start, p.end, download)
    await resp.write_eof()


class _UpstreamBroke(Exception):
    pass


async def _copy(
    request: web.BaseRequest, file: BinaryIO, pos: int, end: int, download: Download | None
) -> None:
    loop = asyncio.get_running_loop()
    chunk = FIRST_CHUNK
    while pos < end:
        available = end
        if download is not None:
            if download.releasable <= pos and download.active:
                await download.wait_beyond(pos)
            if download.state is Phase.FAILED:
                raise _UpstreamBroke(download.error or "download failed")
            available = min(end, download.releasable)
        count = min(available - pos, chunk)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ClientGone("connection closed")
        started = loop.time()
        async with asyncio.timeout(STALL_TIMEOUT):
            sent = await loop.sendfile(transport, file, pos, count)
        if sent <= 0:
            raise ClientGone("nothing sent")
        pos += sent
        if loop.time() - started < 0.5:
            chunk = min(chunk * 2, MAX_CHUNK)


def _cut(request: web.BaseRequest, resp: web.StreamResponse, exc: Exception) -> None:
    """End the client's transfer short: upstream (or a peer) broke, or the client left."""
    if isinstance(exc, _UpstreamBroke):
        _abort(request, resp, f"upstream failed, aborting client transfer: {exc}")
    else:
        _abort(request, resp, f"client transfer aborted at {request.path}: {exc}")


def _abort(request: web.BaseRequest, resp: web.StreamResponse, why: str) -> None:
    # a client that leaves is routine (INFO); an upstream that breaks is worth a WARNING
    log.log(logging.WARNING if why.startswith("upstream") else logging.INFO, "%s", why)
    resp.force_close()
    if request.transport is not None:
        request.transport.close()
