"""Several units on one object store (issue 13), as real processes on a real OpenStack
Swift (S3 API): what one unit fetched the others serve without asking upstream; volatile
indexes stay per unit; with the store away a unit serves from its disk and upstream, says
so in /healthz, the status page and metrics, and uploads what it fetched once it is back."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import os
import signal
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.components import haproxy, swift_aio
from tests.conftest import free_port, free_port_block, http_get, upstream_file
from tests.fleet import Fleet, healthz
from tests.upstream import Upstream

POOL = "/debian/pool/main/h/hello_1.0_amd64.deb"
INDEX = "/debian/dists/bookworm/InRelease"


def _files(upstream_root: Path) -> dict[str, bytes]:
    files = {POOL: os.urandom(1_000_000), INDEX: b"Origin: Debian\n" * 50}
    for path, data in files.items():
        target = upstream_root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return files


def test_units_share_what_they_fetch_and_keep_indexes_their_own(
    swift: Any, fleet: Fleet, upstream: Upstream, upstream_root: Path
) -> None:
    files = _files(upstream_root)
    bucket = f"fleet-{uuid.uuid4().hex[:12]}"
    a, b = (fleet.unit(swift, bucket, n) for n in (0, 1))
    assert http_get(a.url + POOL) == (200, files[POOL])
    assert upstream.count(POOL) == 1
    assert http_get(b.url + POOL) == (200, files[POOL])  # from the store, not upstream
    assert upstream.count(POOL) == 1
    status = b.status()
    shared = status["cache"]["shared_store"]
    assert shared["up"] and shared["hits"] == 1 and shared["bucket"] == bucket
    assert status["cache"]["bytes"] == len(files[POOL])  # the copy counts against b's cap
    assert a.status()["cache"]["shared_store"]["uploads"] == 1
    for app in (a, b):
        assert http_get(app.url + INDEX) == (200, files[INDEX])
    assert upstream.count(INDEX) == 2  # volatile: each unit revalidates its own
    assert healthz(b) == (200, {**healthz(b)[1], "status": "serving", "shared_store": "up"})
    metrics = http_get(f"{b.url}/metrics")[1].decode()
    assert "archive_local_shared_store_up 1.0" in metrics
    assert 'archive_local_shared_store_operations_total{result="hit"} 1.0' in metrics
    keys = [o["Key"] for o in swift.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"fleet/127.0.0.1:{upstream.port}{POOL}"]


def test_without_the_store_units_serve_and_catch_up(
    fleet: Fleet, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    if not swift_aio.installed():
        pytest.fail("swift missing: `make test` builds .components/swift")
    files = _files(upstream_root)
    own = swift_aio.start(tmp_path / "swift", free_port_block(5))  # this test stops it
    try:
        a = fleet.unit(own, "fleet", 0)
        b = fleet.unit(own, "fleet", 1)
        own.stop()
        assert http_get(a.url + POOL) == (200, files[POOL])  # upstream, kept on a's disk
        code, health = healthz(a)
        assert code == 200 and health["shared_store"].startswith("unavailable: ")
        assert "archive_local_shared_store_up 0.0" in http_get(f"{a.url}/metrics")[1].decode()
        browser = urllib.request.Request(f"{a.url}/", headers={"Accept": "text/html"})
        with urllib.request.urlopen(browser, timeout=10) as r:
            page = r.read().decode()
        assert 'id="shared-store"' in page and "unavailable" in page
        assert a.status()["cache"]["shared_store"]["pending_uploads"] == 1
        assert http_get(a.url + POOL) == (200, files[POOL])  # a hit from its own disk
        assert upstream.count(POOL) == 1
        own.start()
        time.sleep(5.5)  # the units ask the store again after a while
        assert http_get(a.url + INDEX)[0] == 200  # a asks the store: it is back
        deadline = time.monotonic() + 20
        while a.status()["cache"]["shared_store"]["pending_uploads"]:
            assert time.monotonic() < deadline, a.log_text()
            http_get(a.url + "/debian/pool/main/n/nothing.deb")  # a miss: a store lookup
            time.sleep(0.5)
        assert healthz(a)[1]["shared_store"] == "up"
        assert http_get(b.url + POOL) == (200, files[POOL])  # uploaded by a once it was back
        assert upstream.count(POOL) == 1
    finally:
        own.stop()


BIG = "/debian/pool/main/b/big_1.0_amd64.deb"


def _timed_get(url: str) -> tuple[int, str, float, float]:
    """Status, sha256 of the body, seconds to the first byte and to the last."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            first = r.read(1)
            ttfb = time.monotonic() - started
            digest = hashlib.sha256(first + r.read()).hexdigest()
            return r.status, digest, ttfb, time.monotonic() - started
    except (OSError, http.client.HTTPException) as exc:  # HTTPError, a cut body
        return getattr(exc, "code", 0), "", 0.0, time.monotonic() - started


