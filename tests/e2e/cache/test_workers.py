"""Processes sharing one cache directory on one machine (the service's workers, a command
beside the service): one upstream fetch per file among them, through lock files."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from appliance.web.workers import merge_metrics
from tests.conftest import (
    Appliance,
    StartAppliance,
    free_port,
    require,
    upstream_file,
    write_config,
)
from tests.e2e.fleet.test_shared_store import BIG, _timed_get
from tests.upstream import Upstream


def test_processes_on_one_cache_fetch_a_file_once(
    start_appliance: StartAppliance, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    """Ten clients, half on each worker's own socket (not left to the kernel's choice):
    one upstream fetch between the two processes. (A second service on the directory is
    refused: tests/e2e/commands/test_cli.py.)"""
    data = upstream_file(upstream_root, BIG, 3_000_000)
    upstream.rate[BIG] = 3_000_000  # about a second
    cache = tmp_path / "cache"
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]}, cache_dir=cache, extra={"workers": 2}
    )
    socks = _sockets(app, 2)

    def get(n: int) -> tuple[int, str]:
        conn = _OverUnix(socks[n % 2])
        conn.request("GET", BIG)
        r = conn.getresponse()
        return r.status, hashlib.sha256(r.read()).hexdigest()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(get, range(10)))
    assert answers == [(200, hashlib.sha256(data).hexdigest())] * 10
    assert upstream.count(BIG) == 1, [r.path for r in upstream.requests]
    assert not [p for p in cache.rglob("*") if ".part-" in p.name]


def _over_unix(sock: Path, path: str) -> str:
    """What one worker answers on its own socket (curl speaks HTTP over a Unix socket)."""
    r = subprocess.run(
        ["curl", "-sf", "--unix-socket", str(sock), f"http://worker{path}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return r.stdout


def _code(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_workers_share_the_port_and_answer_as_one(
    start_appliance: StartAppliance, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    require("curl", "curl")
    data = upstream_file(upstream_root, BIG, 3_000_000)
    upstream.rate[BIG] = 3_000_000
    cache = tmp_path / "cache"
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]}, cache_dir=cache, extra={"workers": 2}
    )
    socks = [cache / ".state/workers/0.sock", cache / ".state/workers/1.sock"]
    deadline = time.monotonic() + 20
    while not all(s.exists() for s in socks):
        assert time.monotonic() < deadline, app.log_text()
        time.sleep(0.1)
    assert [json.loads(_over_unix(s, "/api/status"))["worker"] for s in socks] == [0, 1]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:  # new connections: both workers
        answers = list(pool.map(_timed_get, [app.url + BIG] * 10))
    want = hashlib.sha256(data).hexdigest()
    assert [(code, digest) for code, digest, _, _ in answers] == [(200, want)] * 10
    assert upstream.count(BIG) == 1  # one fetch for both workers
    for _ in range(40):
        assert _timed_get(app.url + BIG)[0] == 200
    counted = 'archive_local_requests_total{result="hit",service="apt"}'

    def hits(text: str) -> float:
        return sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith(counted)
        )

    own = [hits(_over_unix(s, "/metrics")) for s in socks]
    assert all(n > 0 for n in own), own  # the kernel spread the connections
    total = hits(urllib.request.urlopen(app.url + "/metrics", timeout=10).read().decode())
    assert total == sum(own) >= 40  # /metrics adds the workers up
    assert json.loads(urllib.request.urlopen(app.url + "/api/status").read())["workers"] == 2
    assert app.admin("drain", {"drain": True})[0] == 200  # every worker drains
    assert {_code(app.url + "/healthz") for _ in range(12)} == {503}
    assert app.admin("drain", {"drain": False})[0] == 200
    assert {_code(app.url + "/healthz") for _ in range(12)} == {200}
    app.proc.send_signal(signal.SIGHUP)  # the master passes it on: both reload
    deadline = time.monotonic() + 10
    while app.log_text().count("configuration reloaded") < 2:
        assert time.monotonic() < deadline, app.log_text()
        time.sleep(0.1)
    app.proc.send_signal(signal.SIGTERM)
    assert app.proc.wait(40) == 0  # both drained and stopped cleanly
    assert "worker 0 of 2" in app.log_text() and "worker 1 of 2" in app.log_text()


class _OverUnix(http.client.HTTPConnection):
    """HTTP to one worker's own socket."""

    def __init__(self, path: Path) -> None:
        super().__init__("worker", timeout=20)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        self.sock = sock


