"""The defects a hostile upstream exposed (issue 10), each reproduced as it was found.

Every test here failed on the commit before the fixes (459aeae): run against that
tree, they show the double-closed descriptor, the poisoned pooled connection, the
redirect to an unconfigured host, the truncated feed document, the cut body cached
as whole, the 500 on a full disk, the 500 on a long Range, and the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.configs import write_config
from tests.conftest import StartAppliance, http_get, run_sync
from tests.e2e.faults.conftest import (
    SCALE,
    fetch,
    fill,
    leftovers,
    peak_rss_mb,
    report,
    stored,
    tracebacks,
)
from tests.feed import Feed
from tests.hostile import (
    Canary,
    Hostile,
    gzip_encoded,
    listing,
    no_length,
    redirect,
    slow,
    stray,
)
from tests.upstream import Upstream


def _remap(up: Hostile) -> dict[str, list[str]]:
    return {"debian": [f"{up.url}/debian"]}


# --- 1. a descriptor closed twice when a commit fails -------------------------------------


async def test_failed_commits_under_load_never_cut_or_cross_other_transfers(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    """`dists/tN` committed after `dists/tN/InRelease` made it a directory (EISDIR), 400
    times, while 12 clients download other files: every answer is whole and right."""
    clients, per_client, triggers = 12, 30 * SCALE, 400 * SCALE
    files = {
        f"/debian/pool/c{c}-{j}.deb": os.urandom(random.randint(20_000, 200_000))
        for c in range(clients)
        for j in range(per_client)
    }
    for t in range(triggers):
        files[f"/debian/dists/t{t}"] = os.urandom(40_000)
        files[f"/debian/dists/t{t}/InRelease"] = os.urandom(2_000)
        hostile.behave[f"/debian/dists/t{t}"] = slow(200_000)  # still running at the commit
    hostile.files.update(files)
    app = start_appliance(_remap(hostile))
    wrong: list[str] = []
    cut: list[str] = []
    server_errors: list[str] = []

    async def check(session: aiohttp.ClientSession, path: str, pool: bool) -> None:
        a = await fetch(f"{app.url}{path}", session=session)
        if a.status >= 500:
            server_errors.append(f"{path}: {a.status}")
        elif a.error is not None or a.status != 200:
            if pool:
                cut.append(f"{path}: {a.status} {a.error}")
        elif a.body != files[path]:
            wrong.append(path)

    async def pool_client(c: int) -> None:
        async with aiohttp.ClientSession() as s:
            for j in range(per_client):
                await check(s, f"/debian/pool/c{c}-{j}.deb", True)

    async def trigger(t: int, sem: asyncio.Semaphore) -> None:
        async with sem, aiohttp.ClientSession() as s:
            await asyncio.gather(
                check(s, f"/debian/dists/t{t}", False),
                check(s, f"/debian/dists/t{t}/InRelease", False),
            )

    sem = asyncio.Semaphore(8)
    await asyncio.gather(
        *(pool_client(c) for c in range(clients)), *(trigger(t, sem) for t in range(triggers))
    )
    report(
        "failed-commits-under-load",
        triggers=triggers,
        pool_transfers=clients * per_client,
        wrong_bytes=len(wrong),
        cut=len(cut),
        server_errors=len(server_errors),
        peak_rss_mb=peak_rss_mb(app.proc.pid),
    )
    assert wrong == [], f"{len(wrong)} complete answers with other bytes: {wrong[:5]}"
    assert cut == [], f"{len(cut)} pool transfers cut: {cut[:5]}"
    assert server_errors == [], server_errors[:5]
    await asyncio.sleep(0.5)
    for key, data in stored(app.cache_dir).items():
        path = "/debian/" + key.split("/debian/", 1)[1]
        assert data == files[path], f"stored {key} holds other bytes"
    assert leftovers(app.cache_dir) == []
    assert tracebacks(app.log_text()) == []


async def test_directory_listing_under_a_cached_name_is_passed_through(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    hostile.files["/debian/dists/bookworm/InRelease"] = b"InRelease\n"
    # a real mirror: the name without '/' redirects to the listing of the directory
    hostile.behave["/debian/dists/bookworm"] = redirect("/debian/dists/bookworm/", "301 Moved")
    hostile.behave["/debian/dists/bookworm/"] = listing()
    app = start_appliance(_remap(hostile))
    assert (await fetch(f"{app.url}/debian/dists/bookworm/InRelease")).body == b"InRelease\n"
    await asyncio.sleep(0.2)
    a = await fetch(f"{app.url}/debian/dists/bookworm/")
    assert a.status == 200 and b"Index of" in a.body and a.headers["X-Cache"] == "PASS"
    assert a.headers["X-Archive-Local-Not-Stored"] == "conflict"
    b = await fetch(f"{app.url}/debian/dists/bookworm/InRelease")
    assert b.body == b"InRelease\n" and b.headers["X-Cache"] == "HIT"
    assert leftovers(app.cache_dir) == []


# --- 2. a stray response poisons the next request on a pooled connection ------------------


async def test_unsolicited_response_on_a_pooled_connection_is_never_served(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    a, b, c = os.urandom(50_000), os.urandom(60_000), os.urandom(70_000)
    evil = b"EVIL" * 1000
    hostile.files.update({"/debian/pool/a.deb": a, "/debian/pool/b.deb": b})
    hostile.files["/debian/pool/c.deb"] = c
    hostile.behave["/debian/pool/a.deb"] = stray(evil, delay=0.1)
    app = start_appliance(_remap(hostile), extra={"upstream": {"read_timeout": 5}})
    assert (await fetch(f"{app.url}/debian/pool/a.deb")).body == a
    await asyncio.sleep(0.4)  # the stray answer is now waiting on the pooled connection
    assert (await fetch(f"{app.url}/debian/pool/b.deb")).body == b
    started = time.monotonic()
    assert (await fetch(f"{app.url}/debian/pool/c.deb")).body == c
    assert time.monotonic() - started < 3, "a later download wedged"
    await asyncio.sleep(0.2)
    again = await fetch(f"{app.url}/debian/pool/b.deb")
    assert (again.headers["X-Cache"], again.body) == ("HIT", b)
    assert evil not in b"".join(stored(app.cache_dir).values())


# --- 3. redirects followed to any host --------------------------------------------------------


@pytest.fixture
def canary() -> Canary:
    c = Canary("127.0.0.2")
    yield c
    c.close()


async def test_redirects_only_to_configured_hosts(
    hostile: Hostile, canary: Canary, start_appliance: StartAppliance
) -> None:
    ok = os.urandom(5000)
    hostile.files["/debian/pool/real/ok.deb"] = ok
    for name in ("elsewhere", "loop", "same", "self", "meta"):
        hostile.files[f"/debian/pool/{name}.deb"] = b"x"
    hostile.behave["/debian/pool/elsewhere.deb"] = redirect(f"http://{canary.host}:{canary.port}/x")
    hostile.behave["/debian/pool/loop.deb"] = redirect("/debian/pool/loop.deb")
    hostile.behave["/debian/pool/same.deb"] = redirect("/debian/pool/real/ok.deb", "301 Moved")
    hostile.behave["/debian/pool/meta.deb"] = redirect("http://169.254.169.254/latest/meta-data/")
    app = start_appliance(_remap(hostile))
    hostile.behave["/debian/pool/self.deb"] = redirect(f"http://127.0.0.1:{app.port}/api/status")
    for name in ("elsewhere", "loop", "self", "meta"):
        a = await fetch(f"{app.url}/debian/pool/{name}.deb")
        assert a.status == 502, (name, a.status, a.body[:200])
    same = await fetch(f"{app.url}/debian/pool/same.deb")
    assert (same.status, same.body) == (200, ok)  # the same host: followed
    assert canary.hits == 0
    await asyncio.sleep(0.2)
    assert [k.rsplit("/", 1)[-1] for k in stored(app.cache_dir)] == ["same.deb"]
    log = app.log_text()
    assert "not a configured upstream" in log and "more than 5 redirects" in log
    assert tracebacks(log) == []


# --- 4. feed documents over ~64 KiB came back truncated --------------------------------------


def test_realistic_products_document_of_6_mb_syncs(
    feed: Feed, served: Upstream, feed_config: Path
) -> None:
    doc_path = feed.root / feed.products_path
    doc = json.loads(doc_path.read_text())
    for n in range(9000):  # other products, as the real feed has (not selected below)
        doc["products"][f"com.example.cloud:other:{n}:s390x"] = {
            "arch": "s390x",
            "release": "other",
            "versions": {
                "20240101": {
                    "items": {
                        "disk1.img": {
                            "ftype": "disk1.img",
                            "path": f"server/other/{n}/disk1.img",
                            "size": 1000,
                            "sha256": hashlib.sha256(str(n).encode()).hexdigest(),
                        }
                    }
                }
            },
        }
    doc_path.write_text(json.dumps(doc, indent=1))
    feed.resign()
    assert doc_path.stat().st_size > 2_000_000
    code, outcomes, err = run_sync(feed_config)
    assert code == 0, err
    assert outcomes[0]["ok"], outcomes[0]["error"]


# --- 5. a body without Content-Length cut short was cached as complete -----------------------


async def test_close_delimited_body_is_relayed_never_stored(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    data = os.urandom(3_000_000)
    hostile.files["/debian/pool/n.deb"] = data
    hostile.behave["/debian/pool/n.deb"] = no_length(cut=1_500_000)
    app = start_appliance(_remap(hostile))
    a = await fetch(f"{app.url}/debian/pool/n.deb")
    assert a.headers.get("X-Cache") == "PASS"
    assert a.headers["X-Archive-Local-Not-Stored"] == "unverifiable"
    hostile.behave["/debian/pool/n.deb"] = no_length()
    b = await fetch(f"{app.url}/debian/pool/n.deb")
    assert (b.status, b.body == data, b.headers["X-Cache"]) == (200, True, "PASS")
    assert hostile.count("/n.deb") == 2  # never a HIT of what arrived
    assert stored(app.cache_dir) == {}


# --- 6. a full disk broke revalidation ---------------------------------------------------


async def test_full_disk_keeps_serving_and_leaves_nothing_behind(
    hostile: Hostile, start_appliance: StartAppliance, small_disk: Path
) -> None:
    release = b"Origin: test\n" * 50
    hostile.files["/debian/dists/test/InRelease"] = release
    new = os.urandom(100_000)
    hostile.files["/debian/pool/new.deb"] = new
    app = start_appliance(
        _remap(hostile),
        index_ttl=1,
        cache_dir=small_disk / "cache",
        extra={"cache": {"dir": str(small_disk / "cache"), "max_size": "1GiB", "min_free": 0}},
    )
    url = f"{app.url}/debian/dists/test/InRelease"
    assert (await fetch(url)).body == release
    await asyncio.sleep(0.2)
    # a data file fits, its sidecar does not
    filler = fill(small_disk, leave=(len(new) + 4095) // 4096 * 4096)
    a = await fetch(f"{app.url}/debian/pool/new.deb")
    assert (a.status, a.body == new) == (200, True), a.error
    # the failed commit's temp file is freed when its last reader closes, which may be
    # after this client has its bytes: fill again once that space is back
    fill(small_disk)  # now nothing fits
    await asyncio.sleep(0.3)
    fill(small_disk)
    await asyncio.sleep(1.1)
    for _ in range(3):  # revalidation: 304 upstream, its record cannot be written
        r = await fetch(url)
        assert (r.status, r.body) == (200, release)
        assert r.headers["X-Cache"] == "REVALIDATED"
    assert leftovers(small_disk / "cache") == []
    assert tracebacks(app.log_text()) == []
    filler.unlink()


# --- 7. a Range header with thousands of digits ---------------------------------------------


async def test_range_with_thousands_of_digits(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    data = os.urandom(10_000)
    hostile.files["/debian/pool/r.deb"] = data
    app = start_appliance(_remap(hostile))
    url = f"{app.url}/debian/pool/r.deb"
    assert (await fetch(url)).body == data
    await asyncio.sleep(0.2)
    whole = await fetch(url, {"Range": "bytes=0-" + "9" * 5000})
    assert (whole.status, whole.body) == (206, data)
    past = await fetch(url, {"Range": "bytes=" + "9" * 5000 + "-"})
    assert past.status == 416
    tail = await fetch(url, {"Range": "bytes=-" + "9" * 5000})
    assert (tail.status, tail.body) == (206, data)
    assert tracebacks(app.log_text()) == []


# --- and the rest ---------------------------------------------------------------------------


async def test_gzip_encoded_answer_is_relayed_with_its_encoding_not_cached(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    data = os.urandom(20_000)
    hostile.files["/debian/pool/g.deb"] = data
    hostile.behave["/debian/pool/g.deb"] = gzip_encoded()
    app = start_appliance(_remap(hostile))
    a = await fetch(f"{app.url}/debian/pool/g.deb")
    assert a.headers.get("Content-Encoding") == "gzip" and a.headers["X-Cache"] == "PASS"
    import gzip

    assert gzip.decompress(a.body) == data
    assert stored(app.cache_dir) == {}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/metrics"),
        ("PUT", "/.well-known/archive-local"),
        ("DELETE", "/"),
        ("POST", "/api/status"),
        ("PATCH", "/favicon.ico"),
    ],
)
async def test_other_methods_are_405(
    method: str, path: str, hostile: Hostile, start_appliance: StartAppliance
) -> None:
    app = start_appliance(_remap(hostile))
    a = await fetch(f"{app.url}{path}", method=method)
    assert a.status == 405 and "GET" in a.headers.get("Allow", "")


def _bad_feed(feed: Feed, change) -> None:  # type: ignore[no-untyped-def]
    doc_path = feed.root / feed.products_path
    doc = json.loads(doc_path.read_text())
    change(doc)
    doc_path.write_text(json.dumps(doc))
    feed.resign()


def _first_item(doc: dict) -> dict:
    product = next(iter(doc["products"].values()))
    return next(iter(next(iter(product["versions"].values()))["items"].values()))


@pytest.mark.parametrize("path", ["./x.img", "server/%2e%2e/%2e%2e/x.img", "a/./b.img"])
def test_signed_feed_with_unsafe_item_path_is_a_feed_error(
    path: str, feed: Feed, served: Upstream, feed_config: Path
) -> None:
    _bad_feed(feed, lambda doc: _first_item(doc).update(path=path))
    code, outcomes, err = run_sync(feed_config)
    assert code != 0 and "Traceback" not in err
    assert "unsafe path" in outcomes[0]["error"]


def test_signed_feed_nested_200000_deep_is_a_feed_error(
    feed: Feed, served: Upstream, feed_config: Path
) -> None:
    doc_path = feed.root / feed.products_path
    doc_path.write_text('{"format": "products:1.0", "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    feed.resign()
    code, outcomes, err = run_sync(feed_config)
    assert code != 0 and "Traceback" not in err
    assert "nested too deeply" in outcomes[0]["error"]


async def test_purge_with_100000_deep_json_is_400(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    app = start_appliance(_remap(hostile))
    req_body = ("[" * 100_000 + "]" * 100_000).encode()
    import urllib.request
    from urllib.error import HTTPError

    req = urllib.request.Request(
        f"{app.url}/api/admin/purge",
        data=req_body,
        method="POST",
        headers={"Authorization": f"Bearer {app.token}"},
    )
    with pytest.raises(HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 413  # larger than an admin body may be
    req.data = ("[" * 30_000 + "]" * 30_000).encode()  # small enough, too deep
    with pytest.raises(HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    assert tracebacks(app.log_text()) == []


async def test_name_too_long_for_the_file_system_is_refused_before_fetching(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    app = start_appliance(_remap(hostile))
    a = await fetch(f"{app.url}/debian/pool/{'n' * 240}.deb")
    assert a.status == 400
    assert hostile.requests == []
    assert tracebacks(app.log_text()) == []


def test_listen_on_ipv6_any_accepts_ipv4_too(
    hostile: Hostile, start_appliance: StartAppliance, tmp_path: Path
) -> None:
    hostile.files["/debian/pool/v.deb"] = b"dual stack"
    with socket.socket(socket.AF_INET6) as probe:  # a port free for IPv4 and IPv6 alike
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::", 0))
        port = probe.getsockname()[1]
    cfg = write_config(
        tmp_path / "dual.yaml",
        {
            "listen": f"[::]:{port}",
            "cache": {"dir": str(tmp_path / "dual-cache")},
            "apt": {"remaps": _remap(hostile)},
            "admin": {"token_file": str(tmp_path / "dual-token")},
            "discovery": {"mdns": False},
        },
    )
    log = (tmp_path / "dual.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(cfg), "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("::1", port), 0.2).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "dual.log").read_text()
                time.sleep(0.05)
        assert http_get(f"http://127.0.0.1:{port}/debian/pool/v.deb") == (200, b"dual stack")
        assert http_get(f"http://[::1]:{port}/debian/pool/v.deb") == (200, b"dual stack")
    finally:
        proc.terminate()
        proc.wait(10)


def test_malformed_requests_are_one_quiet_line_each(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    app = start_appliance(_remap(hostile))
    garbage = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40) + b"\r\n\r\n",
        b"GET /debian/pool/x.deb HTTP/9.9\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\n\r\n",
    ] * 20
    for data in garbage:
        with socket.create_connection(("127.0.0.1", app.port), 5) as s:
            s.sendall(data)
            s.settimeout(5)
            answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.") and b" 500 " not in answer[:20], answer[:80]
    time.sleep(0.3)
    log = app.log_text()
    assert tracebacks(log) == []
    assert "ERROR" not in log
    assert log.count("bad request from") >= 20


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_memory_stays_bounded_under_distinct_long_paths(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    """8192 distinct 8 KB request paths (and 8192 of 1 KB) do not grow the memo unbounded."""
    app = start_appliance(_remap(hostile))
    before = _rss_kb(app.proc.pid)

    async def burst(length: int, n: int, tag: str = "a") -> None:
        async def worker(w: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
            for i in range(w, n, 8):
                name = f"{tag}{i:06d}-" + "p" * 180
                segments = "/".join([name] * max(1, length // 190))
                writer.write(f"GET /debian/{segments} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                size = int(
                    next(
                        (
                            ln.split(b":")[1]
                            for ln in head.split(b"\r\n")
                            if ln.lower().startswith(b"content-length")
                        ),
                        b"0",
                    )
                )
                await reader.readexactly(size)
            writer.close()

        await asyncio.gather(*(worker(w) for w in range(8)))

    await burst(8000, 8192)
    await burst(1000, 8192)
    first = (_rss_kb(app.proc.pid) - before) / 1024
    await burst(8000, 8192, "b")  # again, other paths: bounded means no new growth
    await burst(1000, 8192, "b")
    grown = (_rss_kb(app.proc.pid) - before) / 1024
    report(
        "distinct-long-paths",
        requests=4 * 8192,
        rss_before_mb=round(before / 1024, 1),
        growth_first_mb=round(first, 1),
        growth_second_mb=round(grown - first, 1),
    )
    assert first < 40, f"RSS grew by {first:.0f} MB"
    assert grown - first < 10, f"RSS grew by {first:.0f} MB, then by {grown - first:.0f} MB more"
    assert tracebacks(app.log_text()) == []