def test_twenty_clients_on_three_units_cause_one_upstream_fetch(
    swift: Any, fleet: Fleet, upstream: Upstream, upstream_root: Path
) -> None:
    data = upstream_file(upstream_root, BIG, 4_000_000)
    upstream.rate[BIG] = 2_000_000  # 2 s: every client asks while it is fetched
    bucket = f"fleet-{uuid.uuid4().hex[:12]}"
    ports = [free_port() for _ in range(3)]
    units = [fleet.unit(swift, bucket, n, ports=ports) for n in range(3)]
    urls = [units[i % 3].url + BIG for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(_timed_get, urls))
    want = hashlib.sha256(data).hexdigest()
    assert [(code, digest) for code, digest, _, _ in answers] == [(200, want)] * 20
    assert upstream.count(BIG) == 1, "\n".join(u.log_text()[-1500:] for u in units)
    deadline = time.monotonic() + 15  # the upload follows the clients' last byte
    while not (holders := [u for u in units if u.status()["cache"]["shared_store"]["uploads"]]):
        assert time.monotonic() < deadline, "\n".join(u.log_text()[-1500:] for u in units)
        time.sleep(0.2)
    assert len(holders) == 1  # one unit fetched and uploaded
    waiting = [u for u in units if u not in holders]
    # their clients streamed the holder's download: one peer stream per answer, no more
    asked = sum(1 for url in urls if not url.startswith(holders[0].url + "/"))
    assert sum(u.status()["cache"]["from_peers"] for u in waiting) == asked
    ttfb = sorted(round(t, 2) for _, _, t, _ in answers)
    print(f"fleet single flight: TTFB min {ttfb[0]} median {ttfb[10]} max {ttfb[-1]} s")
    # waiting for the object would give no byte before the download's end (2 s)
    assert ttfb[-1] < 1.5, ttfb
    leases = swift.client().list_objects_v2(Bucket=bucket, Prefix="fleet/.leases/")
    assert leases.get("KeyCount", 0) == 0  # released
    for unit in waiting:  # copied in from the store now, no upstream request
        assert _timed_get(unit.url + BIG)[:2] == (200, want)
    assert upstream.count(BIG) == 1


def test_a_unit_killed_mid_download_is_taken_over(
    swift: Any, fleet: Fleet, upstream: Upstream, upstream_root: Path
) -> None:
    data = upstream_file(upstream_root, BIG, 4_000_000)
    upstream.rate[BIG] = 1_000_000  # 4 s: long enough to kill the fetching unit in the middle
    bucket = f"fleet-{uuid.uuid4().hex[:12]}"
    ports = [free_port() for _ in range(3)]
    a, b, c = (fleet.unit(swift, bucket, n, "6s", ports) for n in range(3))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(_timed_get, a.url + BIG)  # a takes the lease and fetches
        time.sleep(1.0)
        waiting = [pool.submit(_timed_get, u.url + BIG) for u in (b, c, b)]
        time.sleep(1.0)
        a.proc.send_signal(signal.SIGKILL)
        answers = [f.result() for f in waiting]
        assert (
            first.result()[0] in (0, 200) and first.result()[1] != hashlib.sha256(data).hexdigest()
        )
    want = hashlib.sha256(data).hexdigest()
    assert [(code, digest) for code, digest, _, _ in answers] == [(200, want)] * 3
    # they streamed from a before it died (first byte before the kill), then got the rest
    # from the unit that took the lease over, checked against what they had been sent
    assert all(ttfb < 1.0 for _, _, ttfb, _ in answers), answers
    assert b.status()["cache"]["from_peers"] + c.status()["cache"]["from_peers"] == 3
    assert upstream.count(BIG) == 2  # the dead unit's fetch, and the one that took over
    s3 = swift.client()
    head = s3.head_object(Bucket=bucket, Key=f"fleet/127.0.0.1:{upstream.port}{BIG}")
    assert head["ContentLength"] == len(data) and head["Metadata"]["sha256"] == want
    assert not any(
        p.name.startswith(".") and ".part-" in p.name for p in fleet.cache_dir(1).rglob("*")
    )  # nothing partial left behind


def test_three_units_behind_haproxy(
    fleet: Fleet, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    """The layout the charm documents: HAProxy checking /healthz in front of three units
    on one Swift. One upstream GET for 20 clients; a killed unit is taken out and its
    clients served by the others; a drained unit is taken out; with Swift stopped the
    fleet still serves, from disks and upstream."""
    if not (haproxy.installed() and swift_aio.installed()):
        pytest.fail("haproxy or swift missing: `make test` installs them")
    data = upstream_file(upstream_root, BIG, 4_000_000)
    files = _files(upstream_root)
    upstream.rate[BIG] = 4_000_000
    own = swift_aio.start(tmp_path / "swift", free_port_block(5))  # this test stops it
    units = [fleet.unit(own, "fleet", n) for n in range(3)]
    names = {f"u{n}": u for n, u in enumerate(units)}
    proxy = haproxy.start(
        tmp_path / "haproxy", free_port(), {n: f"127.0.0.1:{u.port}" for n, u in names.items()}
    )
    try:
        proxy.wait_for(dict.fromkeys(names, "UP"))
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(_timed_get, [proxy.url + BIG] * 20))
        want = hashlib.sha256(data).hexdigest()
        assert [(code, digest) for code, digest, _, _ in answers] == [(200, want)] * 20
        assert upstream.count(BIG) == 1
        names["u0"].proc.send_signal(signal.SIGKILL)  # a unit dies
        proxy.wait_for({"u0": "DOWN", "u1": "UP", "u2": "UP"})
        for _ in range(6):  # every request answered by the two left
            assert http_get(proxy.url + BIG) == (200, data)
        assert names["u1"].admin("drain", {"drain": True})[0] == 200  # taken out for work
        proxy.wait_for({"u0": "DOWN", "u1": "DOWN", "u2": "UP"})
        assert http_get(proxy.url + POOL) == (200, files[POOL])
        own.stop()  # the store goes away: the fleet still serves
        assert http_get(proxy.url + BIG) == (200, data)  # from u2's disk
        assert http_get(proxy.url + INDEX) == (200, files[INDEX])  # upstream
        assert upstream.count(BIG) == 1
    finally:
        proxy.stop()
        own.stop()