def _sockets(app: Appliance, n: int) -> list[Path]:
    """The workers' Unix sockets once each accepts (the file appears at bind, a moment
    before the worker listens on it)."""
    socks = [app.cache_dir / f".state/workers/{i}.sock" for i in range(n)]
    deadline = time.monotonic() + 20
    while not all(_accepts(s) for s in socks):
        assert time.monotonic() < deadline, app.log_text()
        time.sleep(0.1)
    return socks


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def test_a_waiting_worker_streams_the_download_of_the_one_that_fetches(
    start_appliance: StartAppliance, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    data = upstream_file(upstream_root, BIG, 3_000_000)
    upstream.stall_after[BIG] = 1_000_000  # then silence: the download cannot complete
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]},
        cache_dir=tmp_path / "cache",
        extra={"workers": 2, "upstream": {"read_timeout": 4}},
    )
    socks = _sockets(app, 2)
    fetching = _OverUnix(socks[0])
    fetching.request("GET", BIG)
    r0 = fetching.getresponse()
    assert r0.status == 200 and r0.read(1000) == data[:1000]
    waiting = _OverUnix(socks[1])
    waiting.request("GET", BIG)
    r1 = waiting.getresponse()
    assert (r1.status, r1.headers["X-Cache"], r1.headers["X-Archive-Local-From"]) == (
        200,
        "MISS",
        "worker-0",
    )
    assert r1.headers["Content-Length"] == str(len(data))
    # while the upstream is silent, worker 1's client has what worker 0 received
    assert r1.read(900_000) == data[:900_000]
    del upstream.stall_after[BIG]  # the next request for it will be answered in full
    # worker 0's transfer never completes: its client sees a cut, never a complete file
    with pytest.raises(http.client.IncompleteRead):
        r0.read()
    # worker 1's client gets the rest from worker 1's own fetch, after its start was
    # checked against the bytes already sent
    assert r1.read() == data[900_000:]
    assert upstream.count(BIG) == 2
    assert not [p for p in app.cache_dir.rglob("*") if ".part-" in p.name]
    metrics = urllib.request.urlopen(app.url + "/metrics", timeout=10).read().decode()
    assert "archive_local_peer_streams_total 1.0" in metrics
    assert _timed_get(app.url + BIG)[:2] == (200, hashlib.sha256(data).hexdigest())
    assert upstream.count(BIG) == 2  # kept by worker 1: a hit


def test_workers_keep_the_cache_under_one_size_cap(
    start_appliance: StartAppliance, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    """Each worker is told what the others add and evict, so `cache.max_size` bounds the
    directory, not each worker's share of it."""
    files = {
        f"/debian/pool/main/f/f{i}.deb": upstream_file(
            upstream_root, f"/debian/pool/main/f/f{i}.deb", 1_000_000
        )
        for i in range(8)
    }
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]},
        cache_dir=tmp_path / "cache",
        max_size="3MiB",
        extra={"workers": 2},
    )
    socks = _sockets(app, 2)
    for n, (path, data) in enumerate(files.items()):
        conn = _OverUnix(socks[n % 2])  # the workers take turns
        conn.request("GET", path)
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, data)
        conn.close()
        time.sleep(0.2)  # the other worker hears of it before the next one is added
    stored = [
        p
        for p in (app.cache_dir / f"127.0.0.1:{upstream.port}").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    ]
    assert sum(p.stat().st_size for p in stored) <= 3 * 2**20, stored
    assert len(stored) == 3  # the newest, whichever worker fetched them
    sizes = [json.loads(_over_unix(s, "/api/status"))["cache"]["bytes"] for s in socks]
    assert sizes == [3_000_000, 3_000_000]  # both count the whole directory


