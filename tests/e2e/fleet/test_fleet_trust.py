"""The trust model at the fleet's boundary, end to end: real appliance processes under the
default `workers: auto`, a real Swift (S3 API), an attacker holding the bucket's
credentials, a lying peer. A client gets upstream's bytes or an error, never other bytes;
every refusal is counted (`archive_local_fleet_refused_total`) and nothing is a 500."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.components import swift_aio
from tests.conftest import Appliance, free_port_block, http_get, upstream_file
from tests.e2e.store.test_bucket_trust import consistent_metadata, meta_pieces
from tests.fleet import Fleet, healthz
from tests.hostile import Hostile, other_bytes
from tests.upstream import Upstream

PREFIX = "fleet/"  # the units' object names start with it (see Fleet.unit)
POOL = "/debian/pool/main/h/hello_1.0_amd64.deb"


def _refused(app: Appliance) -> dict[tuple[str, str], float]:
    """archive_local_fleet_refused_total by (source, reason), summed over the workers."""
    with urllib.request.urlopen(app.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("archive_local_fleet_refused_total{"):
            labels, value = line.rsplit(" ", 1)
            parts = dict(p.split("=", 1) for p in labels[labels.index("{") + 1 : -1].split(","))
            key = (parts["source"].strip('"'), parts["reason"].strip('"'))
            out[key] = out.get(key, 0) + float(value)
    return {k: v for k, v in out.items() if v}


def _plant(s3: Any, bucket: str, key: str, body: bytes, **fields: Any) -> None:
    """An object whose metadata is consistent with its bytes, as a unit would write it."""
    metadata = consistent_metadata(key, body, **fields)
    s3.put_object(Bucket=bucket, Key=PREFIX + key, Body=body, Metadata=metadata)


def _two_units_after_a_fetch(
    fleet: Fleet, swift: Any, real: bytes
) -> tuple[list[Appliance], str, str, dict[str, str]]:
    """Two units on a new bucket (`workers: auto`), unit 0 having fetched POOL and
    uploaded it with the fleet's record: (units, bucket, object name, its metadata)."""
    bucket = f"trust-{uuid.uuid4().hex[:12]}"
    units = [fleet.unit(swift, bucket, n, workers="auto") for n in range(2)]
    assert http_get(units[0].url + POOL) == (200, real)
    s3 = swift.client()
    name = f"{PREFIX}{fleet.upstream.url.split('://', 1)[1]}{POOL}"
    deadline = time.monotonic() + 60  # (a loaded machine's Swift may first say "slow down")
    while True:  # uploaded once its client had it
        try:
            return units, bucket, name, s3.head_object(Bucket=bucket, Key=name)["Metadata"]
        except s3.exceptions.ClientError:
            assert time.monotonic() < deadline, units[0].log_text()[-3000:]
            time.sleep(0.2)


def _new_bucket(s3: Any) -> str:
    """A bucket made before any unit or writer uses it: Swift remembers for a while that a
    container did not exist, and a write racing the unit's own create would fail."""
    bucket = f"trust-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return bucket


def _no_tracebacks(*apps: Appliance) -> None:
    for app in apps:
        assert "Traceback" not in app.log_text(), app.log_text()[-3000:]


def _status(url: str) -> tuple[int, bytes]:
    try:
        return http_get(url)
    except (OSError, http.client.HTTPException) as exc:  # a cut transfer
        return 0, getattr(exc, "partial", b"")


def test_planted_objects_are_never_served(
    swift: Any, fleet: Fleet, upstream: Upstream, upstream_root: Path
) -> None:
    """Never-shared keys (the curated feed, the unit's key, a feed snapshot) and a forged
    pool file: a unit with an empty disk serves none of the planted bytes."""
    bucket = f"trust-{uuid.uuid4().hex[:12]}"
    s3 = swift.client()
    s3.create_bucket(Bucket=bucket)
    planted = b"planted by a bucket writer " * 1000
    never_shared = {
        "/streams/v1/index.json": "_feed/streams/v1/index.json",
        "/streams/v1/rogue.squashfs": "_feed/streams/v1/rogue.squashfs",
        "/keys/archive-local.gpg": "_feed/keys/archive-local.gpg",
        "/images/ubuntu/streams/v1/index.json": "_images/ubuntu/streams/v1/index.json",
    }
    for key in never_shared.values():
        _plant(s3, bucket, key, planted, keep=True)
    real = upstream_file(upstream_root, POOL, 200_000)
    host = upstream.url.split("://", 1)[1]
    _plant(s3, bucket, f"{host}/debian{POOL.removeprefix('/debian')}", planted)  # no record
    unit = fleet.unit(swift, bucket, 0, workers="auto")
    for path in never_shared:
        status, body = _status(unit.url + path)
        assert body != planted, path
        assert status != 200 or path.startswith("/keys/"), (path, status)  # its own key
    assert http_get(unit.url + POOL) == (200, real)  # from upstream, not the bucket
    assert upstream.count(POOL) == 1
    # the planted pool file refused (looked at before the lease and once more under it)
    assert set(_refused(unit)) == {("bucket", "unverifiable")}
    _no_tracebacks(unit)


def test_a_forged_object_is_not_served_to_another_unit(
    swift: Any, fleet: Fleet, upstream: Upstream, upstream_root: Path
) -> None:
    """Unit 0 fetches a pool file and uploads it with the fleet's record; a bucket writer
    replaces the bytes, keeping (or rewriting consistently) the metadata: unit 1's client
    gets upstream's bytes, never the forged ones."""
    real = upstream_file(upstream_root, POOL, 300_000)
    units, bucket, name, genuine = _two_units_after_a_fetch(fleet, swift, real)
    s3 = swift.client()
    host = upstream.url.split("://", 1)[1]
    forged = os.urandom(300_000)
    s3.put_object(Bucket=bucket, Key=name, Body=forged, Metadata=genuine)  # its record
    assert http_get(units[1].url + POOL) == (200, real)
    _plant(s3, bucket, f"{host}{POOL}", forged)  # consistent metadata, no record
    for worker_try in range(4):  # each worker of unit 1 asked (its disk has it now)
        assert http_get(units[1].url + POOL) == (200, real), worker_try
    refused = _refused(units[1])
    assert refused.get(("bucket", "digest"), 0) >= 1, refused
    shown = units[1].status()["integrity"]["fleet_refused"]  # the workers' sum, as /metrics
    assert {tuple(k.split("/")): v for k, v in shown.items()} == refused, shown
    _no_tracebacks(*units)


def test_labels_rewritten_by_a_bucket_writer_never_break_an_answer(
    swift: Any, fleet: Fleet, upstream: Upstream, upstream_root: Path
) -> None:
    """The record covers the bytes, not the labels: CR/LF in the content type, a number as
    ETag are dropped; the client gets the file, 200, never a 500."""
    real = upstream_file(upstream_root, POOL, 100_000)
    units, bucket, name, genuine = _two_units_after_a_fetch(fleet, swift, real)
    s3 = swift.client()
    pieces = "".join(v for k, v in sorted(genuine.items()) if k.startswith("al-meta-"))
    meta = json.loads(base64.urlsafe_b64decode(pieces))
    meta.update(content_type="text/html\r\nSet-Cookie: a=b", etag=12345)
    others = {k: v for k, v in genuine.items() if not k.startswith("al-meta-")}
    s3.put_object(
        Bucket=bucket, Key=name, Body=real, Metadata={**others, **meta_pieces(json.dumps(meta))}
    )
    with urllib.request.urlopen(units[1].url + POOL, timeout=30) as r:
        assert r.status == 200 and r.read() == real
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert "Set-Cookie" not in r.headers
    assert upstream.count(POOL) == 1  # unit 1 took the vouched bytes
    _no_tracebacks(*units)


@pytest.fixture
def lying_peer() -> Iterator[Hostile]:
    """A unit listed in `cache.store.peers` that answers a flight with other bytes (set by
    the test: `lying_peer.default = other_bytes(...)`)."""
    peer = Hostile().start()
    yield peer
    peer.close()


