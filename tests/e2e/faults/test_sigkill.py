"""SIGKILL at random points of downloads and syncs: afterwards every stored entry is
the upstream's bytes or absent, and a restart leaves no temp file behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import StartAppliance
from tests.e2e.faults.conftest import SCALE, fetch, leftovers, meta, report, stored
from tests.feed import Feed
from tests.hostile import Hostile, slow
from tests.upstream import Upstream

TRIALS = 8 * SCALE


def _check_store(cache: Path, truth: dict[str, bytes]) -> int:
    """Every entry is upstream's bytes, and its sidecar says so; returns the count."""
    entries = stored(cache)
    for key, data in entries.items():
        path = "/" + key.split("/", 1)[1]
        assert data == truth[path], f"{key}: other bytes than upstream's"
        m = meta(cache, key)
        assert (m["size"], m["sha256"]) == (len(data), hashlib.sha256(data).hexdigest()), key
    return len(entries)


async def test_sigkill_during_downloads(
    hostile: Hostile, start_appliance: StartAppliance, tmp_path: Path
) -> None:
    rng = random.Random(10)
    files = {
        f"/debian/pool/k{i}.deb": os.urandom(rng.choice((50_000, 400_000, 2_000_000)))
        for i in range(60)
    }
    hostile.files.update(files)
    for path in files:
        hostile.behave[path] = slow(4_000_000)  # downloads last long enough to be hit
    cache = tmp_path / "kill-cache"
    kept = interrupted = 0
    for trial in range(TRIALS):
        app = start_appliance({"debian": [f"{hostile.url}/debian"]}, cache_dir=cache)
        assert leftovers(cache) == [], f"trial {trial}: the start-up sweep left files"
        _check_store(cache, files)
        paths = rng.sample(sorted(files), 12)
        for path in paths:  # fetched again in this trial, so that the kill meets downloads
            app.admin("purge", {"path": path})

        async def client(path: str, session: aiohttp.ClientSession, url: str = app.url) -> None:
            a = await fetch(f"{url}{path}", session=session)
            assert a.error is not None or a.status != 200 or a.body == files[path]

        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(client(p, session)) for p in paths]
            await asyncio.sleep(rng.uniform(0.05, 0.9))
            app.proc.send_signal(signal.SIGKILL)
            app.proc.wait()
            await asyncio.gather(*tasks)
        interrupted += any(".part-" in b for b in leftovers(cache))  # killed mid-download
        kept = _check_store(cache, files)
    app = start_appliance({"debian": [f"{hostile.url}/debian"]}, cache_dir=cache)
    assert leftovers(cache) == []
    assert _check_store(cache, files) == kept
    assert kept > 0 and interrupted > 0, (kept, interrupted)
    report("sigkill-downloads", trials=TRIALS, interrupted=interrupted, entries=kept, bad=0)
    app.stop()


@pytest.mark.slow
def test_sigkill_during_syncs(
    tmp_path: Path, feed: Feed, served: Upstream, feed_config: Path
) -> None:
    """`archive-local sync` killed at random; `verify` finds nothing wrong; a last sync
    finishes the job."""
    rng = random.Random(11)
    for path in feed.files:
        served.rate["/" + path] = 6_000_000
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)  # (verify refuses a cache directory that is not there)
    cmd = [sys.executable, "-m", "appliance", "--config", str(feed_config)]
    # a killed sync cannot stop the gpg-agent of its verifier's throwaway home: keep those
    # homes under the test's directory and stop their agents here
    gpg_tmp = tmp_path / "tmp"
    gpg_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(gpg_tmp)}
    for _trial in range(TRIALS):
        proc = subprocess.Popen(
            [*cmd, "sync"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        time.sleep(rng.uniform(0.3, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for home in gpg_tmp.glob("archive-local-verify-*"):
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
            shutil.rmtree(home, ignore_errors=True)
        r = subprocess.run([*cmd, "verify", "--json"], capture_output=True, text=True, timeout=60)
        checked = json.loads(r.stdout)
        assert checked["bad"] == 0, checked["problems"]
        for key, data in stored(cache).items():
            if key.startswith("_images/"):
                doc = key.split("/", 2)[2]
                if doc != "feed.json":
                    assert data == (feed.root / doc).read_bytes(), key
            elif ":" in key.split("/", 1)[0]:  # an item, under its upstream's host:port
                assert data == feed.files[key.split("/", 1)[1]], key
            # the rest is the curated feed and keys, made here: `verify` checked them
    r = subprocess.run([*cmd, "sync", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    outcome = json.loads(r.stdout)[0]
    assert outcome["ok"] and {i["status"] for i in outcome["items"]} <= {"fetched", "present"}
    assert len(outcome["items"]) == 4  # FILTERS: 2 releases x 2 versions
    r = subprocess.run([*cmd, "verify", "--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout)["bad"] == 0
    report("sigkill-syncs", trials=TRIALS, bad=0)