def _worker_pid(master: int, index: int) -> int | None:
    """The pid of worker INDEX under the master (named `al-worker-INDEX`), if it runs."""
    for child in Path(f"/proc/{master}/task/{master}/children").read_text().split():
        try:
            name = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        if name == f"al-worker-{index}":
            return int(child)
    return None


def _anonymous(pid: int) -> tuple[int, int]:
    """A process's anonymous memory (kB): all it maps, and its proportional share."""
    rollup = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        if ":" in line
    )
    return int(rollup["Anonymous"].split()[0]), int(rollup["Pss_Anon"].split()[0])


def test_a_dead_worker_is_started_again_alone_and_sweeps_nothing(
    start_appliance: StartAppliance, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    """Worker 1 killed while worker 0 downloads: the master starts worker 1 again, worker 0
    goes on, and the new worker's start (an index, no sweep) leaves worker 0's temp file
    alone, so the download is committed."""
    data = upstream_file(upstream_root, BIG, 3_000_000)
    upstream.rate[BIG] = 600_000  # 5 s: the new worker starts while it downloads
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]}, cache_dir=tmp_path / "cache", extra={"workers": 2}
    )
    socks = _sockets(app, 2)
    conn = _OverUnix(socks[0])
    conn.request("GET", BIG)
    r = conn.getresponse()
    assert r.read(1000) == data[:1000]
    old = _worker_pid(app.proc.pid, 1)
    assert old is not None
    # a worker is a fork of the master after it imported the workers' code: those pages
    # are shared (an exec'd worker shares none of its anonymous memory)
    mapped, share = _anonymous(old)
    assert share < 0.8 * mapped, (mapped, share)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while _worker_pid(app.proc.pid, 1) in (None, old):
        assert time.monotonic() < deadline, app.log_text()
        time.sleep(0.1)
    mapped, share = _anonymous(_worker_pid(app.proc.pid, 1) or 0)  # the new one's too
    assert share < 0.8 * mapped, (mapped, share)
    while "worker 1 of 2" not in app.log_text().split("started it again")[-1]:
        assert time.monotonic() < deadline, app.log_text()  # serving again
        time.sleep(0.1)
    assert json.loads(_over_unix(socks[1], "/api/status"))["worker"] == 1
    assert r.read() == data[1000:]  # worker 0 went on
    assert app.proc.poll() is None
    time.sleep(0.5)  # its commit
    stored = app.cache_dir / f"127.0.0.1:{upstream.port}" / BIG.lstrip("/")
    assert stored.read_bytes() == data
    assert _timed_get(app.url + BIG)[:2] == (200, hashlib.sha256(data).hexdigest())
    assert upstream.count(BIG) == 1
    assert "worker 1 exited (-9): started it again" in app.log_text()


def test_the_workers_metrics_add_up() -> None:
    one = (
        "# HELP archive_local_requests_total R\n# TYPE archive_local_requests_total counter\n"
        'archive_local_requests_total{service="apt"} 3.0\n'
        "# HELP archive_local_downloads_in_flight D\n"
        "# TYPE archive_local_downloads_in_flight gauge\n"
        "archive_local_downloads_in_flight 1.0\n"
        "# HELP archive_local_cache_size_bytes C\n# TYPE archive_local_cache_size_bytes gauge\n"
        "archive_local_cache_size_bytes 100.0\n"
    )
    two = one.replace(" 3.0", " 4.0").replace("flight 1.0", "flight 2.0").replace(" 100.0", " 90.0")
    merged = merge_metrics([one, two]).decode()
    assert 'archive_local_requests_total{service="apt"} 7.0' in merged  # counters add up
    assert "archive_local_downloads_in_flight 3.0" in merged  # so do downloads in progress
    assert "archive_local_cache_size_bytes 100.0" in merged  # one cache, seen by both


def test_many_clients_of_one_download_do_not_hold_up_the_next_file(
    start_appliance: StartAppliance, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    """110 clients of worker 1 stream worker 0's download of one file (a connection each
    between the workers); a client of worker 1 asking for another file worker 0 fetches
    is not queued behind them (aiohttp's default pool holds 100 connections)."""
    data = upstream_file(upstream_root, BIG, 2_000_000)
    upstream.rate[BIG] = 200_000  # 10 s
    small = "/debian/pool/main/s/small_1.0_amd64.deb"
    second = upstream_file(upstream_root, small, 200_000)
    upstream.rate[small] = 200_000  # 1 s
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]}, cache_dir=tmp_path / "cache", extra={"workers": 2}
    )
    socks = _sockets(app, 2)
    first = _OverUnix(socks[0])
    first.request("GET", BIG)
    r0 = first.getresponse()
    assert r0.read(1000) == data[:1000]

    def client(_n: int) -> bytes:
        conn = _OverUnix(socks[1])
        conn.request("GET", BIG)
        return conn.getresponse().read()

    with concurrent.futures.ThreadPoolExecutor(110) as pool:
        crowd = [pool.submit(client, n) for n in range(110)]
        time.sleep(2)  # all of them streaming from worker 0
        holder = _OverUnix(socks[0])
        holder.request("GET", small)
        h = holder.getresponse()
        started = time.monotonic()
        asker = _OverUnix(socks[1])
        asker.request("GET", small)
        a = asker.getresponse()
        assert (a.status, a.headers["X-Archive-Local-From"]) == (200, "worker-0")
        assert a.read() == second
        took = time.monotonic() - started
        assert h.read() == second
        assert all(f.result() == data for f in crowd)
    assert took < 4, took  # the small file's own second, not the crowd's ten
    assert r0.read() == data[1000:]


def test_a_killed_workers_temp_file_is_removed_and_its_siblings_kept(
    start_appliance: StartAppliance, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    """Worker 0 killed mid-download: the master starts it again and removes the temp file
    it left (outside any size cap, else there until the next start); worker 1's download
    beside it goes on and is committed."""
    data = upstream_file(upstream_root, BIG, 3_000_000)
    other = "/debian/pool/main/o/other_1.0_amd64.deb"
    beside = upstream_file(upstream_root, other, 3_000_000)
    upstream.rate[BIG] = upstream.rate[other] = 500_000  # 6 s each
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]}, cache_dir=tmp_path / "cache", extra={"workers": 2}
    )
    socks = _sockets(app, 2)
    doomed, going_on = _OverUnix(socks[0]), _OverUnix(socks[1])
    doomed.request("GET", BIG)
    going_on.request("GET", other)
    r0, r1 = doomed.getresponse(), going_on.getresponse()
    assert r0.read(1000) == data[:1000] and r1.read(1000) == beside[:1000]
    victim = _worker_pid(app.proc.pid, 0)
    assert victim is not None
    temps = [p for p in app.cache_dir.rglob("*") if ".part-" in p.name]
    assert len(temps) == 2 and any(f".part-{victim}-" in p.name for p in temps), temps
    os.kill(victim, signal.SIGKILL)
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        r0.read()
    deadline = time.monotonic() + 20
    while "removed 1 temp files worker 0" not in app.log_text():
        assert time.monotonic() < deadline, app.log_text()
        time.sleep(0.1)
    left = [p for p in app.cache_dir.rglob("*") if ".part-" in p.name]
    assert [p for p in left if f".part-{victim}-" in p.name] == []
    assert r1.read() == beside[1000:]  # worker 1 went on, its temp file untouched
    time.sleep(0.5)  # its commit
    stored = app.cache_dir / f"127.0.0.1:{upstream.port}" / other.lstrip("/")
    assert stored.read_bytes() == beside
    assert not [p for p in app.cache_dir.rglob("*") if ".part-" in p.name]


def test_workers_revalidating_an_index_at_once_ask_upstream_once(
    start_appliance: StartAppliance, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    """Eight clients, four on each of `workers: 2` (the default `auto` on two cores; said
    here so it holds anywhere), ask for one index at once while upstream takes a second
    to answer: one upstream request for all of them, when the index is not cached yet,
    when its TTL has passed and upstream confirms it (304), and when upstream has new
    bytes; every client gets 200 and the current bytes."""
    path = "/debian/dists/test/InRelease"
    release = upstream_root / path.lstrip("/")
    release.parent.mkdir(parents=True)
    release.write_bytes(b"Suite: test\nVersion: 1\n")
    os.utime(release, (time.time() - 100, time.time() - 100))
    upstream.delay[path] = 1.0
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]},
        cache_dir=tmp_path / "cache",
        index_ttl=1,
        extra={"workers": 2},
    )
    socks = _sockets(app, 2)

    def get(sock: Path) -> tuple[int, bytes]:
        conn = _OverUnix(sock)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def together() -> list[tuple[int, bytes]]:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            return list(pool.map(get, [socks[i % 2] for i in range(8)]))

    assert together() == [(200, release.read_bytes())] * 8  # not cached yet
    assert upstream.count(path) == 1, app.log_text()
    time.sleep(1.5)  # past the TTL
    assert together() == [(200, release.read_bytes())] * 8
    assert (upstream.count(path), upstream.count(path, status=304)) == (2, 1), app.log_text()
    release.write_bytes(b"Suite: test\nVersion: 2, with more to say\n")
    time.sleep(1.5)
    assert together() == [(200, release.read_bytes())] * 8
    assert (upstream.count(path), upstream.count(path, status=200)) == (3, 2), app.log_text()


def _master(tmp_path: Path, **popen: object) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`serve` with two workers started by the test itself (its own signals and
    descriptors); the master, its port and its log."""
    port = free_port()
    cfg = write_config(
        tmp_path / "config.yaml",
        {
            "listen": f"127.0.0.1:{port}",
            "cache": {"dir": str(tmp_path / "cache")},
            "admin": {"token_file": str(tmp_path / "token")},
            "images": {"gnupg_home": str(tmp_path / "gnupg")},
            "discovery": {"mdns": False},
            "workers": 2,
        },
    )
    log = tmp_path / "log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(cfg), "serve"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        **popen,  # type: ignore[call-overload]
    )
    return proc, port, log


def _serving(proc: subprocess.Popen[bytes], port: int, log: Path) -> list[int]:
    """The two workers' pids once both answer (the master alive all along)."""
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        pids = [_worker_pid(proc.pid, i) for i in (0, 1)]
        if None not in pids and log.read_text().count("serving on") >= 2:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                return pids  # type: ignore[return-value]
            except OSError:
                pass
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_a_reload_while_the_service_starts_stops_nothing(tmp_path: Path) -> None:
    """`systemctl reload` (SIGHUP) while the master sweeps and imports, or while the
    workers start: the master waits with it until it can pass it on, and a worker that
    cannot reload yet reads the configuration as it starts anyway (a master killed by
    SIGHUP exits 'cleanly': systemd would not restart it)."""
    proc, port, log = _master(tmp_path)
    try:
        while not log.read_text():  # the master's first line: it is running its code
            assert proc.poll() is None
            time.sleep(0.01)
        for _ in range(20):
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.1)
        _serving(proc, port, log)
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()


def test_workers_reaped_by_the_system_are_started_again(tmp_path: Path) -> None:
    """A master started with SIGCHLD ignored (inherited through exec) never sees its
    workers' exit statuses: a dead worker is still started again, and the master goes on."""
    proc, port, log = _master(
        tmp_path, preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    )
    try:
        old = _serving(proc, port, log)[1]
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while _worker_pid(proc.pid, 1) in (None, old):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        _stop(proc)


def _links(pid: int) -> set[str]:
    return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def test_workers_hold_only_their_own_descriptors(tmp_path: Path) -> None:
    """A descriptor the master was given (a supervisor's pipe) does not reach the
    workers, as it did not reach exec'd ones: only stdio, the sockets and the lock."""
    read, write = os.pipe()
    try:
        proc, port, log = _master(tmp_path, pass_fds=(write,))
        try:
            pids = _serving(proc, port, log)
            master_pipes = {
                os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{proc.pid}/fd")
            }
            assert f"pipe:[{os.fstat(write).st_ino}]" in master_pipes
            for pid in pids:
                held = _links(pid)
                assert f"pipe:[{os.fstat(write).st_ino}]" not in held, held
        finally:
            _stop(proc)
    finally:
        os.close(read)
        os.close(write)