def test_a_lying_peer_is_relayed_no_further_than_its_first_wrong_byte(
    swift: Any, fleet: Fleet, upstream: Upstream, upstream_root: Path, lying_peer: Hostile
) -> None:
    """A bucket writer names a listed peer as the holder of a by-hash index's lease; the
    peer sends other bytes of the right length: the client never gets a whole answer (the
    last byte is held back, then the transfer is cut), and the refusal is counted. A peer
    that announces another length is not streamed from at all."""
    content = b"Package: hello\nVersion: 1.0\n" * 4000
    digest = hashlib.sha256(content).hexdigest()
    path = f"/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{digest}"
    (upstream_root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (upstream_root / path.lstrip("/")).write_bytes(content)
    s3 = swift.client()
    bucket = _new_bucket(s3)
    unit = fleet.unit(swift, bucket, 0, workers="auto", peers=[lying_peer.url])
    lease = f"{PREFIX}.leases/{upstream.url.split('://', 1)[1]}{path}"
    s3.put_object(
        Bucket=bucket, Key=lease, Body=json.dumps({"holder": f"evil@{lying_peer.url}"}).encode()
    )
    lying_peer.default = other_bytes(os.urandom(len(content)))
    status, body = _status(unit.url + path)
    assert sum(r.method == "GET" for r in lying_peer.requests) == 1
    assert body != content and hashlib.sha256(body).hexdigest() != digest
    assert status != 200 or len(body) < len(content), (status, len(body))
    assert _refused(unit).get(("peer", "digest")) == 1
    # announcing another length: refused at once, the unit waits and then fetches itself
    lying_peer.default = other_bytes(b"x" * (len(content) + 10))
    s3.put_object(
        Bucket=bucket, Key=lease, Body=json.dumps({"holder": f"evil@{lying_peer.url}"}).encode()
    )
    s3.delete_object(Bucket=bucket, Key=lease)  # and the lease let go: fetched upstream
    assert http_get(unit.url + path) == (200, content)
    _no_tracebacks(unit)


def test_a_lease_rewritten_for_ever_blocks_no_client(
    swift: Any, fleet: Fleet, upstream: Upstream, upstream_root: Path
) -> None:
    """A bucket writer keeps rewriting a file's lease (every 2 s, `lease: 6s`): the client
    is served from upstream after twice the lease's time, not never."""
    real = upstream_file(upstream_root, POOL, 50_000)
    s3 = swift.client()
    bucket = _new_bucket(s3)
    unit = fleet.unit(swift, bucket, 0, lease="6s", workers="auto")
    lease = f"{PREFIX}.leases/{upstream.url.split('://', 1)[1]}{POOL}"
    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            s3.put_object(Bucket=bucket, Key=lease, Body=b'{"holder": "squatter"}')
            stop.wait(2)

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        assert http_get(unit.url + POOL) == (200, real)
        took = time.monotonic() - started
    finally:
        stop.set()
        writer.join()
    assert 10 < took < 20, took
    assert _refused(unit).get(("lease", "expired")) == 1
    _no_tracebacks(unit)


def _timed(url: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    status, body = _status(url)
    return status, body, time.monotonic() - started


def test_a_hung_store_stalls_neither_hits_nor_misses(
    fleet: Fleet, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    """Swift's proxy stopped (SIGSTOP) with 12 misses in flight: hits keep their latency,
    new misses go upstream within `upstream.read_timeout` + 1 s, /healthz says so, and the
    store is used again after SIGCONT."""
    if not swift_aio.installed():
        pytest.fail("swift missing: `make test` builds .components/swift")
    own = swift_aio.start(tmp_path / "swift", free_port_block(5))  # this test stops it
    proxy = own.processes[-1]
    try:  # whatever fails, Swift is stopped (and woken first)
        _hung_store_round(fleet, upstream, upstream_root, own, proxy)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proxy.pid, signal.SIGCONT)
        own.stop()


def _hung_store_round(
    fleet: Fleet, upstream: Upstream, upstream_root: Path, own: Any, proxy: Any
) -> None:
    try:
        hot = upstream_file(upstream_root, "/debian/pool/main/h/hot_1.0_amd64.deb", 100_000)
        slow = {f"/debian/pool/main/s/slow{i}_1.0_amd64.deb": b"" for i in range(12)}
        for path in slow:
            slow[path] = upstream_file(upstream_root, path, 300_000)
            upstream.rate[path] = 100_000  # 3 s each
        unit = fleet.unit(own, "fleet", 0, workers="auto")
        assert http_get(unit.url + "/debian/pool/main/h/hot_1.0_amd64.deb") == (200, hot)
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            flying = {p: pool.submit(_timed, unit.url + p) for p in slow}
            time.sleep(0.5)
            os.kill(proxy.pid, signal.SIGSTOP)
            hits = [_timed(unit.url + "/debian/pool/main/h/hot_1.0_amd64.deb") for _ in range(100)]
            misses = []
            for i in range(3):
                path = f"/debian/pool/main/n/new{i}_1.0_amd64.deb"
                data = upstream_file(upstream_root, path, 50_000)
                status, body, took = _timed(unit.url + path)
                misses.append(took)
                assert (status, body) == (200, data)
            answers = {p: f.result() for p, f in flying.items()}
        assert all(h[:2] == (200, hot) for h in hits)
        latencies = sorted(h[2] for h in hits)
        assert latencies[98] < 0.05, latencies[-5:]  # p99
        assert max(misses) < 60 + 1, misses  # upstream.read_timeout (default 60 s) + 1 s
        assert max(misses) < 8, misses  # in fact: the store's deadline (5 s) and the fetch
        assert {p: a[:2] for p, a in answers.items()} == {p: (200, d) for p, d in slow.items()}
        # every worker finds the store hung at its first call to it (a miss on it): each
        # answers /healthz for itself, and says so once it has asked
        deadline = time.monotonic() + 40
        seen = 0
        while seen < 6:
            code, health = healthz(unit)
            assert code == 200, health
            if health["shared_store"].startswith("unavailable: "):
                seen += 1
            else:
                seen = 0
                assert time.monotonic() < deadline, health
                http_get(unit.url + f"/debian/pool/main/m/more{time.monotonic_ns()}.deb")
    finally:
        os.kill(proxy.pid, signal.SIGCONT)
    # recovery
    deadline = time.monotonic() + 60
    i = 0
    while healthz(unit)[1]["shared_store"] != "up":  # a miss asks the store again
        assert time.monotonic() < deadline, unit.log_text()[-3000:]
        http_get(unit.url + f"/debian/pool/main/n/nothing{i}.deb")
        i += 1
        time.sleep(0.5)
    _no_tracebacks(unit)
