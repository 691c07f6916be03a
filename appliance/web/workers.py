"""Several worker processes of one service (`workers: N`) answering as one.

Every worker serves the public port (the master binds it once, without SO_REUSEPORT, and
the workers inherit the socket: the kernel spreads its connections among them) and its
own Unix socket, `StateDir.worker_socket(index)` (mode 0600), on which the others
reach it. What a client asks of one worker is answered for all of them: `/metrics` sums
the workers' counters (and the gauges `appliance.families` marks `summed`, those in
flight; other gauges are the same cache seen by each, so the largest is taken);
`/api/status` and the status page add up the same figures the same way (`merge_status`),
the rest is the primary's (worker 0, which runs the syncs, seeds and expiry); admin calls
that change every worker (drain, reload) go to all, jobs to the primary. A request that
arrives on a Unix socket is a worker's own: it is never passed on, and neither counted nor
logged as a client's (`web.accesslog`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.families import SUMMED
from appliance.metrics import (
    HISTORY_POINTS,
    HISTORY_SPAN,
    HISTORY_STEP,
    LATENCY_WINDOW,
    top,
    upstream_summary,
)
from appliance.web import holdings
from appliance.web.clients import merge_clients
from appliance.web.events import merge_events
from appliance.web.status import BUSIEST, SHARED_OPERATIONS, hit_ratio

log = logging.getLogger(__name__)

TO_ALL = ("drain", "reload")  # admin actions every worker applies
TO_PRIMARY = ("sync", "seed", "expire")  # jobs: the primary runs them
HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
CACHE_EVENTS = "/.archive-local/cache-events"  # POST, from a sibling: what entered/left the cap
TELL_DELAY = 0.05  # seconds cache events wait to go out together


def is_internal(request: web.BaseRequest) -> bool:
    """Came in on a worker's Unix socket (only the service's own user can connect): a
    sibling's call, never a client's (`web.server` marks the connection at its accept)."""
    return getattr(request.protocol, "internal", False) is True


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
    """One exposition from several workers' (see the module for what adds up), written by
    prometheus_client itself: a counter's HELP and TYPE name its `_total` series."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
            merged = values.setdefault(family.name, {})
            combine = _combine(family)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                merged[key] = (
                    sample.value if key not in merged else combine(merged[key], sample.value)
                )
    for name, family in families.items():
        for (sample, labels), value in values[name].items():
            family.add_sample(sample, dict(labels), value)
    return generate_latest(_Families(list(families.values())))


def _combine(family: Metric) -> Callable[[float, float], float]:
    """How two workers' values of a series make the service's."""
    if family.name.endswith("_created"):  # when a counter started: the earliest worker's
        return min
    if family.type != "gauge" or family.name in SUMMED:
        return operator.add
    return max


class _Families:
    """Merged families, as `generate_latest` reads a registry."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_status(own: dict[str, Any], others: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`/api/status` for the whole service: the primary's document (uptime, jobs, images,
    the cache's size) with every worker's counts added up, the same way `/metrics` adds
    them: traffic, upstreams, busiest packages, the chart, what each refused or did not
    store, and the latest verify and expiry, whichever worker ran them."""
    primary = next((d for d in [own, *others] if d.get("worker") == 0), own)
    docs = [primary, *(d for d in [own, *others] if d is not primary)]  # the primary first
    base = dict(primary)
    requests = _sum_nested(d.get("requests", {}) for d in docs)
    base["requests"] = requests
    base["hit_ratio"] = hit_ratio(requests)
    base["bytes"] = _sum_nested(d.get("bytes", {}) for d in docs)
    base["history"] = merge_history([d.get("history", []) for d in docs])
    base["requests_last_minute"] = sum(d.get("requests_last_minute", 0) for d in docs)
    base["upstreams"] = _merge_upstreams([d.get("upstreams", {}) for d in docs])
    packages = _sum_nested(
        {b["package"]: b["requests"] for b in d.get("busiest", [])} for d in docs
    )
    base["busiest"] = [{"package": n, "requests": c} for n, c in top(packages, BUSIEST)]
    base["downloads"] = [x for d in docs for x in d.get("downloads", [])]
    if "cache" in base:
        base["cache"] = _merge_cache([d["cache"] for d in docs if "cache" in d])
    if "integrity" in base:
        base["integrity"] = _merge_integrity([d["integrity"] for d in docs if "integrity" in d])
    base["events"] = merge_events(d.get("events", []) for d in docs)
    base["clients"] = merge_clients(d.get("clients", []) for d in docs)
    if cached := [d["cached"] for d in docs if d.get("cached")]:
        base["cached"] = holdings.merge(cached)
    base["workers"] = len(docs)
    return base


