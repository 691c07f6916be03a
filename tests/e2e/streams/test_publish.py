"""`archive-local publish`: a build directory becomes a signed, incremental feed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.streams.gpg import Verifier
from appliance.streams.model import iter_items
from tests.configs import write_config
from tests.conftest import StartAppliance, http_get, require, stop_gpg_agent
from tests.e2e.streams.test_interop import reference

PRODUCTS = {
    "content_id": "org.example:built:download",
    "products": {
        "org.example:server:24.04:amd64": {
            "properties": {"os": "ubuntu", "release": "noble", "version": "24.04", "arch": "amd64"},
            "items": {"disk1.img": {"file": "noble-amd64.img"}},
        },
        "org.example:server:24.04:arm64": {
            "properties": {"os": "ubuntu", "release": "noble", "version": "24.04", "arch": "arm64"},
            "items": {
                "disk1.img": {"file": "noble-arm64.img"},
                "manifest": {"file": "noble-arm64.manifest", "ftype": "manifest"},
            },
        },
    },
}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    require("gpg", "gnupg")
    cfg = write_config(
        tmp_path / "config.yaml",
        {
            "cache": {"dir": str(tmp_path / "cache")},
            "images": {"gnupg_home": str(tmp_path / "gnupg")},
        },
    )
    build = tmp_path / "build"
    build.mkdir()
    products = tmp_path / "products.yaml"
    products.write_text(yaml.safe_dump(PRODUCTS))
    yield cfg, build, products
    stop_gpg_agent(tmp_path / "gnupg")


def build_images(build: Path) -> dict[str, bytes]:
    files = {
        n: os.urandom(50_000)
        for n in ("noble-amd64.img", "noble-arm64.img", "noble-arm64.manifest")
    }
    for name, data in files.items():
        (build / name).write_bytes(data)
    return files


def publish(cfg: Path, build: Path, products: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "--config",
            str(cfg),
            "publish",
            str(build),
            "--products",
            str(products),
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_publish_is_signed_incremental_and_served(
    tmp_path: Path, setup: tuple[Path, Path, Path], start_appliance: StartAppliance
) -> None:
    cfg, build, products = setup
    first = build_images(build)
    r = publish(cfg, build, products, "--version", "20240101")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["items"]) == 3
    app = start_appliance({"debian": ["http://127.0.0.1:9/debian"]}, cache_dir=tmp_path / "cache")
    keyring = tmp_path / "appliance.gpg"
    keyring.write_bytes(http_get(f"{app.url}/keys/archive-local.gpg")[1])

    def products_doc() -> dict:
        with Verifier(keyring) as v:
            index = json.loads(
                v.clearsigned(http_get(f"{app.url}/images/local/streams/v1/index.sjson")[1])
            )
            [entry] = index["index"].values()
            return json.loads(v.clearsigned(http_get(f"{app.url}/images/local/{entry['path']}")[1]))

    doc = products_doc()
    stamp = doc["products"]["org.example:server:24.04:amd64"]["versions"]["20240101"]["updated"]
    for _p, _v, _i, item in iter_items(doc):
        status, body = http_get(f"{app.url}/images/local/{item['path']}")
        assert status == 200 and body == first[Path(item["path"]).name]

    second = build_images(build)  # a new build: new bytes under the same names
    r = publish(cfg, build, products)
    assert r.returncode == 0, r.stderr
    new_version = json.loads(r.stdout)["version"]
    assert new_version > "20240101"
    doc = products_doc()
    versions = doc["products"]["org.example:server:24.04:amd64"]["versions"]
    assert set(versions) == {"20240101", new_version}
    assert versions["20240101"]["updated"] == stamp  # old versions keep their stamps
    got = {
        (v, Path(i["path"]).name): http_get(f"{app.url}/images/local/{i['path']}")[1]
        for _p, v, _i, i in iter_items(doc)
    }
    assert got[("20240101", "noble-arm64.img")] == first["noble-arm64.img"]
    assert got[(new_version, "noble-arm64.img")] == second["noble-arm64.img"]

    r = publish(cfg, build, products, "--version", "20240101")
    assert r.returncode == 1 and "already published" in r.stderr

    # the curated root feed includes the published images
    with Verifier(keyring) as v:
        index = json.loads(v.clearsigned(http_get(f"{app.url}/streams/v1/index.sjson")[1]))
    assert "org.example:built:download" in index["index"]

    # the reference client reads and mirrors the published feed
    r = reference("sstream-query", "--json", "--keyring", str(keyring), f"{app.url}/images/local/")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 6
    out = tmp_path / "mirror"
    r = reference("sstream-mirror", "--keyring", str(keyring), f"{app.url}/images/local/", str(out))
    assert r.returncode == 0, r.stderr
    assert len([p for p in (out / "org.example").rglob("*") if p.is_file()]) == 6


def test_publish_rejects_bad_input(setup: tuple[Path, Path, Path]) -> None:
    cfg, build, products = setup
    r = publish(cfg, build, products)  # the files do not exist
    assert r.returncode == 1 and "not a file" in r.stderr
    products.write_text("products: [not, a, mapping]\n")
    r = publish(cfg, build, products)
    assert r.returncode == 1 and "expected a mapping" in r.stderr
