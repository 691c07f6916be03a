"""The one upstream HTTP client: session, timeouts and mirror failover.

Subsystems never open their own sessions; they hand the fetcher a list of
candidate URLs (mirrors of the same file) and get back the first usable answer.
A failure is a value (`UpstreamFailure`) the engine's policy can act on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from appliance import __version__
from appliance.config import UpstreamConfig

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # between two reads of the body, not for the whole body
# Bytes buffered per upstream response before reading pauses: large enough that the socket
# keeps streaming while a chunk is written and hashed in a worker thread.
READ_BUFFER = 2 * 1024 * 1024


@dataclass
class UpstreamFailure:
    """No mirror gave a usable answer. `status` is what the client should see."""

    status: int
    reason: str

    @property
    def upstream_error(self) -> bool:
        """Network failure or 5xx: the case where a stale copy is served."""
        return self.status >= 500


class Fetcher:
    """Owns the aiohttp ClientSession; close it with `close()`."""

    @classmethod
    def from_config(cls, config: UpstreamConfig) -> Fetcher:
        return cls(connect_timeout=config.connect_timeout, read_timeout=config.read_timeout)

    def __init__(
        self,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        # called after each upstream round-trip: (upstream host[:port], seconds, error or None)
        self.monitor: Callable[[str, float, str | None], None] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={
                    "User-Agent": f"archive-local/{__version__}",
                    # the bytes are cached and re-served as files: no transfer encodings
                    "Accept-Encoding": "identity",
                },
                auto_decompress=False,  # bytes are cached exactly as upstream sent them
                read_bufsize=READ_BUFFER,
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=32),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _report(self, url: str, started: float, error: str | None) -> None:
        if self.monitor is not None:
            self.monitor(_upstream_label(url), time.monotonic() - started, error)

    async def open(
        self, urls: Sequence[str], headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse | UpstreamFailure:
        """GET each mirror in turn; return the first 200/304 (206 to a Range) response, unread.

        404 and 5xx move on to the next mirror (a mirror may lag); if every
        mirror fails the most telling status wins: 404 over 502/504.
        """
        failures: list[UpstreamFailure] = []
        for url in urls:
            started = time.monotonic()
            try:
                resp = await self.session.get(
                    URL(url, encoded=True), headers=dict(headers or {}), max_redirects=5
                )
            except TimeoutError:
                failures.append(UpstreamFailure(504, f"{url}: timed out"))
                self._report(url, started, "timeout")
                continue
            except (aiohttp.ClientError, OSError) as exc:
                failures.append(UpstreamFailure(502, f"{url}: {exc or type(exc).__name__}"))
                self._report(url, started, "connect")
                continue
            if resp.status in (200, 304) or (resp.status == 206 and "Range" in (headers or {})):
                self._report(url, started, None)
                return resp
            resp.release()
            failures.append(UpstreamFailure(resp.status, f"{url}: HTTP {resp.status}"))
            self._report(url, started, "not-found" if resp.status == 404 else "http-error")
        for failure in failures:
            log.info("upstream: %s", failure.reason)
        return _most_telling(failures)


def _upstream_label(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2].lower() or "unknown"


def _most_telling(failures: list[UpstreamFailure]) -> UpstreamFailure:
    """A 4xx from any mirror beats network errors and 5xx from the others."""
    if not failures:
        return UpstreamFailure(502, "no upstream configured")
    return next((f for f in failures if f.status < 500), failures[0])
