"""CONNECT tunnels for https apt sources: uncached byte pipes to allowed hosts.

aiohttp's server has no CONNECT support, so after the upstream connection is
open the client's transport is handed to a `_Pipe` protocol; aiohttp's own
handler is told to close the connection once the tunnel ends.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from aiohttp import web

from appliance.cache.egress import EgressPolicy

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0


class _Pipe(asyncio.Protocol):
    """Copies what one side receives to the other, with back-pressure."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.last_activity = time.monotonic()
        self._done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.peer is not None:
            self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
        return True  # keep our side open to send the rest of the answer

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()
        if not self._done.done():
            self._done.set_result(None)

    # our write buffer is full: stop reading from the peer until it drains
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()


async def _addresses(host: str, port: int, policy: EgressPolicy) -> list[str]:
    """The host's addresses that the egress policy allows (a name may resolve anywhere)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = [info[4][0] for info in infos]
    usable = [a for a in found if policy.resolved_problem(host, a, port) is None]
    if not usable:
        problems = {policy.resolved_problem(host, a, port) for a in found}
        raise OSError(f"refused: {'; '.join(sorted(p for p in problems if p))}")
    return usable


async def tunnel(
    request: web.BaseRequest, host: str, port: int, policy: EgressPolicy
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    client = request.transport
    if client is None:
        return web.Response(status=499)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            addresses = await _addresses(host, port, policy)
            upstream, up_pipe = await loop.create_connection(
                lambda: _Pipe(done), addresses[0], port
            )
    except (OSError, TimeoutError) as exc:
        log.info("CONNECT %s:%d failed: %s", host, port, exc)
        return web.Response(status=502, text=f"cannot connect to {host}:{port}\n")
    assert isinstance(client, asyncio.Transport)
    down_pipe = _Pipe(done)
    down_pipe.transport, down_pipe.peer = client, upstream
    up_pipe.peer = client
    client.set_protocol(down_pipe)
    client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    log.info("CONNECT %s:%d tunnel open", host, port)
    try:
        while not done.done():
            idle = time.monotonic() - max(up_pipe.last_activity, down_pipe.last_activity)
            if idle >= IDLE_TIMEOUT:
                log.info("CONNECT %s:%d idle for %.0f s, closing", host, port, idle)
                break
            await asyncio.wait([done], timeout=IDLE_TIMEOUT - idle)
    finally:
        upstream.close()
        client.close()
    resp = web.Response(status=200)
    resp.force_close()
    return resp
