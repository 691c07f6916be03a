"""`archive-local query` against a real signed feed served on 127.0.0.1, and gpg checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.streams.gpg import SignatureError, Signer, Verifier
from tests.conftest import ITEM_SIZE, require, stop_gpg_agent
from tests.feed import CONTENT_ID, Feed
from tests.gpgkey import ThrowawayKey
from tests.upstream import Upstream


def query(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "query", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_query_filters_max_and_json(feed: Feed, served: Upstream) -> None:
    r = query(
        served.url + "/",
        "arch=amd64",
        "release~^(jammy|noble)$",
        "ftype=disk1.img",
        "--max",
        "2",
        "--keyring",
        str(feed.key.keyring),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted((x["release"], x["version_name"]) for x in rows) == [
        ("jammy", "20240301"),
        ("jammy", "20240401"),
        ("noble", "20240301"),
        ("noble", "20240401"),
    ]
    row = rows[0]
    assert row["content_id"] == CONTENT_ID and row["size"] == str(ITEM_SIZE)
    assert row["item_url"] == f"{served.url}/{row['path']}"
    assert "warning" not in r.stderr


def test_query_table_and_format(feed: Feed, served: Upstream) -> None:
    r = query(
        served.url,
        "release=focal",
        "arch=arm64",
        "ftype=manifest",
        "--keyring",
        str(feed.key.armored),
    )  # an armored keyring works too
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["PRODUCT_NAME", "VERSION_NAME", "ITEM_NAME"]
    assert len(lines) == 4
    r = query(
        str(feed.root),
        "release=focal",
        "arch=arm64",
        "ftype=manifest",
        "-o",
        "%(version_name)s %(sha256)s",
    )
    assert r.returncode == 0 and "not verified" in r.stderr
    assert [ln.split()[0] for ln in r.stdout.splitlines()] == ["20240401", "20240301", "20240101"]


def test_query_json_index_checks_detached_signatures(feed: Feed, served: Upstream) -> None:
    url = f"{served.url}/streams/v1/index.json"
    assert query(url, "--keyring", str(feed.key.keyring)).returncode == 0
    assert served.count(".json.gpg") == 2
    sig = feed.root / feed.products_path
    sig.with_name(sig.name + ".gpg").write_bytes(b"garbage")
    r = query(url, "--keyring", str(feed.key.keyring))
    assert r.returncode == 1 and "bad signature" in r.stderr


def test_query_refuses_tampered_or_foreign_signatures(
    tmp_path: Path, feed: Feed, served: Upstream
) -> None:
    products = feed.root / feed.products_path.replace(".json", ".sjson")
    products.write_bytes(products.read_bytes().replace(b'"jammy"', b'"evil!"'))
    r = query(served.url, "--keyring", str(feed.key.keyring))
    assert r.returncode == 1 and "bad signature" in r.stderr and "evil" not in r.stdout
    other = ThrowawayKey(tmp_path / "other")
    try:
        feed.resign()
        r = query(served.url, "--keyring", str(other.keyring))
        assert r.returncode == 1 and "bad signature" in r.stderr
    finally:
        other.close()


def test_signer_round_trip(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    require("gpg", "gnupg")
    signer = Signer(tmp_path / "home")
    fp = signer.ensure_key()
    assert signer.ensure_key() == fp  # created once
    keyring = tmp_path / "pub.gpg"
    keyring.write_bytes(signer.public_key(armor=False))
    body = b'{"format": "index:1.0"}\n- dash line\n'
    request.addfinalizer(lambda: stop_gpg_agent(tmp_path / "home"))
    with Verifier(keyring) as v:
        assert v.clearsigned(signer.clearsign(body)).rstrip(b"\n") == body.rstrip(b"\n")
        v.detached(body, signer.detach_sign(body))
        with pytest.raises(SignatureError):
            v.detached(body + b"x", signer.detach_sign(body))
        with pytest.raises(SignatureError):
            v.clearsigned(body)
