"""LXD (Debian's `lxc` client, no daemon needed for remote images) reading the appliance
over HTTPS as a simplestreams image server: upstream's feed passed through (items read
through the cache on first use, verified), the appliance's curated feed (only what it
holds) and a locally published build. LXD's listing is silently lenient (a malformed
product is just missing), so the tests look for the expected fingerprints and aliases,
and `lxc image export` is the strong check: LXD verifies each file's sha256 and the
image's combined fingerprint itself."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    Appliance,
    StartAppliance,
    free_port,
    http_get,
    require,
    serving,
    signed_feed,
)
from tests.feed import RELEASES, SERIALS, Feed
from tests.upstream import Upstream

NAME = "ex"


@pytest.fixture
def lxd_feed(tmp_path: Path) -> Iterator[Feed]:
    with signed_feed(tmp_path, item_size=4096, serials=SERIALS[1:], lxd=True) as f:
        yield f


@pytest.fixture
def lxd_served(lxd_feed: Feed) -> Iterator[Upstream]:
    with serving(lxd_feed) as server:
        yield server


class Lxc:
    """The `lxc` CLI with a configuration of its own (`LXD_CONF`)."""

    def __init__(self, home: Path) -> None:
        require("lxc", "lxd-client")
        self.conf = home / "lxd-conf"
        (self.conf / "servercerts").mkdir(parents=True)
        self.env = {**os.environ, "LXD_CONF": str(self.conf), "HOME": str(home)}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["lxc", *args], env=self.env, capture_output=True, text=True, timeout=120
        )

    def remote(self, name: str, url: str, pem: bytes) -> None:
        """`lxc remote add` with the appliance's certificate pinned for it."""
        r = self("remote", "add", name, url, "--protocol", "simplestreams", "--public")
        assert r.returncode == 0, r.stderr
        (self.conf / "servercerts" / f"{name}.crt").write_bytes(pem)

    def images(self, remote: str) -> dict[str, list[str]]:
        """fingerprint -> aliases, as `lxc image list` shows them."""
        r = self("image", "list", f"{remote}:", "--format", "json")
        assert r.returncode == 0, r.stderr
        return {
            i["fingerprint"]: sorted(a["name"] for a in i["aliases"] or [])
            for i in json.loads(r.stdout)
        }


def _fingerprints(
    feed: Feed, releases: tuple[str, ...], arches: tuple[str, ...]
) -> dict[str, tuple[str, str, str]]:
    """The combined sha256 (LXD's fingerprint) of each image -> (release, arch, serial)."""
    out = {}
    for release in releases:
        for arch in arches:
            for serial in SERIALS[1:]:
                base = _base(release, arch, serial)
                combined = hashlib.sha256(
                    feed.files[f"{base}.lxd.tar.xz"] + feed.files[f"{base}.squashfs"]
                ).hexdigest()
                out[combined] = (release, arch, serial)
    return out


def _appliance(
    start: StartAppliance,
    feed: Feed,
    served: Upstream,
    filters: list[str],
    max_items: int = 2,
    synced: int = 0,
) -> tuple[Appliance, int, bytes]:
    """An appliance with `feed` configured and synced (`synced`: the sync's exit status),
    and its HTTPS port and certificate."""
    port = free_port()
    app = start(
        {},
        images={
            "feeds": [
                {
                    "name": NAME,
                    "url": f"{served.url}/",
                    "keyring": str(feed.key.keyring),
                    "filters": filters,
                    "max_items": max_items,
                }
            ]
        },
        extra={"tls": {"listen": f"127.0.0.1:{port}"}},
    )
    r = app.cli("sync")
    assert r.returncode == synced, r.stderr
    code, pem = http_get(app.url + "/keys/archive-local-tls.pem")
    assert code == 200
    return app, port, pem


def _item_gets(served: Upstream, suffix: str) -> int:
    return sum(1 for r in served.requests if r.method == "GET" and r.path.endswith(suffix))


def test_lxd_lists_and_exports_the_passed_through_feed(
    start_appliance: StartAppliance, lxd_feed: Feed, lxd_served: Upstream, tmp_path: Path
) -> None:
    # only manifests are mirrored: LXD's items come through the cache on first use
    app, port, pem = _appliance(
        start_appliance, lxd_feed, lxd_served, ["arch=amd64", "ftype=manifest"]
    )
    lxc = Lxc(tmp_path)
    lxc.remote("up", f"https://127.0.0.1:{port}/images/{NAME}", pem)
    listed = lxc.images("up")
    want = _fingerprints(lxd_feed, tuple(RELEASES), ("amd64", "arm64"))
    assert set(listed) == set(want)  # every version of every product
    noble = _latest(want, "noble", "amd64")
    assert {"noble", "24.04", "noble/amd64"} <= set(listed[noble])
    assert "noble/arm64" in listed[_latest(want, "noble", "arm64")]
    info = lxc("image", "info", "up:noble")
    assert info.returncode == 0 and f"Fingerprint: {noble}" in info.stdout, info
    before = (_item_gets(lxd_served, ".lxd.tar.xz"), _item_gets(lxd_served, ".squashfs"))
    _export(lxc, "up:noble", tmp_path / "first", lxd_feed, "noble", "amd64")
    assert (_item_gets(lxd_served, ".lxd.tar.xz"), _item_gets(lxd_served, ".squashfs")) == (
        before[0] + 1,
        before[1] + 1,
    )  # one upstream GET per file
    _export(lxc, "up:noble", tmp_path / "again", lxd_feed, "noble", "amd64")
    assert _item_gets(lxd_served, ".squashfs") == before[1] + 1  # the second: from disk
    # a tampered upstream item: LXD never gets a complete wrong file, nothing is cached
    jammy = _base("jammy", "amd64")
    (lxd_feed.root / f"{jammy}.squashfs").write_bytes(os.urandom(200_000))
    (tmp_path / "bad").mkdir()
    bad = lxc("image", "export", "up:jammy", str(tmp_path / "bad") + "/")
    assert bad.returncode != 0, bad
    cached = [p for p in app.cache_dir.rglob("*.squashfs") if "jammy" in str(p)]
    assert cached == []
    assert app.status()["integrity"]["rejected_downloads"] >= 1


