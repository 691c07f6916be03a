"""The listening sockets, bound before anything serves them: a module of its own (no
aiohttp) so that the master of several workers, which binds them and serves nothing,
imports no more than it uses."""

from __future__ import annotations

import errno
import os
import socket

from appliance.config import Listen


def bind(listen: Listen, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for `listen` (one per address it resolves to; `[::]` one
    dual-stack socket, IPv4 clients too), bound now and never with SO_REUSEPORT: the
    workers of one service share these (their master binds them), and no other process
    can bind the port while they are open (Linux lets any process of the same user join
    a SO_REUSEPORT group)."""
    if listen.host == "::":
        targets = [(socket.AF_INET6, ("::", listen.port))]
    else:
        infos = socket.getaddrinfo(
            listen.host or None, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        targets = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    socks: list[socket.socket] = []
    try:
        for family, address in targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(listen.host != "::"))
            try:
                sock.bind(address)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRNOTAVAIL and len(targets) > 1:
                    continue  # `localhost` on a machine without IPv6 (as asyncio does)
                raise
            socks.append(sock)
            sock.listen(backlog)
            sock.setblocking(False)
        if not socks:
            raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks
