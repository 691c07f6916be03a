"""Cache engine behaviour seen from clients: single flight, aborts, freshness, eviction."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import StartAppliance, require, upstream_file
from tests.upstream import Upstream


def _entries(cache_dir: Path) -> list[str]:
    """Files of the cache (its own state, the apt index table, aside)."""
    return sorted(
        str(p.relative_to(cache_dir))
        for p in cache_dir.rglob("*")
        if p.is_file() and p.relative_to(cache_dir).parts[0] != ".state"
    )


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or {}) as r:
        return r.status, dict(r.headers), await r.read()


async def test_concurrent_clients_share_one_upstream_fetch(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    data = upstream_file(upstream_root, "/debian/pool/big.deb", 6 * 1024 * 1024)
    upstream.rate["/debian/pool/big.deb"] = 4 * 1024 * 1024  # ~1.5 s for the whole file
    app = start_appliance({"debian": [f"{upstream.url}/debian"]})
    url = f"{app.url}/debian/pool/big.deb"

    async def client(session: aiohttp.ClientSession) -> tuple[float, bytes]:
        async with session.get(url) as r:
            assert r.status == 200
            first = await r.content.readexactly(1)
            first_at = time.monotonic()
            return first_at, first + await r.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(client(session) for _ in range(20)))

    assert upstream.count("big.deb") == 1
    digest = hashlib.sha256(data).digest()
    assert all(hashlib.sha256(body).digest() == digest for _, body in results)
    upstream_done = upstream.finished_at["/debian/pool/big.deb"]
    assert all(first_at < upstream_done for first_at, _ in results), "a client waited for the end"
    assert _entries(app.cache_dir) == [
        f"127.0.0.1:{upstream.port}/debian/pool/.big.deb.meta",
        f"127.0.0.1:{upstream.port}/debian/pool/big.deb",
    ]


async def test_upstream_drop_mid_file_is_never_cached(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    data = upstream_file(upstream_root, "/debian/pool/cut.deb", 2 * 1024 * 1024)
    upstream.drop_after["/debian/pool/cut.deb"] = 700_000
    app = start_appliance({"debian": [f"{upstream.url}/debian"]})
    url = f"{app.url}/debian/pool/cut.deb"

    async def attempt() -> Exception | None:
        try:
            await _get(url)
        except aiohttp.ClientError as exc:
            return exc
        return None

    errors = await asyncio.gather(attempt(), attempt())
    assert all(isinstance(e, aiohttp.ClientPayloadError) for e in errors), errors
    await asyncio.sleep(0.2)
    assert _entries(app.cache_dir) == []  # no entry, no partial file left behind

    del upstream.drop_after["/debian/pool/cut.deb"]
    status, headers, body = await _get(url)
    assert (status, body == data) == (200, True)
    assert upstream.count("cut.deb") == 2
    await asyncio.sleep(0.2)  # let the commit land
    status, headers, body = await _get(url)
    assert headers["X-Cache"] == "HIT" and body == data
    assert upstream.count("cut.deb") == 2


async def test_corrupt_by_hash_file_is_rejected(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    d = upstream_root / "debian/dists/x/main/binary-all/by-hash/SHA256"
    d.mkdir(parents=True)
    good = b"Package: a\n"
    (d / hashlib.sha256(good).hexdigest()).write_bytes(good)
    wrong_name = hashlib.sha256(b"other").hexdigest()
    (d / wrong_name).write_bytes(b"tampered bytes\n")
    app = start_appliance({"debian": [f"{upstream.url}/debian"]})
    base = f"{app.url}/debian/dists/x/main/binary-all/by-hash/SHA256"

    with pytest.raises(aiohttp.ClientPayloadError):
        await _get(f"{base}/{wrong_name}")
    status, _, body = await _get(f"{base}/{hashlib.sha256(good).hexdigest()}")
    assert (status, body) == (200, good)
    assert not any(wrong_name in e for e in _entries(app.cache_dir))


async def test_pool_file_never_revalidated(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    (upstream_root / "debian/pool").mkdir(parents=True)
    (upstream_root / "debian/pool/a_1_all.deb").write_bytes(b"deb")
    app = start_appliance({"debian": [f"{upstream.url}/debian"]}, index_ttl=0)
    for _ in range(3):
        assert (await _get(f"{app.url}/debian/pool/a_1_all.deb"))[2] == b"deb"
    assert upstream.count(".deb") == 1


async def test_mirrors_tried_in_order(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    (upstream_root / "debian/pool").mkdir(parents=True)
    (upstream_root / "debian/pool/a.deb").write_bytes(b"from the second mirror")
    with socket.socket() as dead:  # a port nobody listens on
        dead.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/debian"
    app = start_appliance({"debian": [dead_url, f"{upstream.url}/debian"]})
    status, _, body = await _get(f"{app.url}/debian/pool/a.deb")
    assert (status, body) == (200, b"from the second mirror")
    status, _, _ = await _get(f"{app.url}/debian/pool/missing.deb")
    assert status == 404


async def test_lru_eviction_spares_files_being_served(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    pool = upstream_root / "debian/pool"
    pool.mkdir(parents=True)
    blobs = {n: os.urandom(8 * 1024 * 1024) for n in ("a", "b", "c", "d")}
    for n, data in blobs.items():
        (pool / f"{n}.deb").write_bytes(data)
    app = start_appliance({"debian": [f"{upstream.url}/debian"]}, max_size="20MiB")
    cached = app.cache_dir / f"127.0.0.1:{upstream.port}/debian/pool"

    await _get(f"{app.url}/debian/pool/a.deb")
    # a stalled client reading a.deb: the server cannot finish sending it
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.connect(("127.0.0.1", app.port))
    sock.sendall(b"GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.3)
    await _get(f"{app.url}/debian/pool/b.deb")
    await _get(f"{app.url}/debian/pool/c.deb")  # 24 MiB > 20 MiB: someone must go
    await asyncio.sleep(0.3)
    assert (cached / "a.deb").exists(), "evicted a file that was being served"
    assert not (cached / "b.deb").exists()  # oldest unpinned entry

    received = b""
    sock.settimeout(10)
    while not received.endswith(blobs["a"][-1000:]):
        chunk = await asyncio.to_thread(sock.recv, 1 << 20)
        assert chunk
        received += chunk
    sock.close()
    assert received.split(b"\r\n\r\n", 1)[1] == blobs["a"]

    await asyncio.sleep(0.2)
    await _get(f"{app.url}/debian/pool/d.deb")  # now a.deb is the oldest and free
    await asyncio.sleep(0.3)
    assert not (cached / "a.deb").exists()
    assert (cached / "c.deb").exists() and (cached / "d.deb").exists()


async def test_startup_sweeps_leftovers(
    tmp_path: Path, upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    cache = tmp_path / "cache"
    d = cache / f"127.0.0.1:{upstream.port}/debian/pool"
    d.mkdir(parents=True)
    (d / ".x.deb.part-abc123").write_bytes(b"half")
    (d / "orphan.deb").write_bytes(b"no metadata: cannot be trusted")
    (upstream_root / "debian/pool").mkdir(parents=True)
    (upstream_root / "debian/pool/orphan.deb").write_bytes(b"real")
    app = start_appliance({"debian": [f"{upstream.url}/debian"]}, cache_dir=cache)
    assert _entries(cache) == []
    assert (await _get(f"{app.url}/debian/pool/orphan.deb"))[2] == b"real"


async def test_upstream_asked_for_identity_encoding(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    """A gzip-encoded answer would be cached and served as if it were the file itself."""
    (upstream_root / "debian/dists/s").mkdir(parents=True)
    (upstream_root / "debian/dists/s/Release").write_text("Origin: x\n" * 100)
    app = start_appliance({"debian": [f"{upstream.url}/debian"]})
    _, _headers, body = await _get(f"{app.url}/debian/dists/s/Release")
    assert body == b"Origin: x\n" * 100
    assert upstream.requests[-1].headers.get("Accept-Encoding") == "identity"


async def test_https_upstream(tmp_path: Path, start_appliance: StartAppliance) -> None:
    """A remap whose mirror is https:// is fetched over TLS (certificate verified) and cached."""
    require("openssl", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    root = tmp_path / "tls-root"
    (root / "debian/pool").mkdir(parents=True)
    (root / "debian/pool/secure.deb").write_bytes(b"over TLS")
    server = Upstream(root, ssl_context=ctx).start()
    try:
        app = start_appliance(
            {"secure": [f"{server.url}/debian"]}, env={"SSL_CERT_FILE": str(cert)}
        )
        status, _headers, body = await _get(f"{app.url}/secure/pool/secure.deb")
        assert (status, body) == (200, b"over TLS")
        untrusted = start_appliance(
            {"secure": [f"{server.url}/debian"]}, env={"SSL_CERT_FILE": "/nonexistent"}
        )
        status, _, _ = await _get(f"{untrusted.url}/secure/pool/secure.deb")
        assert status == 502  # an unverifiable certificate is an upstream failure
    finally:
        server.close()


async def test_stalled_upstream_hits_the_read_timeout(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    """An upstream that goes silent mid-body fails the transfer after upstream.read_timeout."""
    data = upstream_file(upstream_root, "/debian/pool/stall.deb", 1024 * 1024)
    upstream.stall_after["/debian/pool/stall.deb"] = 300_000
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]}, extra={"upstream": {"read_timeout": 1}}
    )
    started = time.monotonic()
    with pytest.raises(aiohttp.ClientPayloadError):
        await _get(f"{app.url}/debian/pool/stall.deb")
    assert time.monotonic() - started < 10
    await asyncio.sleep(0.2)
    assert _entries(app.cache_dir) == []
    del upstream.stall_after["/debian/pool/stall.deb"]
    assert (await _get(f"{app.url}/debian/pool/stall.deb"))[2] == data
