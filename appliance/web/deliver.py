"""Send a cached file to a client: one path for complete files and growing downloads.

Bytes go out with `loop.sendfile` (zero copy) in bounded chunks, each under a
stall timeout, so a client that stops reading cannot hold a handler forever.
If the download behind a growing file fails, the connection is closed before
the announced length is reached: the client sees an error, never a short file
that looks complete.
"""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate
from typing import BinaryIO

from aiohttp import web

from appliance.cache.download import Download, State
from appliance.cache.engine import CacheEngine, Hit, Miss
from appliance.web.ranges import plan

log = logging.getLogger(__name__)

# sendfile chunks start small and double while the client keeps up: a fast client gets
# few large calls (throughput), a slow one small calls, each under the stall timeout.
FIRST_CHUNK = 1024 * 1024
MAX_CHUNK = 16 * 1024 * 1024
STALL_TIMEOUT = 120.0  # seconds one chunk may take: ~9 KB/s is the slowest client kept


class ClientGone(Exception):
    """The client stopped reading or went away."""


async def deliver(
    request: web.BaseRequest, engine: CacheEngine, result: Hit | Miss
) -> web.StreamResponse:
    if isinstance(result, Miss):
        return await _deliver_download(request, engine, result.download)
    return await _deliver_entry(request, engine, result)


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
    file = await engine.open(entry)
    if file is None:
        raise web.HTTPServiceUnavailable(text="cache entry vanished, retry\n")
    engine.pin(entry.key)
    try:
        return await _send(request, file, meta.size, headers, download=None)
    finally:
        engine.unpin(entry.key)
        file.close()


async def _deliver_download(
    request: web.BaseRequest, engine: CacheEngine, download: Download
) -> web.StreamResponse:
    if download.total is None:  # no Content-Length upstream: wait for the whole file
        await download.finished()
        if download.state is not State.DONE or download.entry is None:
            raise web.HTTPBadGateway(text=f"upstream transfer failed: {download.error}\n")
        return await _deliver_entry(request, engine, Hit(download.entry, "MISS"))
    file = download.attach()
    engine.pin(download.key)  # once committed, it must not be evicted under this client
    try:
        headers = _headers(download.etag, download.last_modified, download.content_type, "MISS")
        return await _send(request, file, download.total, headers, download=download)
    finally:
        engine.unpin(download.key)
        download.detach()


def _headers(
    etag: str | None, last_modified: str | None, content_type: str | None, status: str
) -> dict[str, str]:
    headers = {
        "Content-Type": content_type or "application/octet-stream",
        "Accept-Ranges": "bytes",
        "X-Cache": status,
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
    if p.status == 304:
        for h in ("Content-Type", "Accept-Ranges"):
            resp.headers.pop(h, None)
        await resp.prepare(request)
        return resp
    if p.status == 416:
        resp.headers["Content-Range"] = f"bytes */{size}"
        resp.content_length = 0
        await resp.prepare(request)
        return resp
    if p.status == 206:
        resp.headers["Content-Range"] = f"bytes {p.start}-{p.end - 1}/{size}"
    resp.content_length = p.end - p.start
    await resp.prepare(request)
    if request.method == "HEAD" or p.end == p.start:
        await resp.write_eof()
        return resp
    if isinstance(source, bytes):  # small and in memory: one write, no sendfile round-trip
        await resp.write(source[p.start : p.end])
        await resp.write_eof()
        return resp
    try:
        await _copy(request, source, p.start, p.end, download)
    except (ClientGone, ConnectionError, TimeoutError) as exc:
        _abort(request, resp, f"client transfer aborted at {request.path}: {exc}")
        return resp
    except _UpstreamBroke as exc:
        _abort(request, resp, f"upstream failed, aborting client transfer: {exc}")
        return resp
    await resp.write_eof()
    return resp


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
            if download.releasable <= pos and download.state is State.RUNNING:
                await download.wait_beyond(pos)
            if download.state is State.FAILED:
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


def _abort(request: web.BaseRequest, resp: web.StreamResponse, why: str) -> None:
    log.warning("%s", why)
    resp.force_close()
    if request.transport is not None:
        request.transport.close()
