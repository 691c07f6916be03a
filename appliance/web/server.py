"""The listening side: aiohttp's low-level server with the limits a public port needs.

- a cap on open connections per client address: one host cannot take every socket
  (the 503 is written straight to the socket, before any request is read);
- a malformed request is one INFO line, not an ERROR with a traceback: clients and
  scanners send garbage, and a log of tracebacks hides the real errors;
- `[::]` listens on IPv6 *and* IPv4 (asyncio would set IPV6_V6ONLY).
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from appliance.config import Listen

log = logging.getLogger(__name__)

_TOO_MANY_BODY = b"too many connections from your address; retry later\n"
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Connection: close\r\nRetry-After: 5\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)


class _Handler(RequestHandler):
    """aiohttp's per-connection protocol, logging bad requests as what they are."""

    peer: str | None = None

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            reason = (exc.message or type(exc).__name__).splitlines()[0][:200]
            log.info("bad request from %s: %s %s", self.peer, exc.code, reason)
            return
        super().log_exception(*args, **kw)


class Server(web.Server):
    """`web.Server` with a per-address connection cap; `refused` counts the turned away."""

    def __init__(self, handler: Any, *, connections_per_client: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.cap = connections_per_client
        self.per_client: Counter[str] = Counter()
        self.refused = 0

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        handler.peer = address  # type: ignore[attr-defined]
        self.per_client[address] += 1
        super().connection_made(handler, transport)
        if self.per_client[address] > self.cap:
            self.refused += 1
            if self.refused % 1000 == 1:
                log.warning(
                    "%s has more than %d connections open: turning new ones away "
                    "(limits.connections_per_client; %d so far)",
                    address,
                    self.cap,
                    self.refused,
                )
            transport.write(_TOO_MANY)
            transport.close()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        address = getattr(handler, "peer", None)
        if address is not None:
            handler.peer = None  # type: ignore[attr-defined]
            self.per_client[address] -= 1
            if self.per_client[address] <= 0:
                del self.per_client[address]
        super().connection_lost(handler, exc)


def listening_socket(
    listen: Listen, backlog: int = 1024, reuse_port: bool = False
) -> socket.socket | None:
    """A dual-stack socket for `[::]` (IPv4 clients too); None: let aiohttp bind.
    `reuse_port`: several worker processes bind the same port."""
    if listen.host != "::":
        return None
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", listen.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
