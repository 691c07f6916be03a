"""Processes sharing one cache directory on one machine (the service's workers, a command
beside the service): one upstream fetch per file among them, through lock files."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from pathlib import Path

from tests.conftest import StartAppliance
from tests.test_shared_store import BIG, _timed_get
from tests.upstream import Upstream


def test_processes_on_one_cache_fetch_a_file_once(
    start_appliance: StartAppliance, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    data = os.urandom(3_000_000)
    (upstream_root / BIG.lstrip("/")).parent.mkdir(parents=True)
    (upstream_root / BIG.lstrip("/")).write_bytes(data)
    upstream.rate[BIG] = 3_000_000  # about a second
    cache = tmp_path / "cache"
    a, b = (
        start_appliance({"debian": [f"{upstream.url}/debian"]}, cache_dir=cache) for _ in range(2)
    )
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(_timed_get, [(a, b)[i % 2].url + BIG for i in range(10)]))
    want = hashlib.sha256(data).hexdigest()
    assert [(code, digest) for code, digest, _, _ in answers] == [(200, want)] * 10
    assert upstream.count(BIG) == 1, [r.path for r in upstream.requests]
    assert not [p for p in cache.rglob("*") if ".part-" in p.name]
