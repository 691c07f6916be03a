"""The one upstream HTTP client: session, timeouts, redirects and mirror failover.

Subsystems never open their own sessions; they hand the fetcher a list of
candidate URLs (mirrors of the same file) and get back the first usable answer.
A failure is a value (`UpstreamFailure`) the engine's policy can act on.

Every upstream answer is untrusted input. The fetcher follows redirects itself, only
where `egress.EgressPolicy` allows; pooled connections are re-checked before reuse
(a connection that received bytes nobody asked for is closed, never handed to the
next request); and `body_chunks` bounds a transfer's duration and minimum rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from yarl import URL

from appliance import __version__
from appliance.cache.egress import EgressPolicy, EgressRefused, GuardedResolver
from appliance.config import UpstreamConfig

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # between two reads of the body, not for the whole body
# Bytes buffered per upstream response before reading pauses: large enough that the socket
# keeps streaming while a chunk is written and hashed in a worker thread.
READ_BUFFER = 2 * 1024 * 1024
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass
class UpstreamFailure:
    """No mirror gave a usable answer. `status` is what the client should see."""

    status: int
    reason: str

    @property
    def upstream_error(self) -> bool:
        """Network failure or 5xx: the case where a stale copy is served."""
        return self.status >= 500


@dataclass(frozen=True)
class TransferLimits:
    """Bounds for one body transfer: a 1 byte/s upstream cannot hold clients for ever."""

    deadline: float = 6 * 3600.0  # seconds for the whole body
    min_rate: float = 1024.0  # bytes/s, averaged over `window`
    window: float = 60.0

    @classmethod
    def from_config(cls, config: UpstreamConfig) -> TransferLimits:
        return cls(config.deadline, config.min_rate, config.rate_window)


class TransferTooSlow(aiohttp.ClientPayloadError):
    """The body came slower than `min_rate` or took longer than the deadline."""


class _RateGuard:
    """Received bytes per sliding window; raises once the rate stays below the minimum."""

    def __init__(self, limits: TransferLimits) -> None:
        self.limits = limits
        self.started = time.monotonic()
        self.total = 0
        self._marks: deque[tuple[float, int]] = deque([(self.started, 0)])

    def feed(self, n: int) -> None:
        now = time.monotonic()
        self.total += n
        limits = self.limits
        if now - self._marks[-1][0] >= 1.0:
            self._marks.append((now, self.total))
        # the oldest mark at least one window ago is the reference point
        while len(self._marks) > 1 and now - self._marks[1][0] >= limits.window:
            self._marks.popleft()
        t0, n0 = self._marks[0]
        if limits.min_rate > 0 and now - t0 >= limits.window:
            rate = (self.total - n0) / (now - t0)
            if rate < limits.min_rate:
                raise TransferTooSlow(
                    f"upstream too slow: {rate:.0f} B/s over {now - t0:.0f} s "
                    f"(upstream.min_rate {limits.min_rate:.0f} B/s)"
                )


async def body_chunks(
    response: aiohttp.ClientResponse, limits: TransferLimits, size: int = 1024 * 1024
) -> AsyncIterator[bytes]:
    """The body in chunks of at most `size`, under the deadline and the minimum rate."""
    guard = _RateGuard(limits)
    try:
        async with asyncio.timeout(limits.deadline):
            async for chunk in response.content.iter_chunked(size):
                guard.feed(len(chunk))
                yield chunk
    except TimeoutError:
        if time.monotonic() - guard.started >= limits.deadline:
            raise TransferTooSlow(
                f"upstream transfer exceeded upstream.deadline ({limits.deadline:.0f} s)"
            ) from None
        raise


def close_delimited(response: aiohttp.ClientResponse) -> bool:
    """A body that ends when the connection does: a cut looks exactly like the end."""
    if response.content_length is not None:
        return False
    return "chunked" not in response.headers.get("Transfer-Encoding", "").lower()


def content_encoding(response: aiohttp.ClientResponse) -> str | None:
    """The Content-Encoding upstream applied despite `Accept-Encoding: identity`."""
    value = response.headers.get("Content-Encoding", "").strip().lower()
    return None if value in ("", "identity") else value


class _CheckedConnector(aiohttp.TCPConnector):
    """A pool that re-checks a connection before reusing it.

    aiohttp keeps parsing on a pooled connection: an upstream that sends a second,
    unsolicited response after a body leaves it queued, and the next request on that
    connection would receive it (aiohttp issue #13656). Such a connection, or one
    with unread bytes or an unfinished body, is closed instead of reused.
    """

    async def _get(self, key: Any, traces: Any) -> Any:
        while True:
            conn = await super()._get(key, traces)
            protocol = getattr(conn, "protocol", None)
            if conn is None or (protocol is not None and not protocol.should_close):
                return conn
            log.info("upstream %s: closing a pooled connection with unsolicited data", key.host)
            conn.close()


if not hasattr(aiohttp.TCPConnector, "_get"):  # pragma: no cover - tested by tests/e2e/faults
    raise ImportError("aiohttp changed: _CheckedConnector no longer hooks connection reuse")


class Fetcher:
    """Owns the aiohttp ClientSession; close it with `close()`."""

    @classmethod
    def from_config(cls, config: UpstreamConfig, policy: EgressPolicy | None = None) -> Fetcher:
        return cls(
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            limits=TransferLimits.from_config(config),
            policy=policy,
        )

    def __init__(
        self,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        limits: TransferLimits | None = None,
        policy: EgressPolicy | None = None,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self.limits = limits or TransferLimits()
        self.policy = policy or EgressPolicy()
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
                connector=_CheckedConnector(
                    limit=256, limit_per_host=32, resolver=GuardedResolver(self.policy)
                ),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def report(self, url: str, seconds: float, error: str | None) -> None:
        """Tell the monitor (metrics, status page) how an upstream exchange went."""
        if self.monitor is not None:
            self.monitor(_upstream_label(url), seconds, error)

    def _report(self, url: str, started: float, error: str | None) -> None:
        self.report(url, time.monotonic() - started, error)

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
                resp = await self._follow(url, dict(headers or {}))
            except _Refused as exc:
                log.warning("upstream: %s: %s", url, exc)
                failures.append(UpstreamFailure(502, f"{url}: {exc}"))
                self._report(url, started, "refused")
                continue
            except TimeoutError:
                failures.append(UpstreamFailure(504, f"{url}: timed out"))
                self._report(url, started, "timeout")
                continue
            except aiohttp.ClientConnectorError as exc:
                refused = isinstance(exc.os_error, EgressRefused)
                if refused:
                    log.warning("upstream: %s: refused: %s", url, exc.os_error)
                failures.append(UpstreamFailure(502, f"{url}: {exc.os_error or exc}"))
                self._report(url, started, "refused" if refused else "connect")
                continue
            except (aiohttp.ClientError, OSError, ValueError) as exc:
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

    async def _follow(self, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """GET `url`, following at most MAX_REDIRECTS redirects the policy allows."""
        current = url
        if problem := self.policy.literal_problem(url):  # names are checked by the resolver
            raise _Refused(problem)
        for _hop in range(MAX_REDIRECTS + 1):
            resp = await self.session.get(
                URL(current, encoded=True), headers=headers, allow_redirects=False
            )
            if resp.status not in _REDIRECTS:
                return resp
            location = resp.headers.get("Location")
            resp.close()  # nothing of a redirect's body is wanted
            if not location:
                raise _Refused(f"HTTP {resp.status} without a Location")
            try:
                target = urljoin(current, location)
            except ValueError:
                raise _Refused(f"redirect to an unusable Location {location[:200]!r}") from None
            if problem := self.policy.redirect_problem(current, target):
                raise _Refused(problem)
            current = urlsplit(target)._replace(fragment="").geturl()
        raise _Refused(f"more than {MAX_REDIRECTS} redirects")


class _Refused(Exception):
    """A redirect the egress policy forbids, or a redirect loop."""


def _upstream_label(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2].lower() or "unknown"


def _most_telling(failures: list[UpstreamFailure]) -> UpstreamFailure:
    """A 4xx from any mirror beats network errors and 5xx from the others."""
    if not failures:
        return UpstreamFailure(502, "no upstream configured")
    return next((f for f in failures if f.status < 500), failures[0])
