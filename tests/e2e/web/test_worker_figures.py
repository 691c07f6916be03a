"""The figures of a service of several workers (`workers: 2`, what `auto` gives on two cores):
after known traffic, the status page, `/api/status`, `archive-local status` (text and
`--json`) and `/metrics` show the same exact numbers, the sums over the workers, and nothing
of what the workers ask each other (cache events, the merges, a download streamed for a
sibling's client). `workers: 2` is written out so the sums are exact on any machine."""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Appliance, StartAppliance, http_get, require
from tests.e2e.cache.test_workers import _OverUnix, _sockets
from tests.upstream import Upstream

DEB = b"\x21" * 50_000
POOL = "/debian/pool/main/h"
SLOW = "/debian/pool/main/s/slow_1.0_amd64.deb"  # 2 MB at 1 MB/s: clients join it
ENCODED = "/debian/pool/main/e/encoded_1.0_amd64.deb"  # gzip-encoded: passed, not stored
GOOD_INDEX = b"Package: a\n"
TAMPERED = "/debian/dists/x/main/binary-all/by-hash/SHA256/" + hashlib.sha256(b"x").hexdigest()
_RESULT = {"HIT": "hit", "MISS": "miss", "PASS": "miss"}  # X-Cache -> the counted result


class Clients:
    """The test's clients: each request is a new TCP connection (the kernel picks the
    worker), and what every answer said is tallied: the figures the service must show."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.sent: Counter[str] = Counter()  # paths asked: what the access log must hold
        self.results: Counter[str] = Counter()  # apt results, from the answers
        self.packages: Counter[str] = Counter()  # .deb hits and misses by file name
        self.bytes = {"cache": 0, "upstream": 0}
        self.relayed = 0  # answers streamed from the other worker's download

    def open(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """Send a request and read the answer's head; the body is the caller's to read."""
        conn = http.client.HTTPConnection("127.0.0.1", self.app.port, timeout=30)
        conn.request("GET", path, headers=headers or {})
        self.sent[path] = self.sent[path] + 1
        return conn.getresponse()

    def get(self, path: str) -> tuple[int, bytes]:
        r = self.open(path)
        self.tally(path, r)
        try:
            return r.status, r.read()
        except http.client.IncompleteRead as exc:  # a download refused at its end
            return r.status, exc.partial

    def tally(self, path: str, r: http.client.HTTPResponse) -> None:
        if r.status >= 400:
            self.results["refused" if r.status == 403 else "error"] += 1
            return
        result = _RESULT[r.headers["X-Cache"]]
        self.results[result] += 1
        self.bytes["cache" if result == "hit" else "upstream"] += int(r.headers["Content-Length"])
        if path.endswith(".deb"):
            self.packages[path.rsplit("/", 1)[-1]] += 1
        self.relayed += "X-Archive-Local-From" in r.headers

    def want(self) -> dict[str, int]:
        """apt's counts by result, in the service's order."""
        return {
            r: self.results[r] for r in ("hit", "miss", "revalidated", "stale", "error", "refused")
        }


def _own(sock: Path) -> dict:
    """One worker's own status document (asked on its socket: an internal call)."""
    conn = _OverUnix(sock)
    conn.request("GET", "/api/status")
    return json.loads(conn.getresponse().read())


def _until_both(socks: list[Path], clients: Clients, path: str, seen: Callable[[dict], int]) -> int:
    """Ask for `path` until each worker has counted it at least once (the kernel spreads
    new connections: both do within a few); how many times it was asked."""
    for n in range(1, 40):
        clients.get(path)
        deadline = time.monotonic() + 5
        while sum(counts := [seen(_own(s)) for s in socks]) < n:  # counted as the body ends
            assert time.monotonic() < deadline, counts
            time.sleep(0.05)
        if min(counts) > 0:
            return n
    raise AssertionError(f"one worker never answered {path}")


def _metric(families: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return families[name].get(tuple(sorted(labels.items())), 0.0)


def _parse(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture
def service(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance, tmp_path: Path
) -> Appliance:
    for name in ("hello_1.0_amd64.deb", "world_2.0_amd64.deb"):
        (upstream_root / POOL.lstrip("/") / name).parent.mkdir(parents=True, exist_ok=True)
        (upstream_root / POOL.lstrip("/") / name).write_bytes(DEB)
    for path, data in ((SLOW, b"\x05" * 2_000_000), (ENCODED, DEB), (TAMPERED, b"tampered\n")):
        (upstream_root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (upstream_root / path.lstrip("/")).write_bytes(data)
    upstream.rate[SLOW] = 1_000_000
    upstream.headers[ENCODED] = {"Content-Encoding": "gzip"}
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]},
        cache_dir=tmp_path / "cache",
        extra={
            "workers": 2,
            "logging": {"access_log": str(tmp_path / "access.log"), "access_log_format": "json"},
        },
    )
    _sockets(app, 2)  # both workers serve the port
    return app


