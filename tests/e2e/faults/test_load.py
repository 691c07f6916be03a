"""Greedy and slow clients: thousands of idle or half-sent connections, a reader that
stops reading. Everyone else is served as usual and gets the right bytes."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import aiohttp

from tests.conftest import StartAppliance
from tests.e2e.faults.conftest import SCALE, fetch, report, stored, tracebacks
from tests.hostile import Hostile, slow

IDLE = min(3000 * SCALE, 15000)  # both processes stay under the 20000 open-files limit
PER_ADDRESS = 200  # under limits.connections_per_client (256)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_thousands_of_idle_connections_do_not_starve_clients(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    files = {f"/debian/pool/l{i}.deb": os.urandom(1_000_000) for i in range(20)}
    hostile.files.update(files)
    app = start_appliance({"debian": [f"{hostile.url}/debian"]})
    held: list[asyncio.StreamWriter] = []
    for n in range(IDLE):
        source = f"127.0.{10 + n // (PER_ADDRESS * 250)}.{2 + (n // PER_ADDRESS) % 250}"
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", app.port, local_addr=(source, 0)
        )
        if n % 3 == 0:  # slowloris: a request line that never ends
            writer.write(b"GET /debian/pool/l0.deb HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        held.append(writer)
    await asyncio.sleep(0.5)
    rss_idle = _rss_mb(app.proc.pid)
    latencies = []
    async with aiohttp.ClientSession() as session:

        async def client(path: str) -> None:
            started = time.monotonic()
            a = await fetch(f"{app.url}{path}", session=session)
            latencies.append(time.monotonic() - started)
            assert (a.status, a.body == files[path]) == (200, True), (path, a.status, a.error)

        for _round in range(2):  # misses, then hits
            await asyncio.gather(*(client(p) for p in files))
    for w in held:
        w.close()
    assert max(latencies) < 5, f"slowest client {max(latencies):.1f} s"
    assert app.proc.poll() is None
    assert tracebacks(app.log_text()) == []
    report(
        "idle-connections",
        idle=IDLE,
        clients=2 * len(files),
        slowest_client_s=round(max(latencies), 2),
        rss_with_idle_mb=round(rss_idle, 1),
    )


async def test_a_reader_that_stops_reading_does_not_hold_back_the_others(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    data = os.urandom(24_000_000)
    hostile.files["/debian/pool/big.deb"] = data
    hostile.behave["/debian/pool/big.deb"] = slow(12_000_000)  # ~2 s
    app = start_appliance({"debian": [f"{hostile.url}/debian"]})
    stalled = socket.create_connection(("127.0.0.1", app.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /debian/pool/big.deb HTTP/1.1\r\nHost: a\r\n\r\n")
    stalled.recv(1)  # then never again
    started = time.monotonic()
    answers = await asyncio.gather(*(fetch(f"{app.url}/debian/pool/big.deb") for _ in range(8)))
    took = time.monotonic() - started
    assert all(a.status == 200 and a.body == data for a in answers)
    assert took < 10, f"{took:.1f} s"
    await asyncio.sleep(0.3)
    assert data in stored(app.cache_dir).values()  # committed, stalled reader or not
    stalled.close()
    assert hostile.count("big.deb") == 1
