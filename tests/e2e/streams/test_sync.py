"""`archive-local sync` against a real signed feed on 127.0.0.1, and the served pass-through."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from appliance.streams.gpg import Verifier
from appliance.streams.model import iter_items
from tests.configs import write_config
from tests.conftest import ITEM_SIZE, StartAppliance, http_get, require
from tests.conftest import run_sync as sync
from tests.feed import CONTENT_ID, Feed, build_feed
from tests.upstream import Upstream


def statuses(outcome: dict) -> dict[str, str]:
    return {i["path"]: i["status"] for i in outcome["items"]}


def item_gets(served: Upstream) -> int:
    return sum(1 for r in served.requests if "/server/releases/" in r.path)


def cache_files(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in cache.rglob("*") if p.is_file()}


def test_filtered_sync_then_nothing_to_do(feed_config: Path, feed: Feed, served: Upstream) -> None:
    code, [outcome], err = sync(feed_config)
    assert code == 0, err
    got = statuses(outcome)
    assert len(got) == 4 and set(got.values()) == {"fetched"}
    assert all("amd64.disk1.img" in p and "/focal/" not in p for p in got)
    assert all("release-20240101" not in p for p in got)  # max_items: 2 newest versions
    assert item_gets(served) == 4
    cache = feed_config.parent / "cache"
    host = f"127.0.0.1:{served.port}"
    for path in got:
        assert (cache / host / path).read_bytes() == feed.files[path]
        meta = json.loads(
            (cache / host / path).with_name("." + Path(path).name + ".meta").read_text()
        )
        assert meta["keep"] is True

    code, [again], err = sync(feed_config)
    assert code == 0, err
    assert set(statuses(again).values()) == {"present"} and again["bytes_fetched"] == 0
    assert item_gets(served) == 4  # the second sync transferred no item


def test_tampered_signature_changes_nothing(
    feed_config: Path, feed: Feed, served: Upstream
) -> None:
    assert sync(feed_config)[0] == 0
    cache = feed_config.parent / "cache"
    before = cache_files(cache)
    signed = feed.root / feed.products_path.replace(".json", ".sjson")
    signed.write_bytes(signed.read_bytes().replace(b'"jammy"', b'"jammX"'))
    code, [outcome], _ = sync(feed_config)
    assert code == 1 and "bad signature" in outcome["error"]
    assert cache_files(cache) == before


def test_tampered_image_rejected_others_mirrored(
    feed_config: Path, feed: Feed, served: Upstream
) -> None:
    victim = "server/releases/jammy/release-20240401/ubuntu-22.04-server-cloudimg-amd64.disk1.img"
    (feed.root / victim).write_bytes(os.urandom(len(feed.files[victim])))  # same size, bad bytes
    code, [outcome], _err = sync(feed_config)
    assert code == 1
    got = statuses(outcome)
    assert got.pop(victim) == "failed" and set(got.values()) == {"fetched"}
    assert "rejected" in outcome["error"]
    cache = feed_config.parent / "cache" / f"127.0.0.1:{served.port}"
    assert not (cache / victim).exists()
    assert not list((cache / victim).parent.glob(".*.part-*"))


def test_interrupted_sync_resumes_without_refetching(
    feed_config: Path, feed: Feed, served: Upstream
) -> None:
    victim = "server/releases/noble/release-20240401/ubuntu-24.04-server-cloudimg-amd64.disk1.img"
    served.drop_after["/" + victim] = 100_000
    code, [outcome], _ = sync(feed_config)
    assert code == 1 and statuses(outcome)[victim] == "failed"
    fetched_first = {p for p, s in statuses(outcome).items() if s == "fetched"}
    assert len(fetched_first) == 3
    del served.drop_after["/" + victim]
    code, [outcome], _ = sync(feed_config)
    assert code == 0
    assert statuses(outcome)[victim] == "fetched"
    assert {p for p, s in statuses(outcome).items() if s == "present"} == fetched_first
    for path in fetched_first:
        assert served.count(path) == 1


def test_new_version_prunes_the_oldest(
    tmp_path: Path, feed_config: Path, feed: Feed, served: Upstream
) -> None:
    assert sync(feed_config)[0] == 0
    code, [dry], _ = sync(feed_config, "--dry-run")
    assert code == 0 and set(statuses(dry).values()) == {"present"}
    build_feed(
        tmp_path,
        item_size=ITEM_SIZE,
        key=feed.key,
        serials=("20240101", "20240301", "20240401", "20240501"),
    )
    code, [dry], _ = sync(feed_config, "--dry-run")
    assert sorted(statuses(dry).values()).count("would-fetch") == 2
    assert sorted(statuses(dry).values()).count("would-remove") == 2
    code, [outcome], _ = sync(feed_config)
    assert code == 0
    got = statuses(outcome)
    removed = [p for p, s in got.items() if s == "removed"]
    assert len(removed) == 2 and all("release-20240301" in p for p in removed)
    cache = feed_config.parent / "cache" / f"127.0.0.1:{served.port}"
    assert not any((cache / p).exists() for p in removed)
    assert all((cache / p).exists() for p, s in got.items() if s in ("fetched", "present"))


def test_pass_through_feed_is_byte_identical(
    feed_config: Path, feed: Feed, served: Upstream, start_appliance: StartAppliance
) -> None:
    assert sync(feed_config)[0] == 0
    app = start_appliance(
        {"debian": ["http://127.0.0.1:9/debian"]}, cache_dir=feed_config.parent / "cache"
    )
    base = f"{app.url}/images/ex"
    for doc in (
        "index.sjson",
        "index.json",
        "index.json.gpg",
        Path(feed.products_path).name,
        Path(feed.products_path).name + ".gpg",
        Path(feed.products_path).name.replace(".json", ".sjson"),
    ):
        status, body = http_get(f"{base}/streams/v1/{doc}")
        assert status == 200, doc
        assert body == (feed.root / "streams/v1" / doc).read_bytes(), doc
    gets = item_gets(served)
    mirrored = "server/releases/noble/release-20240301/ubuntu-24.04-server-cloudimg-amd64.disk1.img"
    assert http_get(f"{base}/{mirrored}") == (200, feed.files[mirrored])
    assert item_gets(served) == gets  # pre-fetched: from disk
    on_demand = "server/releases/focal/release-20240101/ubuntu-20.04-server-cloudimg-arm64.manifest"
    assert http_get(f"{base}/{on_demand}") == (200, feed.files[on_demand])
    assert item_gets(served) == gets + 1
    assert http_get(f"{base}/server/not-in-the-feed.img")[0] == 404
    assert http_get(f"{app.url}/images/nosuchfeed/streams/v1/index.sjson")[0] == 404
    # an on-demand item that does not match the signed metadata is never served
    bad = "server/releases/focal/release-20240101/ubuntu-20.04-server-cloudimg-amd64.manifest"
    (feed.root / bad).write_bytes(os.urandom(len(feed.files[bad])))
    with pytest.raises((OSError, http.client.IncompleteRead)):  # cut before the full length
        _read_all(f"{base}/{bad}")


def _read_all(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def test_curated_feed_lists_only_mirrored_files_signed_by_the_appliance(
    tmp_path: Path, feed_config: Path, feed: Feed, served: Upstream, start_appliance: StartAppliance
) -> None:
    code, [outcome], err = sync(feed_config)
    assert code == 0, err
    keys = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(feed_config), "keys", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert keys.returncode == 0, keys.stderr
    fingerprint = json.loads(keys.stdout)["fingerprint"]
    app = start_appliance(
        {"debian": ["http://127.0.0.1:9/debian"]}, cache_dir=feed_config.parent / "cache"
    )
    status, public = http_get(f"{app.url}/keys/archive-local.gpg")
    assert status == 200
    assert http_get(f"{app.url}/keys/archive-local.asc")[1].startswith(b"-----BEGIN PGP PUBLIC KEY")
    keyring = tmp_path / "appliance.gpg"
    keyring.write_bytes(public)
    with Verifier(keyring) as verifier:
        assert fingerprint in verifier.fingerprints
        status, signed = http_get(f"{app.url}/streams/v1/index.sjson")
        assert status == 200
        index = json.loads(verifier.clearsigned(signed))
        [(content_id, entry)] = index["index"].items()
        assert content_id == CONTENT_ID and entry["path"].endswith(".sjson")
        status, signed_doc = http_get(f"{app.url}/{entry['path']}")
        doc = json.loads(verifier.clearsigned(signed_doc))
        status, plain = http_get(f"{app.url}/streams/v1/index.json")
        verifier.detached(plain, http_get(f"{app.url}/streams/v1/index.json.gpg")[1])
    listed = {flat["path"] for _p, _v, _i, flat in iter_items(doc)}
    mirrored = {p for p, s in statuses(outcome).items() if s == "fetched"}
    assert listed == {f"images/ex/{p}" for p in mirrored}
    gets = item_gets(served)
    for path in listed:  # every listed path answers, from disk
        status, body = http_get(f"{app.url}/{path}")
        assert status == 200 and body == feed.files[path.removeprefix("images/ex/")]
    assert item_gets(served) == gets
    assert http_get(f"{app.url}/streams/v1/nothing.json")[0] == 404


def test_service_syncs_on_start_and_on_demand(
    tmp_path: Path,
    feed_config: Path,
    feed: Feed,
    served: Upstream,
    start_appliance: StartAppliance,
) -> None:
    images = yaml.safe_load(feed_config.read_text())["images"]
    slow = "/server/releases/noble/release-20240401/ubuntu-24.04-server-cloudimg-amd64.disk1.img"
    served.rate[slow] = 1_000_000  # about 2 s: the status shows the sync under way
    app = start_appliance(
        {"debian": ["http://127.0.0.1:9/debian"]},
        images=images,
        cache_dir=feed_config.parent / "cache",
    )

    def state() -> dict:
        return app.status()["sync"]

    deadline = time.monotonic() + 60
    seen: list[dict] = []
    while (now := state())["last_run"] is None:
        assert time.monotonic() < deadline, app.log_text()
        if now["running"] and now["progress"]:
            seen.append(now["progress"])
        time.sleep(0.1)
    assert seen, "no progress while the sync ran"
    assert {p["feed"] for p in seen} == {"ex"}
    assert {(p["items_total"], p["bytes_total"]) for p in seen} == {(4, 4 * ITEM_SIZE)}
    under_way = [p for p in seen if 0 < p["items_done"] < 4]  # the slow item still coming
    assert under_way, seen
    assert all(p["bytes_done"] == p["items_done"] * ITEM_SIZE for p in seen)
    first = state()
    assert first["progress"] is None and first["last_success"] >= first["last_run"] - 5
    assert first["feeds"]["ex"]["ok"] and len(first["feeds"]["ex"]["items"]) == 4
    assert http_get(f"{app.url}/streams/v1/index.sjson")[0] == 200
    gets = item_gets(served)
    assert app.admin("sync")[0] == 202
    while state()["last_run"] == first["last_run"]:
        assert time.monotonic() < deadline, app.log_text()
        time.sleep(0.2)
    assert {i["status"] for i in state()["feeds"]["ex"]["items"]} == {"present"}
    assert item_gets(served) == gets
    metrics = http_get(f"{app.url}/metrics")[1].decode()
    assert 'archive_local_sync_runs_total{feed="ex"} 2.0' in metrics
    assert 'archive_local_sync_failures_total{feed="ex"} 0.0' in metrics
    assert 'archive_local_images_mirrored{feed="ex"} 4.0' in metrics
    assert 'archive_local_sync_last_success_timestamp_seconds{feed="ex"}' in metrics


@pytest.mark.parametrize("honours_range", [True, False], ids=["206", "range-ignored"])
def test_interrupted_item_resumes_with_range(
    feed_config: Path, feed: Feed, served: Upstream, honours_range: bool
) -> None:
    victim = "server/releases/jammy/release-20240301/ubuntu-22.04-server-cloudimg-amd64.disk1.img"
    served.drop_after["/" + victim] = 150_000
    code, [outcome], _ = sync(feed_config)
    assert code == 1 and statuses(outcome)[victim] == "failed"
    cache = feed_config.parent / "cache" / f"127.0.0.1:{served.port}"
    parked = (cache / victim).with_name("." + Path(victim).name + ".resume")
    assert parked.exists() and 0 < parked.stat().st_size <= 150_000
    have = parked.stat().st_size
    assert not (cache / victim).exists()
    del served.drop_after["/" + victim]
    if not honours_range:
        served.ignore_range.add("/" + victim)
    code, [outcome], err = sync(feed_config)
    assert code == 0, err
    assert statuses(outcome)[victim] == "fetched"
    assert (cache / victim).read_bytes() == feed.files[victim]
    last = [r for r in served.requests if r.path == "/" + victim][-1]
    assert last.headers.get("Range") == f"bytes={have}-" and "If-Range" in last.headers
    assert last.status == (206 if honours_range else 200)
    assert not parked.exists()


def test_adhoc_sync_and_feed_selection(feed_config: Path, feed: Feed, served: Upstream) -> None:
    """`sync URL FILTER... --keyring --max --name` like sstream-mirror; `--feed` picks one."""
    code, [outcome], err = sync(
        feed_config,
        f"{served.url}/",
        "arch=arm64",
        "release=noble",
        "ftype=disk1.img",
        "--keyring",
        str(feed.key.keyring),
        "--max",
        "1",
        "--name",
        "adhoc",
    )
    assert code == 0, err
    assert outcome["feed"] == "adhoc"
    assert list(statuses(outcome).values()) == ["fetched"]
    [path] = statuses(outcome)
    assert "noble/release-20240401" in path and "arm64" in path
    assert "[adhoc] fetched" in err  # one line per item when not on a terminal
    code, _, err = sync(feed_config, f"{served.url}/")
    assert code == 2 and "--keyring FILE is required" in err
    code, _, err = sync(feed_config, "--feed", "nosuch")
    assert code == 2 and "no feed named 'nosuch'" in err
    code, [outcome], err = sync(feed_config, "--feed", "ex")
    assert code == 0 and outcome["feed"] == "ex"


def test_progress_bar_on_a_terminal(feed_config: Path, feed: Feed, served: Upstream) -> None:
    """On a terminal the sync draws a bar (`script` gives it a real pty)."""
    require("script", "bsdutils")
    cmd = f"{sys.executable} -m appliance --config {feed_config} sync"
    r = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[3],
    )
    assert r.returncode == 0, r.stdout
    assert "[ex] [###" in r.stdout and "100% 4/4 items" in r.stdout  # the bar, redrawn
    assert "ex: fetched 4, present 0, rejected 0, removed 0" in r.stdout


def test_stalled_item_times_out_and_resumes(
    feed_config: Path, feed: Feed, served: Upstream
) -> None:
    config = yaml.safe_load(feed_config.read_text())
    config["upstream"] = {"read_timeout": 1}
    write_config(feed_config, config)
    victim = "server/releases/noble/release-20240301/ubuntu-24.04-server-cloudimg-amd64.disk1.img"
    served.stall_after["/" + victim] = 500_000
    started = time.monotonic()
    code, [outcome], _ = sync(feed_config)
    assert code == 1 and statuses(outcome)[victim] == "failed"
    assert time.monotonic() - started < 20
    del served.stall_after["/" + victim]
    code, [outcome], err = sync(feed_config)
    assert code == 0, err
    cache = feed_config.parent / "cache" / f"127.0.0.1:{served.port}"
    assert (cache / victim).read_bytes() == feed.files[victim]
    last = [r for r in served.requests if r.path == "/" + victim][-1]
    assert last.headers.get("Range", "").startswith("bytes=") and last.status == 206