def _base(release: str, arch: str, serial: str = SERIALS[-1]) -> str:
    version = RELEASES[release]
    return f"server/releases/{release}/release-{serial}/ubuntu-{version}-server-cloudimg-{arch}"


def _latest(want: dict[str, tuple[str, str, str]], release: str, arch: str) -> str:
    return next(f for f, v in want.items() if v == (release, arch, SERIALS[-1]))


def _export(lxc: Lxc, alias: str, out: Path, feed: Feed, release: str, arch: str) -> None:
    """`lxc image export`: LXD checks every file and the fingerprint; so do we."""
    out.mkdir()
    r = lxc("image", "export", alias, str(out) + "/")
    assert r.returncode == 0, r.stderr
    got = {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    base = _base(release, arch)
    assert got == {
        hashlib.sha256(feed.files[f"{base}.lxd.tar.xz"]).hexdigest(),
        hashlib.sha256(feed.files[f"{base}.squashfs"]).hexdigest(),
    }


def test_lxd_lists_exactly_what_the_curated_feed_holds(
    start_appliance: StartAppliance, lxd_feed: Feed, lxd_served: Upstream, tmp_path: Path
) -> None:
    """Mirrored: noble's latest amd64 image whole, and jammy's metadata without its root
    file (not launchable without upstream: not listed)."""
    jammy = _base("jammy", "amd64")
    (lxd_feed.root / f"{jammy}.squashfs").unlink()  # upstream lost it: not mirrored
    app, port, pem = _appliance(
        start_appliance,
        lxd_feed,
        lxd_served,
        ["arch=amd64", "release~^(noble|jammy)$", "ftype~^(lxd.tar.xz|squashfs)$"],
        max_items=1,
        synced=1,  # that item failed, the rest is there
    )
    lxc = Lxc(tmp_path)
    lxc.remote("mine", f"https://127.0.0.1:{port}", pem)
    want = _fingerprints(lxd_feed, ("noble",), ("amd64",))
    noble = _latest(want, "noble", "amd64")
    listed = lxc.images("mine")
    assert list(listed) == [noble]
    assert {"noble", "24.04"} <= set(listed[noble])
    gets = len(lxd_served.requests)
    _export(lxc, "mine:noble", tmp_path / "out", lxd_feed, "noble", "amd64")
    assert len(lxd_served.requests) == gets  # all from the appliance's disk
    # the curated document itself lists no part of jammy's image (simplestreams clients
    # other than LXD would otherwise see an image that cannot be had from here)
    index = json.loads(http_get(f"{app.url}/streams/v1/index.json")[1])
    paths = [e["path"] for e in index["index"].values()]
    docs = [http_get(f"{app.url}/{p}")[1].decode() for p in paths]
    assert any("noble" in d for d in docs) and not any("jammy" in d for d in docs)


def test_a_published_local_lxd_build_is_launchable(
    start_appliance: StartAppliance, lxd_feed: Feed, lxd_served: Upstream, tmp_path: Path
) -> None:
    """A directory as distrobuilder writes it (`lxd.tar.xz`, `rootfs.squashfs`) published
    with `archive-local publish`: LXD lists it with its alias and exports it, the combined
    fingerprint checking out."""
    app, port, pem = _appliance(start_appliance, lxd_feed, lxd_served, ["ftype=manifest"])
    build = tmp_path / "build"
    build.mkdir()
    meta, root = os.urandom(5000), os.urandom(300_000)
    (build / "lxd.tar.xz").write_bytes(meta)
    (build / "rootfs.squashfs").write_bytes(root)
    products = tmp_path / "products.yaml"
    products.write_text(
        yaml.safe_dump(
            {
                "content_id": "org.example:built:download",
                "products": {
                    "org.example:mybox:1:amd64": {
                        "properties": {
                            "arch": "amd64",
                            "os": "mybox",
                            "release": "one",
                            "release_title": "One",
                            "aliases": "mybox,mybox/one",
                        },
                        "items": {
                            "lxd.tar.xz": {"file": "lxd.tar.xz"},
                            "squashfs": {"file": "rootfs.squashfs"},
                        },
                    }
                },
            }
        )
    )
    r = app.cli("publish", str(build), "--products", str(products), "--name", "built")
    assert r.returncode == 0, r.stderr
    lxc = Lxc(tmp_path)
    lxc.remote("mine", f"https://127.0.0.1:{port}", pem)
    fingerprint = hashlib.sha256(meta + root).hexdigest()
    listed = lxc.images("mine")
    assert {"mybox", "mybox/one"} <= set(listed.get(fingerprint, [])), listed
    out = tmp_path / "out"
    out.mkdir()
    r = lxc("image", "export", "mine:mybox", str(out) + "/")
    assert r.returncode == 0, r.stderr
    got = {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert got == {hashlib.sha256(meta).hexdigest(), hashlib.sha256(root).hexdigest()}
    lxc.remote("built", f"https://127.0.0.1:{port}/images/built", pem)  # also on its own
    assert fingerprint in lxc.images("built")
