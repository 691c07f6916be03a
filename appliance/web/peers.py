"""Streaming a download from the worker or unit that fetches it (`cache.fleet.Peers`).

A process that finds a file's fetch lease held by another (`Store.claim` names the
holder) asks that holder for its download in progress, at `FLIGHT` + the key: the holder
answers with the bytes it has and the rest as they arrive, the last byte only once its
download is verified, or 404 when it is not downloading that file. So clients of a
waiting worker or unit get their first byte as soon as the holder's clients do, instead
of after the whole file; one upstream GET either way.

Whom it asks: `worker-N` is a sibling worker, over its Unix socket; `NAME@URL` is a unit
of the same store at its `peer_url`, asked only if that URL is one of `cache.store.peers`
(a lease is an object anybody with the bucket's credentials can write: it must never make
a unit connect where its operator did not say). Anything else: nobody to ask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from urllib.parse import quote

import aiohttp

from appliance.web.workers import Workers

log = logging.getLogger(__name__)

FLIGHT = "/.archive-local/flight/"  # + the key, quoted: the holder's download of it
CONNECT_TIMEOUT = 2.0  # seconds: a holder that does not answer at once is waited for instead


class PeerStreams:
    """`Peers` for the engine: sibling workers by socket, other units by their URL."""

    def __init__(
        self,
        workers: Workers | None,
        allowed: Callable[[], Sequence[str]],
        read_timeout: float,
    ) -> None:
        self.workers = workers
        self.allowed = allowed  # the configured peers' URLs (read at each use: reload)
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=read_timeout
        )
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _where(self, holder: str) -> tuple[str, str] | None:
        """(session name, base URL) of the holder, or None when it is nobody we ask."""
        workers = self.workers
        if holder.startswith("worker-") and workers is not None:
            index = holder.removeprefix("worker-")
            if index.isdigit() and int(index) in workers.others:
                return f"worker-{int(index)}", "http://worker"
            return None
        _name, at, url = holder.rpartition("@")
        if at and url in self.allowed():
            return "units", url
        return None

    def _session(self, name: str) -> aiohttp.ClientSession:
        session = self._sessions.get(name)
        if session is None or session.closed:
            if name.startswith("worker-") and self.workers is not None:
                path = self.workers.sockets[int(name.removeprefix("worker-"))]
                # no pool limit: each waiting client streams on its own connection, and
                # 100 of them (aiohttp's default) must not hold up the next file's
                connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(path), limit=0)
            else:
                connector = aiohttp.TCPConnector(limit=0)
            # no proxy from the environment, no decoding: the peer's bytes as they are
            session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, auto_decompress=False
            )
            self._sessions[name] = session
        return session

    async def open(self, holder: str, key: str) -> aiohttp.ClientResponse | None:
        where = self._where(holder)
        if where is None:
            return None
        name, base = where
        try:
            response = await self._session(name).get(
                base + FLIGHT + quote(key), allow_redirects=False
            )
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            log.info("peer %s did not answer for %s: %s", holder, key, exc)
            return None
        if response.status != 200 or response.content_length is None:
            response.release()
            return None
        return response

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
