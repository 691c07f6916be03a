"""Several worker processes of one service (`workers: N`) answering as one.

Every worker serves the public port (SO_REUSEPORT: the kernel spreads connections) and its
own Unix socket, `<cache.dir>/.state/workers/<index>.sock` (mode 0600), on which the others
reach it. What a client asks of one worker is answered for all of them: `/metrics` sums
the workers' counters (and their in-flight gauges; other gauges are the same cache seen
by each, so the largest is taken); `/api/status` and the status page add up the traffic
figures, the rest is the primary's (worker 0, which runs the syncs, seeds and expiry);
admin calls that change every worker (drain, reload) go to all, jobs to the primary.
A request that arrives on a Unix socket is a worker's own and is never passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

SUMMED_GAUGES = {"archive_local_downloads_in_flight", "archive_local_download_clients"}
TO_ALL = ("drain", "reload")  # admin actions every worker applies
TO_PRIMARY = ("sync", "seed", "expire")  # jobs: the primary runs them
HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
CACHE_EVENTS = "/.archive-local/cache-events"  # POST, from a sibling: what entered/left the cap
TELL_DELAY = 0.05  # seconds cache events wait to go out together


def socket_path(cache_dir: Path, index: int) -> Path:
    return cache_dir / ".state" / "workers" / f"{index}.sock"


def is_internal(request: web.BaseRequest) -> bool:
    """Came in on a worker's Unix socket (only the service's own user can connect)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return isinstance(sockname, str)


class Workers:
    """This worker's place among its siblings, and how to ask them."""

    def __init__(self, index: int, sockets: Sequence[Path]) -> None:
        self.index = index
        self.sockets = list(sockets)
        self._told: list[dict[str, Any]] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def primary(self) -> bool:
        return self.index == 0

    @property
    def others(self) -> list[int]:
        return [i for i in range(len(self.sockets)) if i != self.index]

    async def ask(
        self, index: int, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        connector = aiohttp.UnixConnector(path=str(self.sockets[index]))
        timeout = aiohttp.ClientTimeout(total=600)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.request(
                method, f"http://worker{path}", headers=headers, data=body or None
            ) as r,
        ):
            return r.status, dict(r.headers), await r.read()

    def tell(self, op: str, key: str, size: int) -> None:
        """Pass a change of the cache's size cap on to the siblings (`CacheEngine.tell`):
        batched, sent within `TELL_DELAY`, in order; a sibling that is away misses it."""
        self._told.append({"op": op, "key": key, "size": size})
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(TELL_DELAY)
        while self._told:
            batch, self._told = self._told, []
            body = json.dumps(batch).encode()
            headers = {"Content-Type": "application/json"}
            answers = await asyncio.gather(
                *(self.ask(i, "POST", CACHE_EVENTS, headers, body) for i in self.others),
                return_exceptions=True,
            )
            for i, answer in zip(self.others, answers, strict=True):
                if isinstance(answer, BaseException) or answer[0] != 204:
                    log.warning("worker %d did not take %d cache events: %s", i, len(batch), answer)

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flusher, TELL_DELAY * 20)

    async def gather(self, path: str, headers: dict[str, str] | None = None) -> list[bytes]:
        """GET `path` from every other worker (those that do not answer are left out)."""
        answers = await asyncio.gather(
            *(self.ask(i, "GET", path, headers or {}) for i in self.others),
            return_exceptions=True,
        )
        out = []
        for i, answer in zip(self.others, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("worker %d did not answer %s: %s", i, path, answer)
            elif answer[0] == 200:
                out.append(answer[2])
        return out

    async def forward(self, index: int, request: web.BaseRequest, body: bytes) -> web.Response:
        """The request as it came, answered by worker `index`."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        try:
            code, got, data = await self.ask(index, request.method, request.raw_path, headers, body)
        except (OSError, aiohttp.ClientError) as exc:
            raise web.HTTPServiceUnavailable(
                text=f"worker {index} did not answer: {exc}\n"
            ) from None
        keep = {k: v for k, v in got.items() if k.lower() not in HOP}
        return web.Response(status=code, body=data, headers=keep)

    async def broadcast(self, request: web.BaseRequest, body: bytes) -> None:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        answers = await asyncio.gather(
            *(self.ask(i, request.method, request.raw_path, headers, body) for i in self.others),
            return_exceptions=True,
        )
        for i, answer in zip(self.others, answers, strict=True):
            if isinstance(answer, BaseException) or answer[0] >= 300:
                log.warning(
                    "worker %d: %s %s failed: %s", i, request.method, request.raw_path, answer
                )


def merge_metrics(texts: Sequence[str]) -> bytes:
    """One exposition from several workers' (see the module for what adds up)."""
    families: dict[str, Any] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, family)
            merged = values.setdefault(family.name, {})
            summed = family.type != "gauge" or family.name in SUMMED_GAUGES
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in merged:
                    merged[key] = sample.value
                elif summed:
                    merged[key] += sample.value
                else:
                    merged[key] = max(merged[key], sample.value)
    lines = []
    for name, family in families.items():
        doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} {family.type}"]
        for (sample, labels), value in values[name].items():
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(
                f"{sample}{{{text}}} {_number(value)}" if text else f"{sample} {_number(value)}"
            )
    return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value))


def merge_status(own: dict[str, Any], others: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`/api/status` for the whole service: the primary's document (jobs, images, cache)
    with every worker's traffic added up and their downloads listed."""
    docs = [own, *others]
    base = dict(next((d for d in docs if d.get("worker") == 0), own))
    requests: dict[str, dict[str, int]] = {}
    for doc in docs:
        for service, counts in doc.get("requests", {}).items():
            into = requests.setdefault(service, {})
            for result, n in counts.items():
                into[result] = into.get(result, 0) + n
    base["requests"] = requests
    base["bytes"] = {
        k: sum(d.get("bytes", {}).get(k, 0) for d in docs) for k in ("cache", "upstream")
    }
    base["downloads"] = [x for d in docs for x in d.get("downloads", [])]
    refused: dict[str, int] = {}  # each worker refuses on its own: the unit's are the sum
    for doc in docs:
        for reason, n in doc.get("integrity", {}).get("fleet_refused", {}).items():
            refused[reason] = refused.get(reason, 0) + n
    if "integrity" in base:
        base["integrity"] = {**base["integrity"], "fleet_refused": refused}
    hits = sum(requests.get(s, {}).get("hit", 0) for s in ("apt", "images"))
    misses = sum(requests.get(s, {}).get("miss", 0) for s in ("apt", "images"))
    base["hit_ratio"] = round(hits / (hits + misses), 4) if hits + misses else None
    base["workers"] = len(docs)
    return base