def _sum_nested(docs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Numbers added up key by key, dicts of numbers too (requests by service and result)."""
    out: dict[str, Any] = {}
    for doc in docs:
        for key, value in doc.items():
            if isinstance(value, Mapping):
                out[key] = _sum_nested([out.get(key, {}), value])
            else:
                out[key] = out.get(key, 0) + value
    return out


def merge_history(histories: Sequence[Sequence[Mapping[str, float]]]) -> list[dict[str, float]]:
    """The chart's points for the service. Each worker records its own cumulative figures
    at its own moments (restored ones too): the service's at a moment are each worker's
    latest point at or before it (none yet: nothing counted then), matched by time, never
    by position. One point per HISTORY_STEP over HISTORY_SPAN and the one before (where the
    counts stood), the last now."""
    last_of_step = {t // HISTORY_STEP: t for t in sorted({p["t"] for h in histories for p in h})}
    moments = list(last_of_step.values())[-(HISTORY_POINTS + 2) :]
    if moments:
        moments = moments[max(0, bisect.bisect_right(moments, moments[-1] - HISTORY_SPAN) - 1) :]
    times = [[p["t"] for p in h] for h in histories]
    points = []
    for t in moments:
        point: dict[str, float] = {"t": t}
        for history, at in zip(histories, times, strict=True):
            if n := bisect.bisect_right(at, t):
                for key, value in history[n - 1].items():
                    if key != "t":
                        point[key] = point.get(key, 0) + value
        points.append(point)
    return points


def _merge_upstreams(docs: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Requests and errors added up; the last success, error, answer, failure and duration
    are the latest any worker saw. The median latency is taken again over the service's
    last LATENCY_WINDOW answered exchanges (the union of the workers' windows, by time),
    and the state again from the merged times: never a worker's alone."""
    out: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for name, health in doc.items():
            into = out.get(name)
            if into is None:
                out[name] = dict(health)
                continue
            newer = _last_seen(health) > _last_seen(into)
            into["requests"] += health["requests"]
            into["errors"] += health["errors"]
            for key in ("last_ok", "last_answered", "last_failed"):
                into[key] = max(into.get(key) or 0, health.get(key) or 0) or None
            if (health["last_error_at"] or 0) > (into["last_error_at"] or 0):
                into["last_error"] = health["last_error"]
                into["last_error_at"] = health["last_error_at"]
            if newer:
                into["last_seconds"] = health["last_seconds"]
            into["recent"] = [*(into.get("recent") or []), *(health.get("recent") or [])]
    for health in out.values():
        health["recent"] = sorted(health.get("recent") or [])[-LATENCY_WINDOW:]
        health.update(upstream_summary(health))
    return out


def _last_seen(health: Mapping[str, Any]) -> float:
    return max(health["last_ok"] or 0, health["last_error_at"] or 0)


def _merge_cache(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One directory, which every worker counts whole (the largest count, as `/metrics`);
    what each worker did to it (evictions, answers from peers, the shared store's
    operations) added up; the rest is the first's (the primary's)."""
    base = dict(docs[0])
    base["bytes"] = max(d["bytes"] for d in docs)
    base["entries"] = max(d["entries"] for d in docs)
    base["evictions"] = sum(d["evictions"] for d in docs)
    base["from_peers"] = sum(d.get("from_peers", 0) for d in docs)
    shared = [d["shared_store"] for d in docs if d.get("shared_store") is not None]
    if shared:
        base["shared_store"] = {
            **shared[0],
            **{k: sum(s[k] for s in shared) for k in SHARED_OPERATIONS},
            "pending_uploads": max(s["pending_uploads"] for s in shared),
        }
    return base


def _merge_integrity(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each worker refuses and passes on its own: the service's are the sums. A verify
    runs on the worker asked: the latest run anywhere is the last."""
    base = dict(docs[0])
    base["rejected_downloads"] = sum(d["rejected_downloads"] for d in docs)
    base["not_stored"] = _sum_nested(d["not_stored"] for d in docs)
    base["fleet_refused"] = _sum_nested(d.get("fleet_refused", {}) for d in docs)
    base["connections_refused"] = sum(d.get("connections_refused", 0) for d in docs)
    base["apt_indexes"] = max(
        (d["apt_indexes"] for d in docs if "apt_indexes" in d),
        key=lambda i: i["files"],
        default=base.get("apt_indexes"),
    )
    for run in ("last_verify", "last_expiry"):
        runs = [d[run] for d in docs if d.get(run)]
        base[run] = max(runs, key=lambda r: r["at"], default=None)
    return base
