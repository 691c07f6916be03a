"""The reference client (PyPI python-simplestreams) reads, verifies and mirrors our feeds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import StartAppliance, http_get, require, run_sync
from tests.feed import Feed
from tests.upstream import Upstream

BIN = Path(sys.executable).parent


def reference(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / tool
    if not exe.exists():
        exe_path = shutil.which(tool)
        if exe_path is None:
            pytest.fail(f"{tool} missing: pip install python-simplestreams (make test does)")
        exe = Path(exe_path)
    return subprocess.run(
        [sys.executable, str(exe), *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def appliance_with_feeds(
    tmp_path: Path, feed_config: Path, feed: Feed, served: Upstream, start_appliance: StartAppliance
) -> tuple[str, Path]:
    require("gpgv", "gpgv")
    code, _, err = run_sync(feed_config)
    assert code == 0, err
    app = start_appliance(
        {"debian": ["http://127.0.0.1:9/debian"]}, cache_dir=feed_config.parent / "cache"
    )
    keyring = tmp_path / "appliance.gpg"
    keyring.write_bytes(http_get(f"{app.url}/keys/archive-local.gpg")[1])
    return app.url, keyring


def test_sstream_query_reads_both_served_feeds(
    appliance_with_feeds: tuple[str, Path], feed: Feed
) -> None:
    url, appliance_keyring = appliance_with_feeds
    r = reference("sstream-query", "--json", "--keyring", str(appliance_keyring), f"{url}/")
    assert r.returncode == 0, r.stderr
    curated = json.loads(r.stdout)
    assert len(curated) == 4 and all(i["item_url"].startswith(f"{url}/images/ex/") for i in curated)
    r = reference(
        "sstream-query",
        "--json",
        "--keyring",
        str(feed.key.keyring),
        f"{url}/images/ex/",
        "release=focal",
    )
    assert r.returncode == 0, r.stderr
    passthrough = json.loads(r.stdout)
    assert len(passthrough) == 2 * 3 * 2  # focal: every arch, version and item upstream lists
    r = reference("sstream-query", "--keyring", str(feed.key.keyring), f"{url}/")
    assert r.returncode != 0  # the curated feed is not signed by upstream's key


def test_sstream_mirror_mirrors_both_served_feeds(
    tmp_path: Path, appliance_with_feeds: tuple[str, Path], feed: Feed
) -> None:
    url, appliance_keyring = appliance_with_feeds
    out = tmp_path / "ref-mirror"
    r = reference("sstream-mirror", "--keyring", str(appliance_keyring), f"{url}/", str(out))
    assert r.returncode == 0, r.stderr
    got = {str(p.relative_to(out)) for p in out.rglob("*.img")}
    assert len(got) == 4
    for path in got:
        assert (out / path).read_bytes() == feed.files[path.removeprefix("images/ex/")]
    out2 = tmp_path / "ref-mirror-2"
    r = reference(
        "sstream-mirror",
        "--keyring",
        str(feed.key.keyring),
        "--max",
        "1",
        f"{url}/images/ex/",
        str(out2),
        "release=focal",
        "arch=arm64",
    )
    assert r.returncode == 0, r.stderr
    got = sorted(str(p.relative_to(out2)) for p in (out2 / "server").rglob("*") if p.is_file())
    assert len(got) == 2 and all(feed.files[p] == (out2 / p).read_bytes() for p in got)
