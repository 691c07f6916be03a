"""What the start-up sweep meets in a cache directory it did not write: it keeps what it
knows, removes only its own leftovers and leaves the rest alone."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

from tests.conftest import StartAppliance, http_get
from tests.upstream import Upstream


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, dict(r.headers), r.read()


def test_startup_survives_what_the_sweep_does_not_know(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance, tmp_path: Path
) -> None:
    """An interrupted EBS seed's staging folder, a sidecar written by another version,
    a name that is not UTF-8 and a FIFO: the service starts, keeps the entry, serves
    it from disk, removes only the staging leftovers and leaves the rest alone."""
    (upstream_root / "debian/pool").mkdir(parents=True)
    data = os.urandom(200_000)
    (upstream_root / "debian/pool/a.deb").write_bytes(data)
    cache = tmp_path / "cache"
    app = start_appliance({"debian": [f"{upstream.url}/debian"]}, cache_dir=cache)
    assert _get(f"{app.url}/debian/pool/a.deb")[2] == data
    app.stop()

    [sidecar] = cache.rglob(".a.deb.meta")
    meta = json.loads(sidecar.read_bytes())
    meta["written_by"] = {"version": "9.9", "field": "a newer version's"}
    sidecar.write_text(json.dumps(meta))
    staging = sidecar.parent / ".seed-k2j3h4"
    staging.mkdir()
    with open(staging / "disk.raw", "wb") as fh:
        fh.truncate(1 << 30)  # a sparse raw disk, as an interrupted EBS seed leaves it
    os.mkfifo(sidecar.parent / "fifo")
    (sidecar.parent / ".fifo.meta").write_text(json.dumps({**meta, "size": 0}))
    odd = os.fsencode(sidecar.parent) + b"/not-utf8-\xff"
    with open(odd, "wb") as fh:
        fh.write(b"x")

    again = start_appliance({"debian": [f"{upstream.url}/debian"]}, cache_dir=cache)
    before = upstream.count("a.deb")
    status, headers, body = _get(f"{again.url}/debian/pool/a.deb")
    assert (status, headers["X-Cache"], body) == (200, "HIT", data)
    assert upstream.count("a.deb") == before
    assert not staging.exists(), "the staging leftovers were not swept"
    assert (sidecar.parent / "fifo").exists() and os.path.exists(odd)  # left alone
    assert json.loads(sidecar.read_bytes())["written_by"]["version"] == "9.9"
    assert (status := http_get(f"{again.url}/debian/pool/fifo")[0]) != 500, status
    assert "Traceback" not in again.log_text()
