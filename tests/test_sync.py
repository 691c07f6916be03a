"""`archive-local sync` against a real signed feed on 127.0.0.1, and the served pass-through."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.error import HTTPError

import pytest
import yaml

from tests.conftest import StartAppliance, require
from tests.feed import Feed, build_feed
from tests.upstream import Upstream

FILTERS = ["arch=amd64", "release~^(jammy|noble)$", "ftype=disk1.img"]


@pytest.fixture
def feed(tmp_path: Path) -> Iterator[Feed]:
    require("gpg", "gnupg")
    f = build_feed(tmp_path, item_size=256 * 1024)
    yield f
    f.key.close()


@pytest.fixture
def served(feed: Feed) -> Iterator[Upstream]:
    server = Upstream(feed.root).start()
    yield server
    server.close()


@pytest.fixture
def config(tmp_path: Path, feed: Feed, served: Upstream) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "cache": {"dir": str(tmp_path / "cache")},
                "images": {
                    "feeds": [
                        {
                            "name": "ex",
                            "url": served.url + "/",
                            "keyring": str(feed.key.keyring),
                            "filters": FILTERS,
                            "max_items": 2,
                        }
                    ]
                },
            }
        )
    )
    return cfg


def sync(config: Path, *args: str) -> tuple[int, list[dict], str]:
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(config), "sync", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        out = json.loads(r.stdout) if r.stdout.strip() else []
    except ValueError:
        pytest.fail(f"not JSON: {r.stdout!r} {r.stderr}")
    return r.returncode, out, r.stderr


def statuses(outcome: dict) -> dict[str, str]:
    return {i["path"]: i["status"] for i in outcome["items"]}


def item_gets(served: Upstream) -> int:
    return sum(1 for r in served.requests if "/server/releases/" in r.path)


def cache_files(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in cache.rglob("*") if p.is_file()}


def test_filtered_sync_then_nothing_to_do(config: Path, feed: Feed, served: Upstream) -> None:
    code, [outcome], err = sync(config)
    assert code == 0, err
    got = statuses(outcome)
    assert len(got) == 4 and set(got.values()) == {"fetched"}
    assert all("amd64.disk1.img" in p and "/focal/" not in p for p in got)
    assert all("release-20240101" not in p for p in got)  # max_items: 2 newest versions
    assert item_gets(served) == 4
    cache = config.parent / "cache"
    host = f"127.0.0.1:{served.port}"
    for path in got:
        assert (cache / host / path).read_bytes() == feed.files[path]
        meta = json.loads(
            (cache / host / path).with_name("." + Path(path).name + ".meta").read_text()
        )
        assert meta["keep"] is True

    code, [again], err = sync(config)
    assert code == 0, err
    assert set(statuses(again).values()) == {"present"} and again["bytes_fetched"] == 0
    assert item_gets(served) == 4  # the second sync transferred no item


def test_tampered_signature_changes_nothing(config: Path, feed: Feed, served: Upstream) -> None:
    assert sync(config)[0] == 0
    cache = config.parent / "cache"
    before = cache_files(cache)
    signed = feed.root / feed.products_path.replace(".json", ".sjson")
    signed.write_bytes(signed.read_bytes().replace(b'"jammy"', b'"jammX"'))
    code, [outcome], _ = sync(config)
    assert code == 1 and "bad signature" in outcome["error"]
    assert cache_files(cache) == before


def test_tampered_image_rejected_others_mirrored(
    config: Path, feed: Feed, served: Upstream
) -> None:
    victim = "server/releases/jammy/release-20240401/ubuntu-22.04-server-cloudimg-amd64.disk1.img"
    (feed.root / victim).write_bytes(os.urandom(len(feed.files[victim])))  # same size, bad bytes
    code, [outcome], _err = sync(config)
    assert code == 1
    got = statuses(outcome)
    assert got.pop(victim) == "failed" and set(got.values()) == {"fetched"}
    assert "rejected" in outcome["error"]
    cache = config.parent / "cache" / f"127.0.0.1:{served.port}"
    assert not (cache / victim).exists()
    assert not list((cache / victim).parent.glob(".*.part-*"))


def test_interrupted_sync_resumes_without_refetching(
    config: Path, feed: Feed, served: Upstream
) -> None:
    victim = "server/releases/noble/release-20240401/ubuntu-24.04-server-cloudimg-amd64.disk1.img"
    served.drop_after["/" + victim] = 100_000
    code, [outcome], _ = sync(config)
    assert code == 1 and statuses(outcome)[victim] == "failed"
    fetched_first = {p for p, s in statuses(outcome).items() if s == "fetched"}
    assert len(fetched_first) == 3
    del served.drop_after["/" + victim]
    code, [outcome], _ = sync(config)
    assert code == 0
    assert statuses(outcome)[victim] == "fetched"
    assert {p for p, s in statuses(outcome).items() if s == "present"} == fetched_first
    for path in fetched_first:
        assert served.count(path) == 1


def test_new_version_prunes_the_oldest(
    tmp_path: Path, config: Path, feed: Feed, served: Upstream
) -> None:
    assert sync(config)[0] == 0
    code, [dry], _ = sync(config, "--dry-run")
    assert code == 0 and set(statuses(dry).values()) == {"present"}
    build_feed(
        tmp_path,
        item_size=256 * 1024,
        key=feed.key,
        serials=("20240101", "20240301", "20240401", "20240501"),
    )
    code, [dry], _ = sync(config, "--dry-run")
    assert sorted(statuses(dry).values()).count("would-fetch") == 2
    assert sorted(statuses(dry).values()).count("would-remove") == 2
    code, [outcome], _ = sync(config)
    assert code == 0
    got = statuses(outcome)
    removed = [p for p, s in got.items() if s == "removed"]
    assert len(removed) == 2 and all("release-20240301" in p for p in removed)
    cache = config.parent / "cache" / f"127.0.0.1:{served.port}"
    assert not any((cache / p).exists() for p in removed)
    assert all((cache / p).exists() for p, s in got.items() if s in ("fetched", "present"))


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except HTTPError as exc:
        return exc.code, exc.read()


def test_pass_through_feed_is_byte_identical(
    config: Path, feed: Feed, served: Upstream, start_appliance: StartAppliance
) -> None:
    assert sync(config)[0] == 0
    app = start_appliance(
        {"debian": ["http://127.0.0.1:9/debian"]}, cache_dir=config.parent / "cache"
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
        status, body = _get(f"{base}/streams/v1/{doc}")
        assert status == 200, doc
        assert body == (feed.root / "streams/v1" / doc).read_bytes(), doc
    gets = item_gets(served)
    mirrored = "server/releases/noble/release-20240301/ubuntu-24.04-server-cloudimg-amd64.disk1.img"
    assert _get(f"{base}/{mirrored}") == (200, feed.files[mirrored])
    assert item_gets(served) == gets  # pre-fetched: from disk
    on_demand = "server/releases/focal/release-20240101/ubuntu-20.04-server-cloudimg-arm64.manifest"
    assert _get(f"{base}/{on_demand}") == (200, feed.files[on_demand])
    assert item_gets(served) == gets + 1
    assert _get(f"{base}/server/not-in-the-feed.img")[0] == 404
    assert _get(f"{app.url}/images/nosuchfeed/streams/v1/index.sjson")[0] == 404
    # an on-demand item that does not match the signed metadata is never served
    bad = "server/releases/focal/release-20240101/ubuntu-20.04-server-cloudimg-amd64.manifest"
    (feed.root / bad).write_bytes(os.urandom(len(feed.files[bad])))
    with pytest.raises((OSError, http.client.IncompleteRead)):  # cut before the full length
        _read_all(f"{base}/{bad}")


def _read_all(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()
