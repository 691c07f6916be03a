"""The spine's defects (issue 11), each seen the way a user meets it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.conftest import FILTERS, StartAppliance, free_port, http_get
from tests.feed import Feed
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


class _Forbidden(BaseHTTPRequestHandler):
    """An S3 endpoint whose bucket belongs to someone else: HEAD 403, and a record of
    whether the seeder then tried to create it anyway."""

    seen: list[str] = []

    def do_HEAD(self) -> None:
        self.seen.append(f"HEAD {self.path}")
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        self.seen.append(f"PUT {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_forbidden_bucket_is_an_error_not_a_bucket_to_create(tmp_path: Path) -> None:
    from appliance.config import Ec2TargetConfig
    from appliance.targets.ec2 import Ec2Cloud
    from appliance.targets.plan import SeedError

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    creds = tmp_path / "eucarc"
    creds.write_text("EC2_ACCESS_KEY=AKIDEXAMPLE\nEC2_SECRET_KEY=secret\n")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    target = Ec2TargetConfig(
        name="t",
        type="ec2",
        feeds=("f",),
        ec2_endpoint=url,
        s3_endpoint=url,
        credentials_file=creds,
        method="ebs",
        bucket="someone-elses",
    )
    try:
        cloud = Ec2Cloud(target, "us-east-1")
        with pytest.raises(SeedError, match=r"someone-elses.*403"):
            cloud._ensure_bucket()
    finally:
        server.shutdown()
        server.server_close()
    assert _Forbidden.seen and all(s.startswith("HEAD") for s in _Forbidden.seen)


@pytest.mark.parametrize("where", ["before", "after"])
def test_common_options_before_or_after_the_subcommand(tmp_path: Path, where: str) -> None:
    """`archive-local config --config F -v` (as unit files write it) and the classic order."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:4242",
                "cache": {"dir": str(tmp_path / "cache"), "max_size": "1GiB"},
                "apt": {"index_ttl": 60, "remaps": {}},
            }
        )
    )
    opts = ["--config", str(cfg), "-v"]
    argv = [*opts, "config"] if where == "before" else ["config", *opts]
    out = subprocess.run(
        [sys.executable, "-m", "appliance", *argv], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "127.0.0.1:4242" in out.stdout


def test_sync_accepts_config_after_the_subcommand(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{free_port()}",
                "cache": {"dir": str(tmp_path / "cache"), "max_size": "1GiB"},
                "apt": {"index_ttl": 60, "remaps": {}},
                "images": {
                    "gnupg_home": str(tmp_path / "gnupg"),
                    "feeds": [
                        {
                            "name": "only-in-this-file",
                            "url": f"http://127.0.0.1:{free_port()}/",
                            "keyring": str(tmp_path / "none.gpg"),
                        }
                    ],
                },
            }
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "sync", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "unrecognized arguments" not in out.stderr
    [outcome] = json.loads(out.stdout)  # the feed of this file: its config was read
    assert outcome["feed"] == "only-in-this-file" and not outcome["ok"]
    assert out.returncode == 1, out.stderr


def test_nothing_imports_aiofiles() -> None:
    root = Path(__file__).resolve().parent.parent
    assert "aiofiles" not in (root / "pyproject.toml").read_text()


def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def _rewrite(app_config: Path, **changes: object) -> None:
    data = yaml.safe_load(app_config.read_text())
    for section, value in changes.items():
        if isinstance(value, dict):
            data.setdefault(section, {}).update(value)
        else:
            data[section] = value
    app_config.write_text(yaml.safe_dump(data))


def _feed_entry(feed: Feed, url: str) -> dict:
    return {
        "name": "ex",
        "url": url.rstrip("/") + "/",
        "keyring": str(feed.key.keyring),
        "filters": FILTERS,
        "max_items": 1,
    }


def test_feeds_added_by_reload_are_synced_and_the_interval_follows(
    feed: Feed, served: Upstream, start_appliance: StartAppliance
) -> None:
    """Started without feeds: a reload that adds one syncs it at once (no admin call),
    `POST sync` then runs it again, and a shorter `sync_interval` takes effect."""
    app = start_appliance({})
    assert app.config is not None
    assert app.admin("sync")[0] == 409  # nothing to sync: said, not pretended
    _rewrite(app.config, images={"feeds": [_feed_entry(feed, served.url)]})
    assert app.admin("reload")[0] == 200

    def runs() -> int:
        feeds = app.status()["sync"]["feeds"]
        return 1 if feeds.get("ex", {}).get("ok") else 0

    _wait(lambda: runs() == 1)
    assert app.admin("sync")[0] == 202
    metrics = lambda: http_get(f"{app.url}/metrics")[1].decode()  # noqa: E731
    _wait(lambda: 'archive_local_sync_runs_total{feed="ex"} 2.0' in metrics())
    _rewrite(app.config, images={"sync_interval": "1s"})
    os.kill(app.proc.pid, signal.SIGHUP)  # reload by signal, as a unit's ExecReload does
    _wait(lambda: 'archive_local_sync_runs_total{feed="ex"} 4.0' in metrics(), timeout=20)
    assert "Traceback" not in app.log_text()


def test_no_module_outside_the_cache_reaches_into_the_store() -> None:
    """The store contract holds: nothing outside `cache/` names the filesystem backend,
    its root or an entry's path (an object-store backend could not provide them)."""
    root = Path(__file__).resolve().parent.parent / "appliance"
    pattern = re.compile(r"FilesystemStore|store\.root|\.root\s*/|entry\.path|\.path\.read_bytes")
    offenders = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in root.rglob("*.py")
        if path.parent.name != "cache" and path.name != "stores.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_a_crashed_seed_is_recorded_not_lost(start_appliance: StartAppliance) -> None:
    """The seed lock cannot even be taken (its name is a directory): the failure shows
    on the status page and in the metrics instead of vanishing."""
    app = start_appliance(
        {},
        extra={
            "seed": {
                "after_sync": False,
                "targets": [
                    {
                        "name": "cloud",
                        "type": "glance",
                        "feeds": ["ex"],
                        "auth": {"endpoint": "http://127.0.0.1:9/", "token_env": "NO_TOKEN"},
                    }
                ],
            }
        },
    )
    (app.cache_dir / ".state/seed.lock").mkdir(parents=True)  # not a file to lock
    assert app.admin("seed")[0] == 202
    _wait(lambda: "cloud" in app.status()["seed"]["targets"])
    outcome = app.status()["seed"]["targets"]["cloud"]
    assert not outcome["ok"] and "seeding failed" in outcome["error"]
    metrics = http_get(f"{app.url}/metrics")[1].decode()
    assert 'archive_local_seed_failures_total{target="cloud"} 1.0' in metrics


def test_config_prints_sizes_and_durations_the_way_users_write_them(tmp_path: Path) -> None:
    from appliance import config

    text = """
listen: "[::]:3142"
cache: {dir: /srv/cache, max_size: 50GiB, min_free: 500MB, expire_after: 90m}
images:
  sync_interval: 6h
  feeds: [{name: u, url: "http://x/", keyring: /k.gpg, filters: [arch=amd64]}]
upstream: {min_rate: 0, deadline: 45s}
"""
    parsed = config.parse(yaml.safe_load(text))
    out = config.dump(parsed)
    for written in (
        "max_size: 50GiB",
        "min_free: 500MB",
        "expire_after: 90m",
        "sync_interval: 6h",
        "deadline: 45s",
        "listen: '[::]:3142'",
    ):
        assert written in out, out
    assert "53687091200" not in out
    assert config.parse(yaml.safe_load(out)) == parsed  # what it prints, it reads back


def test_the_embedded_defaults_and_the_dataclasses_agree() -> None:
    """Defaults live in the dataclasses; the embedded YAML only adds what has none there
    (listen, cache.dir/max_size, apt remaps, mirrors, sources): where both say something,
    they agree."""
    from dataclasses import MISSING, fields

    from appliance import config

    data = config.default_data()
    parsed = config.load(None)
    assert config.parse({}) == parsed
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        value = getattr(parsed, section)
        for f in fields(value):
            if f.name in values and f.default is not MISSING:
                assert getattr(value, f.name) == getattr(type(value), f.name), f.name