def test_every_view_shows_the_sums_over_the_workers(
    service: Appliance, upstream: Upstream, tmp_path: Path
) -> None:
    app, clients = service, Clients(service)
    socks = _sockets(app, 2)
    # 2 misses, then 3 hits, 1 refused, 1 upstream 404
    for name in ("hello_1.0_amd64.deb", "world_2.0_amd64.deb"):
        assert clients.get(f"{POOL}/{name}") == (200, DEB)
    time.sleep(0.3)  # committed, and the other worker told (a cache event)
    for name in ("hello_1.0_amd64.deb", "hello_1.0_amd64.deb", "world_2.0_amd64.deb"):
        assert clients.get(f"{POOL}/{name}") == (200, DEB)
    assert clients.get("/nosuchremap/x.deb")[0] == 403
    assert clients.get(f"{POOL}/missing_1_amd64.deb")[0] == 404
    # clients join one slow download until one of them is the other worker's (streamed
    # from the fetching worker over its socket: counted once, by the worker it asked)
    joined = []
    while clients.relayed == 0:
        assert len(joined) < 30, "the kernel never gave the other worker a connection"
        joined.append(r := clients.open(SLOW))
        clients.tally(SLOW, r)
    assert all(r.read() == b"\x05" * 2_000_000 for r in joined)
    assert upstream.count(SLOW) == 1
    # refused at its end (wrong digest), and passed on unstored: on both workers
    rejected = _until_both(socks, clients, TAMPERED, lambda d: d["integrity"]["rejected_downloads"])
    encoded = _until_both(
        socks, clients, ENCODED, lambda d: d["integrity"]["not_stored"].get("encoded", 0)
    )
    # a verify that runs on worker 1 (asked on its socket, as a sibling passes a call on)
    verify = _OverUnix(socks[1])
    verify.request("POST", "/api/admin/verify", b"{}", {"Authorization": f"Bearer {app.token}"})
    checked = json.loads(verify.getresponse().read())["checked"]
    assert checked >= 3  # hello, world, slow

    # what the clients were answered: the service must show exactly this
    want = clients.want()
    misses = 2 + len(joined) + rejected + encoded  # every client of the slow file a miss
    assert want == {
        "hit": 3,
        "miss": misses,
        "revalidated": 0,
        "stale": 0,
        "error": 1,
        "refused": 1,
    }
    assert clients.bytes == {
        "cache": 3 * len(DEB),
        "upstream": (2 + encoded) * len(DEB) + len(joined) * 2_000_000 + rejected * 9,
    }
    ratio = round(3 / (3 + misses), 4)
    host = f"127.0.0.1:{upstream.port}"
    # a download refused at its end is reported again, as a failed exchange
    upstream_requests = len(upstream.requests) + rejected
    upstream_errors = 1 + rejected  # the 404 and the refused downloads
    assert len(upstream.requests) == 2 + 1 + 1 + rejected + encoded
    packages = {
        "hello_1.0_amd64.deb": 3,
        "world_2.0_amd64.deb": 2,
        "slow_1.0_amd64.deb": len(joined),
        "encoded_1.0_amd64.deb": encoded,
    }
    busiest = [{"package": n, "requests": c} for n, c in packages.items()]
    busiest.sort(key=lambda b: (-b["requests"], b["package"]))

    clients.sent["/api/status"] += 1
    api = app.status()
    clients.sent["/metrics"] += 1
    metrics = _parse(http_get(f"{app.url}/metrics")[1].decode())
    clients.sent["/api/status"] += 2
    cli_json = json.loads(app.cli("status", "--json").stdout)
    cli_text = app.cli("status").stdout
    page = clients.open("/", {"Accept": "text/html"}).read().decode()

    # /api/status and `status --json`: the service's figures
    for doc in (api, cli_json):
        assert doc["workers"] == 2
        assert doc["requests"]["apt"] == want
        assert doc["hit_ratio"] == ratio
        assert doc["bytes"] == clients.bytes
        assert {k: (u["requests"], u["errors"]) for k, u in doc["upstreams"].items()} == {
            host: (upstream_requests, upstream_errors)
        }
        assert doc["busiest"] == busiest
        point = doc["history"][-1]  # the chart's now
        assert (point["hits"], point["misses"]) == (want["hit"], want["miss"])
        assert (point["bytes_cache"], point["bytes_upstream"]) == (
            clients.bytes["cache"],
            clients.bytes["upstream"],
        )
        assert all(a["hits"] <= b["hits"] for a, b in itertools.pairwise(doc["history"]))
        integrity = doc["integrity"]
        assert integrity["rejected_downloads"] == rejected
        assert integrity["not_stored"] == {"encoded": encoded}
        assert (
            integrity["last_verify"] is not None and integrity["last_verify"]["checked"] == checked
        )
        assert doc["cache"]["from_peers"] == clients.relayed
    # /metrics: the same numbers
    for result, n in want.items():
        assert _metric(metrics, "archive_local_requests_total", service="apt", result=result) == n
    for source, n in clients.bytes.items():
        assert _metric(metrics, "archive_local_served_bytes_total", source=source) == n
    count = "archive_local_upstream_request_duration_seconds_count"
    assert _metric(metrics, count, upstream=host) == upstream_requests
    assert sum(metrics["archive_local_upstream_errors_total"].values()) == upstream_errors
    assert _metric(metrics, "archive_local_integrity_rejected_downloads_total") == rejected
    assert _metric(metrics, "archive_local_not_stored_responses_total", reason="encoded") == encoded
    assert _metric(metrics, "archive_local_peer_streams_total") == clients.relayed
    # the status page
    spans = dict(re.findall(r'<span id="req-apt-(\w+)">(\d+)</span>', page))
    assert {r: int(n) for r, n in spans.items()} == want
    assert f'<b id="hit-ratio">{ratio * 100:.1f} %</b>' in page
    assert (
        f"<td>{host}</td><td class=n>{upstream_requests}</td><td class=n>{upstream_errors}</td>"
        in page
    )
    for b in busiest:
        assert f"<td>{b['package']}</td><td class=n>{b['requests']}</td>" in page
    assert f'<span class="bad">{rejected}</span>' in page  # downloads refused
    assert f"<td>encoded {encoded}</td>" in page
    assert f"0 bad of {checked}" in page
    # `archive-local status`
    assert f"hit ratio {ratio * 100:.1f} %" in cli_text
    assert "  apt     " + ", ".join(f"{k} {v}" for k, v in want.items()) in cli_text
    assert f"upstream {host}: {upstream_requests} requests, {upstream_errors} errors" in cli_text
    # the access log: the clients' requests, each once; none of the workers' own calls
    log = tmp_path / "access.log"
    deadline = time.monotonic() + 5
    while True:
        logged = Counter(json.loads(line)["path"] for line in log.read_text().splitlines())
        if logged == clients.sent or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert logged == clients.sent


