"""Integrity beyond the transport: what the cached indexes say is what enters the cache.

With real apt-get against a signed repository, and with a hostile upstream serving
unsigned indexes it can change at will: republished packages, tampered indexes,
`verify`, expiry of what no index lists, a full disk, slow upstreams, greedy clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
import yaml

from tests.aptclient import AptClient
from tests.aptrepo import AptRepo
from tests.configs import write_config
from tests.conftest import StartAppliance
from tests.e2e.faults import aptindex
from tests.e2e.faults.conftest import fetch, fill, stored, tracebacks
from tests.hostile import (
    Conn,
    Hostile,
    Request,
    drip,
    head,
    no_length,
    other_bytes,
    slow,
)
from tests.upstream import Upstream


def _remap(url: str) -> dict[str, list[str]]:
    return {"debian": [f"{url}/debian"]}


def _same_size_other_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[:-100] + bytes(b ^ 0xFF for b in data[-100:])


# --- pool files against Packages, with the real apt-get ---------------------------------------


def test_a_republished_package_never_enters_the_cache(
    tmp_path: Path, apt_repo: AptRepo, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    app = start_appliance(_remap(upstream.url))
    apt = AptClient(tmp_path / "apt", f"{app.url}/debian", apt_repo.keyring, apt_repo.arch)
    r = apt.update()
    assert r.returncode == 0, r.stdout + r.stderr
    app.wait_indexes(3)
    hello = apt_repo.debs["al-hello"]
    original = hello.read_bytes()
    tampered = _same_size_other_bytes(hello)
    hello.write_bytes(tampered)  # the mirror republishes other bytes under the same name
    tools = apt_repo.debs["al-tools"]
    tools_original = tools.read_bytes()
    tools.write_bytes(tools_original + b"longer")  # and another one, of another size

    r = apt.download("al-hello")
    assert r.returncode != 0, "apt accepted a package that does not match its index"
    r = apt.download("al-tools")
    assert r.returncode != 0
    cached = stored(app.cache_dir)
    assert tampered not in cached.values() and tools_original + b"longer" not in cached.values()
    status = app.status()
    assert status["integrity"]["rejected_downloads"] >= 2
    assert any(u["last_error"] == "integrity" for u in status["upstreams"].values())

    hello.write_bytes(original)
    tools.write_bytes(tools_original)
    # a fresh client: the first one keeps the n-1 bytes it got as a partial file, and apt
    # resuming that with a Range fails its own check once (then apt deletes the partial)
    apt = AptClient(tmp_path / "apt2", f"{app.url}/debian", apt_repo.keyring, apt_repo.arch)
    assert apt.update().returncode == 0
    r = apt.download("al-hello", "al-tools")
    assert r.returncode == 0, r.stdout + r.stderr
    assert apt.archives["al-hello"] == original
    time.sleep(0.2)
    assert original in stored(app.cache_dir).values()
    assert tracebacks(app.log_text()) == []


# --- index files against the Release, and bodies only the index can vouch for -------------------


async def test_index_files_and_unframed_bodies_are_checked_against_the_cached_indexes(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    deb = os.urandom(300_000)
    files = aptindex.repo({"pool/main/a/a_1_all.deb": deb})
    hostile.files.update(files)
    app = start_appliance(_remap(hostile.url))
    assert (await fetch(f"{app.url}/debian/dists/test/InRelease")).status == 200
    app.wait_indexes(2)
    # Packages.xz under its plain name, tampered: the Release says otherwise
    xz = "/debian/dists/test/main/binary-amd64/Packages.xz"
    hostile.behave[xz] = other_bytes(b"\xfd7zXZ\x00" + os.urandom(len(files[xz]) - 6))
    bad = await fetch(f"{app.url}{xz}")
    assert bad.error is not None or bad.status == 502
    del hostile.behave[xz]
    good = await fetch(f"{app.url}{xz}")
    assert (good.status, good.body) == (200, files[xz]), (good.headers, good.error)
    app.wait_indexes(3)  # now Packages lists the .deb
    # no Content-Length: complete only if the index confirms it; cut -> error, not stored
    url = f"{app.url}/debian/pool/main/a/a_1_all.deb"
    hostile.behave["/debian/pool/main/a/a_1_all.deb"] = no_length(cut=100_000)
    cut = await fetch(url)
    assert cut.error is not None, "a cut body was presented as whole"
    assert not any(k.endswith("a_1_all.deb") for k in stored(app.cache_dir))
    hostile.behave["/debian/pool/main/a/a_1_all.deb"] = no_length()
    whole = await fetch(url)
    assert (whole.status, whole.body == deb, whole.headers["X-Cache"]) == (200, True, "MISS")
    await asyncio.sleep(0.2)
    hit = await fetch(url)
    assert (hit.headers["X-Cache"], hit.body == deb) == ("HIT", True)


async def test_encoded_answer_whose_raw_bytes_match_the_index_is_cached(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    """`Content-Encoding: gzip` on a file that is itself compressed (a common mirror setup)."""
    deb = os.urandom(50_000)
    hostile.files.update(aptindex.repo({"pool/main/g/g_1_all.deb": deb}))

    async def mislabelled(up: Hostile, req: Request, conn: Conn) -> None:
        await conn.send(head("200 OK", len(deb), Content_Encoding="gzip") + deb)

    hostile.behave["/debian/pool/main/g/g_1_all.deb"] = mislabelled
    app = start_appliance(_remap(hostile.url))
    await fetch(f"{app.url}/debian/dists/test/InRelease")
    await fetch(f"{app.url}{aptindex.by_hash_path(hostile.files)}")
    app.wait_indexes(3)
    a = await fetch(f"{app.url}/debian/pool/main/g/g_1_all.deb")
    assert (a.status, a.body == deb, a.headers["X-Cache"]) == (200, True, "MISS")
    assert "Content-Encoding" not in a.headers


# --- verify -----------------------------------------------------------------------------------


def test_verify_finds_and_fixes_rotten_entries(
    tmp_path: Path, apt_repo: AptRepo, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    app = start_appliance(_remap(upstream.url))
    apt = AptClient(tmp_path / "apt", f"{app.url}/debian", apt_repo.keyring, apt_repo.arch)
    assert apt.update().returncode == 0
    assert apt.download("al-tools").returncode == 0
    app.wait_indexes(3)
    time.sleep(0.2)
    r = app.cli("verify", "--json")
    report = json.loads(r.stdout)
    assert (r.returncode, report["bad"]) == (0, 0), r.stderr
    assert report["checked"] >= 4  # InRelease, Packages (by hash), al-tools, al-hello
    key = next(k for k in stored(app.cache_dir) if k.endswith(".deb") and "al-tools" in k)
    path = app.cache_dir / key
    path.write_bytes(_same_size_other_bytes(path))  # bit rot
    r = app.cli("verify")  # through the running service's admin API
    assert r.returncode == 3 and f"bad: {key}: sha256" in r.stdout, r.stdout + r.stderr
    assert re.search(r"verify: \d+ files \(\d+\.\d (KiB|MiB)\) checked", r.stdout), r.stdout  # IEC
    r = app.cli("verify", "--fix", "--json")
    report = json.loads(r.stdout)
    assert (r.returncode, report["bad"], report["removed"]) == (0, 1, 1), r.stderr
    assert not path.exists()
    before = upstream.count(".deb")
    fresh = AptClient(tmp_path / "apt2", f"{app.url}/debian", apt_repo.keyring, apt_repo.arch)
    assert fresh.update().returncode == 0
    r = fresh.download("al-tools")
    assert r.returncode == 0, r.stdout + r.stderr
    assert upstream.count(".deb") == before + 1  # fetched again, not served rotten
    app.stop()
    time.sleep(0.2)
    path.write_bytes(b"x" * path.stat().st_size)
    r = app.cli("verify", "--json")  # no service: on the cache directory itself
    assert r.returncode == 3 and json.loads(r.stdout)["bad"] == 1, r.stderr


# --- expiry -----------------------------------------------------------------------------------


async def test_expiry_removes_what_no_index_lists_after_the_grace_period(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    a1, b1, a2, c1 = (os.urandom(n) for n in (10_000, 20_000, 30_000, 5_000))
    v1 = aptindex.repo(
        {
            "pool/main/a/a_1_all.deb": a1,
            "pool/main/b/b_1_all.deb": b1,
            "pool/main/c/c_1_all.deb": c1,
        }
    )
    hostile.files.update(v1)
    app = start_appliance(_remap(hostile.url), index_ttl=0.5)

    async def update_and_get(files: dict[str, bytes], debs: list[str]) -> None:
        assert (await fetch(f"{app.url}/debian/dists/test/InRelease")).status == 200
        assert (await fetch(f"{app.url}{aptindex.by_hash_path(files)}")).status == 200
        for deb in debs:
            assert (await fetch(f"{app.url}/debian/{deb}")).status == 200

    await update_and_get(
        v1, ["pool/main/a/a_1_all.deb", "pool/main/b/b_1_all.deb", "pool/main/c/c_1_all.deb"]
    )
    await asyncio.sleep(0.2)
    kept = next(k for k in stored(app.cache_dir) if k.endswith("c_1_all.deb"))
    sidecar = (app.cache_dir / kept).parent / ".c_1_all.deb.meta"
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "keep": True}))  # as a mirrored file is: never expired
    # a new version of a; b unchanged
    v2 = aptindex.repo({"pool/main/a/a_2_all.deb": a2, "pool/main/b/b_1_all.deb": b1})  # no c
    hostile.files.update(v2)
    await asyncio.sleep(0.6)
    await update_and_get(v2, ["pool/main/a/a_2_all.deb"])
    app.wait_indexes(4)
    await asyncio.sleep(0.3)

    r = app.cli("expire", "--json")  # grace 3 days: noted, nothing removed
    report = json.loads(r.stdout)
    assert (report["expired"], report["waiting"]) == (0, 2), report
    app_files = set(stored(app.cache_dir))
    assert any(k.endswith("a_1_all.deb") for k in app_files)

    app.stop()
    cfg_data = yaml.safe_load(app.config.read_text())  # grace 0: what is unreferenced now goes
    cfg_data["cache"]["expire_after"] = 0
    write_config(app.config, cfg_data)
    r = app.cli("expire", "--dry-run", "--json")
    dry = json.loads(r.stdout)
    assert dry["expired"] == 2 and set(stored(app.cache_dir)) == app_files
    gone = {k.rsplit("/", 1)[-1] for k in dry["removed"]}
    assert "a_1_all.deb" in gone and len(gone) == 2  # and the old by-hash Packages.xz
    r = app.cli("expire")
    assert r.returncode == 0 and "removed 2 files" in r.stdout, r.stdout + r.stderr
    left = {k.rsplit("/", 1)[-1] for k in stored(app.cache_dir)}
    assert {"a_2_all.deb", "b_1_all.deb", "c_1_all.deb", "InRelease"} <= left
    assert "a_1_all.deb" not in left


# --- a full disk, with nothing to evict --------------------------------------------------------


async def test_full_disk_serves_hits_and_passes_misses_through(
    hostile: Hostile, start_appliance: StartAppliance, small_disk: Path
) -> None:
    old, new = os.urandom(300_000), os.urandom(500_000)
    hostile.files.update({"/debian/pool/old.deb": old, "/debian/pool/new.deb": new})
    app = start_appliance(
        _remap(hostile.url),
        cache_dir=small_disk / "cache",
        extra={"cache": {"dir": str(small_disk / "cache"), "max_size": "1GiB", "min_free": 0}},
    )
    assert (await fetch(f"{app.url}/debian/pool/old.deb")).body == old
    await asyncio.sleep(0.2)
    fill(small_disk)
    miss = await fetch(f"{app.url}/debian/pool/new.deb")
    assert (miss.status, miss.body == new) == (200, True)
    assert miss.headers["X-Cache"] == "PASS"
    assert miss.headers["X-Archive-Local-Not-Stored"] == "disk-full"
    hit = await fetch(f"{app.url}/debian/pool/old.deb")
    assert (hit.headers["X-Cache"], hit.body == old) == ("HIT", True)
    assert app.status()["integrity"]["not_stored"]["disk-full"] >= 1
    metrics = (await fetch(f"{app.url}/metrics")).body.decode()
    assert 'archive_local_not_stored_responses_total{reason="disk-full"} 1.0' in metrics
    page = (await fetch(f"{app.url}/", {"Accept": "text/html"})).body.decode()
    assert "answers passed through, not stored</td><td>disk-full 1" in page
    # counted as a miss served from upstream, not as a hit
    assert app.status()["requests"]["apt"]["miss"] == 2
    assert tracebacks(app.log_text()) == []


# --- slow upstreams ---------------------------------------------------------------------------


async def test_a_dripping_upstream_is_cut_at_the_minimum_rate(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    data = os.urandom(200_000)
    hostile.files["/debian/pool/drip.deb"] = data
    hostile.behave["/debian/pool/drip.deb"] = drip(0.05, 50)  # ~1 KB/s, each read in time
    app = start_appliance(
        _remap(hostile.url), extra={"upstream": {"min_rate": "20KiB", "rate_window": "2s"}}
    )
    started = time.monotonic()
    a = await fetch(f"{app.url}/debian/pool/drip.deb")
    took = time.monotonic() - started
    assert a.error is not None and took < 8, (a.status, took)
    assert stored(app.cache_dir) == {}
    assert "upstream too slow" in app.log_text()


async def test_the_transfer_deadline_bounds_a_slow_upstream(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    data = os.urandom(2_000_000)
    hostile.files["/debian/pool/slow.deb"] = data
    hostile.behave["/debian/pool/slow.deb"] = slow(200_000)  # 10 s
    app = start_appliance(_remap(hostile.url), extra={"upstream": {"deadline": "2s"}})
    started = time.monotonic()
    a = await fetch(f"{app.url}/debian/pool/slow.deb")
    assert a.error is not None and time.monotonic() - started < 6
    assert "upstream.deadline" in app.log_text()


# --- a client that opens too many connections ----------------------------------------------------


def test_connections_per_client_are_capped(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    hostile.files["/debian/pool/c.deb"] = b"capped"
    app = start_appliance(_remap(hostile.url), extra={"limits": {"connections_per_client": 10}})
    time.sleep(0.3)  # the start-up probe's connection is gone
    idle = [socket.create_connection(("127.0.0.1", app.port), 5) for _ in range(10)]
    try:
        with socket.create_connection(("127.0.0.1", app.port), 5) as extra:
            extra.sendall(b"GET /debian/pool/c.deb HTTP/1.1\r\nHost: a\r\n\r\n")
            extra.settimeout(5)
            assert extra.recv(4096).startswith(b"HTTP/1.1 503")
    finally:
        for s in idle[:5]:
            s.close()
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", app.port), 5) as ok:
        ok.sendall(b"GET /debian/pool/c.deb HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        ok.settimeout(5)
        answer = b""
        while chunk := ok.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"capped")
    for s in idle[5:]:
        s.close()
    assert app.status()["integrity"]["connections_refused"] == 1


@pytest.mark.parametrize("digest_kind", ["sha256"])
def test_index_parser_reads_real_compressed_indexes(digest_kind: str, apt_repo: AptRepo) -> None:
    """The parser against apt-ftparchive's own Packages.xz and Release (no service)."""
    from appliance.apt.indexes import open_text, package_files, release_files, stanzas

    binary = apt_repo.root / "dists/test/main" / f"binary-{apt_repo.arch}"
    with open(binary / "Packages.xz", "rb") as fh:
        listed = {i.path: i for i in package_files(stanzas(open_text(fh)))}
    for deb in apt_repo.debs.values():
        rel = str(deb.relative_to(apt_repo.root))
        assert listed[rel].size == deb.stat().st_size
        assert listed[rel].digest == hashlib.sha256(deb.read_bytes()).hexdigest()
    with open(apt_repo.inrelease, "rb") as fh:
        rel_files, by_hash = release_files(open_text(fh))
    assert by_hash
    names = {i.path: i for i in rel_files}
    xz = (binary / "Packages.xz").read_bytes()
    entry = names[f"main/binary-{apt_repo.arch}/Packages.xz"]
    assert (entry.size, entry.algorithm, entry.digest) == (
        len(xz),
        digest_kind,
        hashlib.sha256(xz).hexdigest(),
    )
