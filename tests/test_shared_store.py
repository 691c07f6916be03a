"""Several units on one object store (issue 13), as real processes on a real OpenStack
Swift (S3 API): what one unit fetched the others serve without asking upstream; volatile
indexes stay per unit; with the store away a unit serves from its disk and upstream, says
so in /healthz, the status page and metrics, and uploads what it fetched once it is back."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.components import swift_aio
from tests.conftest import Appliance, StartAppliance, free_port_block, http_get
from tests.upstream import Upstream

POOL = "/debian/pool/main/h/hello_1.0_amd64.deb"
INDEX = "/debian/dists/bookworm/InRelease"


def _credentials(tmp_path: Path) -> Path:
    path = tmp_path / "store-credentials"
    path.write_text(
        f"[default]\naws_access_key_id = {swift_aio.ACCESS_KEY}\n"
        f"aws_secret_access_key = {swift_aio.SECRET_KEY}\n"
    )
    path.chmod(0o600)
    return path


def _unit(
    start: StartAppliance, upstream: Upstream, tmp_path: Path, swift: Any, bucket: str, n: int
) -> Appliance:
    cache = tmp_path / f"unit-{n}"
    store = {
        "type": "s3",
        "endpoint": swift.endpoint,
        "bucket": bucket,
        "region": swift_aio.REGION,
        "credentials_file": str(_credentials(tmp_path)),
        "prefix": "fleet/",
    }
    return start(
        {"debian": [f"{upstream.url}/debian"]},
        cache_dir=cache,
        extra={"cache": {"dir": str(cache), "max_size": "1GiB", "store": store}},
    )


def _health(app: Appliance) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{app.url}/healthz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _files(upstream_root: Path) -> dict[str, bytes]:
    files = {POOL: os.urandom(1_000_000), INDEX: b"Origin: Debian\n" * 50}
    for path, data in files.items():
        target = upstream_root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return files


def test_units_share_what_they_fetch_and_keep_indexes_their_own(
    swift: Any,
    start_appliance: StartAppliance,
    upstream: Upstream,
    upstream_root: Path,
    tmp_path: Path,
) -> None:
    files = _files(upstream_root)
    bucket = f"fleet-{uuid.uuid4().hex[:12]}"
    a, b = (_unit(start_appliance, upstream, tmp_path, swift, bucket, n) for n in (0, 1))
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
    assert _health(b) == (200, {**_health(b)[1], "status": "serving", "shared_store": "up"})
    metrics = http_get(f"{b.url}/metrics")[1].decode()
    assert "archive_local_shared_store_up 1.0" in metrics
    assert 'archive_local_shared_store_operations_total{result="hit"} 1.0' in metrics
    keys = [o["Key"] for o in swift.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"fleet/127.0.0.1:{upstream.port}{POOL}"]


def test_without_the_store_units_serve_and_catch_up(
    start_appliance: StartAppliance,
    upstream: Upstream,
    upstream_root: Path,
    tmp_path: Path,
) -> None:
    if not swift_aio.installed():
        pytest.fail("swift missing: `make test` builds .components/swift")
    files = _files(upstream_root)
    own = swift_aio.start(tmp_path / "swift", free_port_block(5))  # this test stops it
    try:
        a = _unit(start_appliance, upstream, tmp_path, own, "fleet", 0)
        b = _unit(start_appliance, upstream, tmp_path, own, "fleet", 1)
        own.stop()
        assert http_get(a.url + POOL) == (200, files[POOL])  # upstream, kept on a's disk
        code, health = _health(a)
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
        assert _health(a)[1]["shared_store"] == "up"
        assert http_get(b.url + POOL) == (200, files[POOL])  # uploaded by a once it was back
        assert upstream.count(POOL) == 1
    finally:
        own.stop()