@pytest.mark.parametrize("workers", [1, 2])  # 1: the one process the merge must match
def test_the_metrics_pass_promtool_whatever_the_workers(
    workers: int,
    upstream_root: Path,
    upstream: Upstream,
    start_appliance: StartAppliance,
    tmp_path: Path,
) -> None:
    require("promtool", "prometheus")
    (upstream_root / POOL.lstrip("/")).mkdir(parents=True)
    (upstream_root / POOL.lstrip("/") / "hello_1.0_amd64.deb").write_bytes(DEB)
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]},
        cache_dir=tmp_path / "cache",
        extra={"workers": workers},
    )
    socks = _sockets(app, workers) if workers > 1 else []
    for path in ("hello_1.0_amd64.deb", "hello_1.0_amd64.deb", "missing_1_amd64.deb"):
        http_get(f"{app.url}{POOL}/{path}")  # a miss, a hit, an upstream 404 (an error)
    code, body = http_get(f"{app.url}/metrics")
    assert code == 200
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    # the merge names each family as one worker does (a counter's HELP and TYPE: `_total`)
    own: set[tuple[str, str]] = set()
    for sock in socks:
        conn = _OverUnix(sock)
        conn.request("GET", "/metrics")
        own |= set(re.findall(r"^# (HELP|TYPE) (\S+)", conn.getresponse().read().decode(), re.M))
    merged = set(re.findall(r"^# (HELP|TYPE) (\S+)", body.decode(), re.M))
    assert ("TYPE", "archive_local_requests_total") in merged
    assert merged == own or not socks
