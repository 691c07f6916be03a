"""The listening side: aiohttp's low-level server with the limits a public port needs.

- a cap on open connections per client address: one host cannot take every socket
  (the 503 is written straight to the socket, before any request is read);
- a malformed request is one INFO line, not an ERROR with a traceback: clients and
  scanners send garbage, and a log of tracebacks hides the real errors;
- `[::]` listens on IPv6 *and* IPv4 (asyncio would set IPV6_V6ONLY);
- the HTTPS port counts an address at the TCP accept, not after the TLS handshake, and
  bounds handshakes in time and number: a client that opens thousands and never finishes
  them would otherwise hold a socket and a 256 KiB buffer for each, for a minute.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
import ssl
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from appliance.cache.route import Route
from appliance.config import Listen
from appliance.web.deliver import STALL_TIMEOUT
from appliance.web.hotpath import HEAD_LIMIT, Head, HotPath, may_start_a_head, parse

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # s: asyncio's default is 60
HANDSHAKES = 256  # TLS handshakes under way at once, every address together
HANDSHAKES_PER_CLIENT = 32  # of those, from one address: 32 read buffers are 8 MiB
HELD_LIMIT = 64 * 1024  # bytes of an unfinished head held while aiohttp answers
RESUME_TURNS = 50  # turns of the loop aiohttp may take to be idle after an answer
# requests queued behind the one aiohttp answers whose downloads start at once: apt asks
# up to ten files ahead; their upstream round-trips and commits then overlap
LOOK_AHEAD = 4

_TOO_MANY_BODY = b"too many connections from your address; retry later\n"
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Connection: close\r\nRetry-After: 5\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)


@dataclass(slots=True)
class _Queued:
    """A head given to aiohttp and not answered yet, as the look-ahead sees it."""

    head: Head
    started: bool = False  # its download was started ahead (or it is being answered)
    looked: bool = False  # `route` is known
    route: Route | None = None  # None: it may not be fetched ahead (`HotPath.ahead`)


class _Handler(RequestHandler):
    """aiohttp's per-connection protocol, logging bad requests as what they are, and
    letting the hot path (`hotpath`) answer what it can before aiohttp sees the bytes.

    On the plain port each complete request head is read here first: a hot hit is
    answered at once; any other plain head goes to aiohttp, with every complete head
    read after it until aiohttp has answered them all and is idle (so answers leave in
    the order asked, and a pipeline of misses is aiohttp's as before); a head the hot
    path does not fully understand makes the connection aiohttp's for good, with every
    byte not yet answered.
    """

    peer: str | None = None
    counted = False  # its address's connection count is held (and given back on close)
    internal = False  # accepted on a worker's Unix socket: a sibling's (`workers.is_internal`)
    hot: HotPath | None = None  # the plain port's hot path, while this connection uses it
    held = b""  # bytes read and not yet answered nor given to aiohttp
    waiting = False  # aiohttp answers the heads given to it; then they come here again
    handed = 0  # heads given to aiohttp and not answered yet
    stalled = False  # reading stopped here: the client reads no hot answers
    # the heads given to aiohttp and not answered yet, in order (`_look_ahead`); and the
    # downloads started ahead by key, for the request to tell a file fetched for it from
    # a hit (`app.Handler`)
    queued: deque[_Queued] | None = None
    ahead: dict[str, asyncio.Task[bool]] | None = None

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            reason = (exc.message or type(exc).__name__).splitlines()[0][:200]
            log.info("bad request from %s: %s %s", self.peer, exc.code, reason)
            return
        super().log_exception(*args, **kw)

    def data_received(self, data: bytes) -> None:
        if self.hot is None or not data:  # (b"": aiohttp re-reading what it queued)
            super().data_received(data)
            return
        self.held = self.held + data if self.held else data
        if not self.waiting:
            self._serve()
        else:
            self._hand_on()
        if self._paused and len(self.held) > HELD_LIMIT and not self.stalled:
            self.stalled = True  # the client reads no answers: read no more requests
            self._pause_transport_reading()

    def log_access(self, request: Any, response: Any, time: float | None) -> None:
        super().log_access(request, response, time)  # aiohttp has answered a request
        if self.waiting:
            self.handed -= 1
            if self.queued:
                self.queued.popleft()
                self._look_ahead()
            if self.handed <= 0:
                self._loop.call_soon(self._resume, 0)

    def _hand_on(self) -> None:
        """While aiohttp answers, the complete heads that follow go to it too (it keeps
        its pipeline: an apt client's next file is asked as the last one ends); a head
        the hot path does not understand makes the connection aiohttp's for good."""
        buf, cut, heads = self.held, 0, []
        while (end := buf.find(b"\r\n\r\n", cut)) >= 0:
            if (head := parse(buf[cut : end + 4])) is None:
                self._give_up()
                return
            cut = end + 4
            heads.append(_Queued(head))
        if heads:
            self.held, self.handed = buf[cut:], self.handed + len(heads)
            if self.queued is not None:
                self.queued.extend(heads)
            super().data_received(buf[:cut])
            self._look_ahead()
        if len(self.held) > HELD_LIMIT:  # no end of a head in sight: aiohttp refuses it
            self._give_up()

    def _serve(self) -> None:
        """Answer the complete heads held, in order, until one is not hot."""
        hot, transport, buf = self.hot, self.transport, self.held
        assert hot is not None
        answered = False
        while buf and transport is not None and not self._gone():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > HEAD_LIMIT or not may_start_a_head(buf):
                    break  # aiohttp refuses it (at once, as it would alone)
                self.held = buf
                self._answered(answered)
                return
            head = parse(buf[: end + 4])
            if head is None:
                break
            try:
                out = hot.answer(head, self.peer or "?")
            except Exception:  # aiohttp's path answers it (an error there is logged there)
                log.debug("hot path: %s", head.target, exc_info=True)
                out = None
            if out is None:  # aiohttp answers this one and what follows, until idle
                self.held, self.waiting, self.handed = buf[end + 4 :], True, 1
                self.queued = deque([_Queued(head, started=True)])  # (answered now)
                self._answered(answered)
                super().data_received(buf[: end + 4])
                self._hand_on()
                return
            transport.write(out)
            answered = True
            buf = buf[end + 4 :]
            if head.close:
                self.held, self.hot = b"", None
                self.force_close()  # after the answer: `close` flushes what is written
                return
            if self._paused:  # the client is not reading: the rest once it does
                self.held = buf
                self._answered(answered)
                return
        else:  # every head held is answered
            self.held = b""
            self._answered(answered)
            return
        self.held = buf
        self._answered(answered)
        self._give_up()

    def pause_writing(self) -> None:
        """The client is not reading its answers. aiohttp's handler waits for them to go
        (`app.Handler.handle`), the hot path holds its answers and, past HELD_LIMIT, stops
        reading requests; the idle timer waits as long as a stalled transfer would."""
        super().pause_writing()
        if self._keepalive_timeout:
            deadline = self._loop.time() + STALL_TIMEOUT
            self._next_keepalive_close_time = max(self._next_keepalive_close_time, deadline)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._keepalive_timeout:
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        if self.stalled:
            self.stalled = False
            self._resume_transport_reading()  # (unless aiohttp holds it for its own queue)
        if self.hot is not None and self.held and not self.waiting:
            self._loop.call_soon(self._serve_again)

    def _serve_again(self) -> None:
        if self.hot is not None and not self.waiting and not self._paused and not self._gone():
            self._serve()

    def _look_ahead(self) -> None:
        """Start the downloads of the first LOOK_AHEAD requests queued behind the one
        aiohttp answers, up to the first that may not be fetched ahead (`HotPath.ahead`:
        an index, a refusal, a page of the appliance's, anything not a plain GET)."""
        hot, queued = self.hot, self.queued
        if hot is None or not queued or self._gone():
            return
        for i, item in enumerate(itertools.islice(queued, 0, LOOK_AHEAD + 1)):
            if item.head.close:  # aiohttp answers nothing after it: look no further, ever
                self.queued = None
                return
            if not item.looked:
                item.route, item.looked = hot.ahead(item.head), True
            route = item.route
            if route is None:
                return  # the files behind it wait for its answer, as they always did
            if i == 0 or item.started or (self.ahead and route.key in self.ahead):
                continue
            item.started = True
            try:
                task = hot.fetch_ahead(route)
            except Exception:  # its own request meets the error, and says it
                log.debug("look-ahead: %s", item.head.target, exc_info=True)
                continue
            if task is not None:
                if self.ahead is None:
                    self.ahead = {}
                self.ahead[route.key] = task

    def fetched_ahead(self, key: str) -> bool:
        """Whether `key`'s file was downloaded ahead for the request asking it now (its
        answer is then that download's: a MISS, not a hit). Asked once per request."""
        task = self.ahead.pop(key, None) if self.ahead else None
        return task is not None and task.done() and not task.cancelled() and task.result()

    def _gone(self) -> bool:
        """Closing, or closed. Checked before a later turn of the loop gives aiohttp bytes:
        its `connection_lost` may already be on its way, and a request aiohttp queued then
        would start after it (on a handler torn down: a traceback per connection)."""
        transport = self.transport
        return transport is None or transport.is_closing() or self._force_close or self._close

    def _answered(self, answered: bool) -> None:
        if answered and self._keepalive_timeout and not self._paused:  # from now
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout

    def _resume(self, turns: int) -> None:
        """Once aiohttp is idle again, the held bytes are read here again."""
        if not self.waiting or self.handed > 0 or self._gone():
            return  # (heads given since: their last answer calls again)
        if self._waiter is None or self._waiter.done() or self._messages:
            if turns < RESUME_TURNS:  # its loop reaches its wait within a turn or two
                self._loop.call_soon(self._resume, turns + 1)
            else:
                self._give_up()
            return
        self.waiting, self.handed, self.queued = False, 0, None
        self.ahead = None  # every request handed is answered: none is left to ask
        self._serve()

    def _give_up(self) -> None:
        """The connection is aiohttp's from now on, with every byte not yet answered."""
        held, self.held, self.hot, self.waiting = self.held, b"", None, False
        self.queued = None  # (downloads started ahead run on; their requests join them)
        if held:
            super().data_received(held)


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else "?"


class Server(web.Server):
    """`web.Server` with a per-address connection cap; `refused` counts the turned away."""

    def __init__(
        self,
        handler: Any,
        *,
        connections_per_client: int,
        hot: HotPath | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.hot = hot  # answers a plain-port connection's hot hits (not TLS, not siblings)
        self.cap = connections_per_client
        self.per_client: Counter[str] = Counter()
        self.refused = 0

    def __call__(self) -> _Handler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def admit(self, address: str) -> bool:
        """Count one more connection from `address`; False (nothing counted) at the cap."""
        if self.per_client[address] >= self.cap:
            self.refuse(address, f"{self.cap} connections open (limits.connections_per_client)")
            return False
        self.per_client[address] += 1
        return True

    def release(self, address: str) -> None:
        self.per_client[address] -= 1
        if self.per_client[address] <= 0:
            del self.per_client[address]

    def refuse(self, address: str, why: str) -> None:
        """Count a connection turned away; a WARNING for the first of each thousand."""
        self.refused += 1
        if self.refused % 1000 == 1:
            log.warning("%s: %s: turning new ones away (%d so far)", address, why, self.refused)

    def connection_made(self, handler: RequestHandler, transport: Any) -> None:
        super().connection_made(handler, transport)
        assert isinstance(handler, _Handler)
        # known from the accept on: the access logger asks after the response, when the
        # sibling may have closed the connection (and the transport is gone)
        handler.internal = isinstance(transport.get_extra_info("sockname"), str)
        if handler.counted:  # at the TCP accept, by the TLS port's gate
            return
        handler.peer = _address(transport)
        if self.admit(handler.peer):
            handler.counted = True
            handler.hot = None if handler.internal else self.hot
            return
        # closed on the next turn of the loop: aiohttp's handler task must have started
        # (it asserts its connection is not lost yet, an ERROR per refused connection)
        handler.close()
        transport.write(_TOO_MANY)
        self._loop.call_soon(transport.close)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if isinstance(handler, _Handler) and handler.counted and handler.peer is not None:
            handler.counted = False
            self.release(handler.peer)
        super().connection_lost(handler, exc)


class _Gate(asyncio.Protocol):
    """A TLS port's connection until its handshake is done. Its address is counted from
    the TCP accept (a handshake that never ends holds a socket and asyncio's 256 KiB TLS
    read buffer), the handshake is cut off after HANDSHAKE_TIMEOUT, then the TLS transport
    goes to aiohttp's handler with the count."""

    def __init__(self, listener: TlsListener) -> None:
        self.listener = listener
        self.address = "?"
        self.early = bytearray()  # request bytes decrypted before the handler took over
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.counted = False  # holds one of server.per_client[address]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello is for the TLS layer start_tls puts in
        self.transport = transport
        self.address = _address(transport)
        if not self.listener.enter(self):
            transport.abort()
            return
        self.counted = True
        self.task = asyncio.get_running_loop().create_task(self._upgrade(transport))

    def data_received(self, data: bytes) -> None:
        self.early += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self._leave(handed=False)

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        handed = False
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport,
                self,
                self.listener.context(),
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
            if tls is None:  # the client went away as the handshake ended
                return
            handler = self.listener.server()
            handler.peer, handler.counted = self.address, True
            handed = True
            tls.set_protocol(handler)
            handler.connection_made(tls)
            if self.early:
                handler.data_received(bytes(self.early))
        except OSError as exc:  # a failed handshake (ssl.SSLError), a timeout, a reset
            log.debug("TLS handshake with %s: %s", self.address, exc)
            # its traceback holds start_tls's frame, which holds the exception: a cycle
            # keeping the 256 KiB buffer until a full garbage collection, long after
            exc.__traceback__ = None
        finally:
            self._leave(handed)

    def _leave(self, handed: bool) -> None:
        """Out of the handshake (once, whichever path comes first); the address's count
        goes with the handler or back to the server."""
        self.listener.leave(self)
        if self.counted:
            self.counted = False
            if not handed:
                self.listener.server.release(self.address)


def _network(address: str) -> str:
    """Whom a handshake counts against: the address, or its /64 for IPv6 (one host may
    hold a whole /64, and would otherwise have as many addresses as it likes)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class TlsListener:
    """The protocol factory of the TLS port. At most HANDSHAKES_PER_CLIENT connections
    from one address (IPv6: one /64) are in a TLS handshake at once: beyond that a new TCP
    connection is closed at once. At most HANDSHAKES from everyone: beyond that the oldest
    handshake is cut to make room, so that idle connections from a few hosts cannot shut
    out the clients that complete theirs in milliseconds. `context` is read at each
    accept: a reload's new certificate serves the next handshake."""

    def __init__(self, server: Server, context: Callable[[], ssl.SSLContext]) -> None:
        self.server = server
        self.context = context
        self.gates: dict[_Gate, None] = {}  # in their handshake, oldest first
        self.per_client: Counter[str] = Counter()  # of those, by address (IPv6: /64)

    def __call__(self) -> _Gate:
        return _Gate(self)

    def enter(self, gate: _Gate) -> bool:
        address, network = gate.address, _network(gate.address)
        if self.per_client[network] >= HANDSHAKES_PER_CLIENT:
            self.server.refuse(address, f"{HANDSHAKES_PER_CLIENT} TLS handshakes under way")
            return False
        if not self.server.admit(address):
            return False
        while len(self.gates) >= HANDSHAKES:
            oldest = next(iter(self.gates))
            self.server.refuse(oldest.address, f"{HANDSHAKES} TLS handshakes under way: oldest cut")
            self.leave(oldest)
            if oldest.transport is not None:
                oldest.transport.abort()
        self.gates[gate] = None
        self.per_client[network] += 1
        return True

    def leave(self, gate: _Gate) -> None:
        if gate in self.gates:
            del self.gates[gate]
            network = _network(gate.address)
            self.per_client[network] -= 1
            if self.per_client[network] <= 0:
                del self.per_client[network]

    def close(self) -> None:
        """Cut the connections still in their handshake (the service stops)."""
        for gate in list(self.gates):
            if gate.transport is not None:
                gate.transport.abort()


class TlsSite(web.BaseSite):
    """The HTTPS port as an aiohttp site (runner.cleanup stops it first), accepting plain
    TCP through a TlsListener on a socket bound by `bind`."""

    def __init__(
        self, runner: web.BaseRunner, listener: TlsListener, listen: Listen, sock: socket.socket
    ) -> None:
        super().__init__(runner, backlog=1024)
        self.listener = listener
        self.listen = listen
        self.sock = sock

    @property
    def name(self) -> str:
        return f"https://{self.listen}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.listener, sock=self.sock, backlog=self._backlog
        )

    async def stop(self) -> None:
        await super().stop()
        self.listener.close()
