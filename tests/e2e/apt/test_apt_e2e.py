"""The real apt-get through the proxy, against a real signed repository on 127.0.0.1."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from tests.aptclient import AptClient
from tests.aptrepo import AptRepo
from tests.conftest import StartAppliance
from tests.upstream import Upstream

PACKAGES = ("al-large", "al-tools")


def _client(home: Path, mode: str, repo: AptRepo, upstream: Upstream, port: int) -> AptClient:
    if mode == "forward":
        return AptClient(
            home,
            f"{upstream.url}/debian",
            repo.keyring,
            repo.arch,
            proxy=f"http://127.0.0.1:{port}",
        )
    return AptClient(home, f"http://127.0.0.1:{port}/debian", repo.keyring, repo.arch)


def _expected(repo: AptRepo) -> dict[str, bytes]:
    return {name: p.read_bytes() for name, p in repo.debs.items()}


@pytest.mark.parametrize("mode", ["forward", "remap"])
def test_apt_update_and_download_twice(
    mode: str,
    tmp_path: Path,
    apt_repo: AptRepo,
    upstream: Upstream,
    start_appliance: StartAppliance,
) -> None:
    app = start_appliance({"debian": [f"{upstream.url}/debian"]})
    expected = _expected(apt_repo)

    first = _client(tmp_path / "c1", mode, apt_repo, upstream, app.port)
    r = first.update()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "W:" not in r.stdout + r.stderr, r.stdout + r.stderr  # signature checked, no warning
    r = first.download(*PACKAGES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert first.archives == expected  # al-large, al-tools and their dependency al-hello
    debs_fetched = upstream.count(".deb")
    assert debs_fetched == 3

    second = _client(tmp_path / "c2", mode, apt_repo, upstream, app.port)
    assert second.update().returncode == 0
    r = second.download(*PACKAGES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert upstream.count(".deb") == debs_fetched, "second client hit upstream for a .deb"
    assert second.archives == first.archives


def test_forward_and_remap_share_the_cache(
    tmp_path: Path, apt_repo: AptRepo, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    app = start_appliance({"debian": [f"{upstream.url}/debian"]})
    fwd = _client(tmp_path / "f", "forward", apt_repo, upstream, app.port)
    assert fwd.update().returncode == 0
    assert fwd.download("al-hello").returncode == 0
    remap = _client(tmp_path / "r", "remap", apt_repo, upstream, app.port)
    assert remap.update().returncode == 0
    assert remap.download("al-hello").returncode == 0
    assert upstream.count(".deb") == 1


def test_upstream_down_update_uses_cached_indexes(
    tmp_path: Path, apt_repo: AptRepo, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    app = start_appliance({"debian": [f"{upstream.url}/debian"]}, index_ttl=0)
    warm = _client(tmp_path / "warm", "remap", apt_repo, upstream, app.port)
    assert warm.update().returncode == 0
    assert warm.download("al-tools").returncode == 0
    upstream.stop()

    cold = _client(tmp_path / "cold", "remap", apt_repo, upstream, app.port)
    r = cold.update()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Err:" not in r.stdout, r.stdout
    r = cold.download("al-tools")
    assert r.returncode == 0, r.stdout + r.stderr
    assert cold.archives == warm.archives

    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    conn.request("GET", "/debian/dists/test/InRelease")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read() == apt_repo.inrelease.read_bytes()
    assert resp.getheader("X-Cache") == "STALE"
    assert "upstream unreachable" in (resp.getheader("X-Archive-Local-Offline") or "")
    assert "offline: serving cached" in app.log_text()
