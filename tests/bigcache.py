"""A cache directory the size an appliance reaches after months: many cached apt files
over several remaps and suites, and a published feed of many images. Written straight into
the store's layout (data file plus sidecar, as `FilesystemStore.commit` leaves them, without
its two fsyncs a file), so building 10,000 entries takes seconds; the images go through the
real `archive-local publish`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from appliance import config as configuration
from appliance.cache.keys import UpstreamBase
from appliance.cache.store import FilesystemStore, Meta
from appliance.commands.status import DIRECT  # the service, never through http_proxy

SUITES = ("bookworm", "trixie", "noble", "jammy")
ARCHES = ("amd64", "arm64")


def fill_apt(cache_dir: Path, upstreams: dict[str, str], entries: int) -> int:
    """`entries` cached pool files spread over the remaps' upstreams (name -> URL) and
    suites; returns their bytes."""
    store = FilesystemStore(cache_dir)
    names = list(upstreams.values())
    now = time.time()
    total = 0
    for i in range(entries):
        base = UpstreamBase.parse(names[i % len(names)])
        suite, arch = SUITES[i % len(SUITES)], ARCHES[i % len(ARCHES)]
        name = f"package-{i:05d}-with-a-longer-name_{i}.0-1+{suite}1_{arch}.deb"
        rest = ("pool", "main", name[:1] if i % 7 else "libp", f"package-{i:05d}", name)
        key = base.key(rest)
        data = b"x" * (100 + i % 1000)
        path = store.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        meta = Meta(
            url=base.url(rest), size=len(data), fetched=now - i, checked=now - i, shared=True
        )
        path.with_name(f".{path.name}.meta").write_text(json.dumps(meta.to_dict()))
        total += len(data)
    return total


def publish_images(config: Path, work: Path, images: int) -> None:
    """`images` products of one version each, published as the feed `local`."""
    build = work / "build"
    build.mkdir(parents=True, exist_ok=True)
    products = {}
    for i in range(images):
        name = f"img-{i:03d}.img"
        (build / name).write_bytes(os.urandom(512))
        arch = ARCHES[i % 2]
        products[f"org.example:server:{i // 2:03d}:{arch}"] = {
            "properties": {"os": "ubuntu", "release": f"r{i // 2:03d}", "arch": arch},
            "items": {"disk1.img": {"file": name, "ftype": "disk1.img"}},
        }
    spec = work / "products.yaml"
    spec.write_text(
        yaml.safe_dump({"content_id": "org.example:big:download", "products": products})
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "--config",
            str(config),
            "publish",
            str(build),
            "--products",
            str(spec),
            "--version",
            "20261207",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr


def configured_workers(config: Path) -> int:
    """How many worker processes the service of `config` runs (`auto` resolved)."""
    return configuration.load(config).workers


def all_workers_status(url: str, config: Path, timeout: float = 60) -> dict:
    """`/api/status` once every worker answers it (a worker still reading a big cache at
    its start is left out of the merged figures until then)."""
    expected = configured_workers(config)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with DIRECT.open(f"{url}/api/status", timeout=30) as r:
                doc = json.loads(r.read())
            if doc.get("workers", 1) == expected:
                return doc
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every one of {expected} workers answered in {timeout} s")
        time.sleep(0.1)


def unreachable_targets(work: Path, feed: str = "local") -> list[dict]:
    """Three places to seed `feed` into (a Glance region and two EC2 regions) where nothing
    answers: every image is pending in each, the images x clouds matrix as wide as an
    operator's."""
    token = work / "glance-token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    return [
        {
            "name": "region-one",
            "type": "glance",
            "auth": {"endpoint": "http://127.0.0.1:9", "token_file": str(token)},
            "feeds": [feed],
        },
        {
            "name": "euca",
            "type": "ec2",
            "ec2_endpoint": "http://127.0.0.1:9/",
            "s3_endpoint": "http://127.0.0.1:9/s3",
            "regions": ["us-east-1", "eu-west-1"],
            "feeds": [feed],
        },
    ]
