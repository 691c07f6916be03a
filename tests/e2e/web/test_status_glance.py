"""The status page's "At a glance" and its upstream columns, as the service shows them under
`workers: 2` (what `auto` gives on two cores; written out so the counts are exact on any
machine): bytes saved today, over 24 h and since start from a history one worker restored,
requests/s, the disk bar against the file system, the workers that answered; per upstream
the median latency of the service's last answers (the union of both workers', never a mean
of their medians) and its state once it fails."""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path

import pytest

from appliance.config import human_size
from tests.conftest import Appliance, StartAppliance, free_port
from tests.e2e.cache.test_workers import _sockets
from tests.e2e.web.test_worker_figures import Clients, _own, _until_both
from tests.upstream import Upstream

DEB = b"\x21" * 50_000
POOL = "/debian/pool/main/h"
HELLO, WORLD = f"{POOL}/hello_1.0_amd64.deb", f"{POOL}/world_2.0_amd64.deb"
FIELDS = ("hits", "misses", "bytes_cache", "bytes_upstream")
FORMAT = {"format": "archive-local history", "version": 1, "fields": ["t", *FIELDS]}
DAY = 86400
SLOW = 0.3  # seconds the upstream waits before answering a slow file


@pytest.fixture
def remaps(upstream_root: Path, upstream: Upstream) -> dict[str, list[str]]:
    pool = upstream_root / POOL.lstrip("/")
    pool.mkdir(parents=True)
    for name in ("hello_1.0_amd64.deb", "world_2.0_amd64.deb"):
        (pool / name).write_bytes(DEB)
    for i in range(20):
        (pool / f"slow_{i}_amd64.deb").write_bytes(b"s")
        upstream.delay[f"{POOL}/slow_{i}_amd64.deb"] = SLOW
    return {"debian": [f"{upstream.url}/debian"]}


def page(app: Appliance) -> str:
    return Clients(app).open("/", {"Accept": "text/html"}).read().decode()


def shown(html: str, ident: str) -> str:
    m = re.search(rf'id="{ident}"[^>]*>(.*?)</', html)
    assert m, f"#{ident} is not on the page"
    return m.group(1)


def test_glance_and_the_upstream_columns_are_the_services(
    start_appliance: StartAppliance,
    remaps: dict[str, list[str]],
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    now = time.time()
    if now % DAY > DAY - 90:  # a point "yesterday, within 24 h" needs a minute before 00:00
        time.sleep(DAY - now % DAY + 1)
        now = time.time()
    midnight = now // DAY * DAY
    cache = tmp_path / "cache"
    (cache / ".state").mkdir(parents=True)
    # worker 1's history from an earlier run: where its counts stood two days ago, then
    # what it served yesterday (30 s before 00:00 UTC): in the last 24 h, not today
    older = [[now - 2 * DAY, 10, 5, 1000, 2000], [midnight - 30, 14, 6, 8000, 9000]]
    (cache / ".state/history-1.json").write_text(json.dumps({**FORMAT, "points": older}))
    dead = free_port()  # nothing listens there: every request to it fails to connect
    app = start_appliance(
        {**remaps, "gone": [f"http://127.0.0.1:{dead}/debian"]},
        cache_dir=cache,
        extra={"workers": 2},
    )
    socks = _sockets(app, 2)
    clients = Clients(app)
    host, gone = f"127.0.0.1:{upstream.port}", f"127.0.0.1:{dead}"

    # -- at a glance: today, 24 h and since start; requests/s; workers; the disk bar
    for path in (HELLO, WORLD):
        assert clients.get(path)[0] == 200  # misses
    time.sleep(0.3)  # committed: what follows are hits
    _until_both(socks, clients, HELLO, lambda d: d["requests"]["apt"]["hit"])
    assert clients.get("/nosuchremap/x.deb")[0] == 403
    assert clients.get(f"{POOL}/missing_1_amd64.deb")[0] == 404
    hits, misses = clients.results["hit"], clients.results["miss"]
    saved = clients.bytes["cache"]
    assert misses == 2 and saved == hits * len(DEB)

    status = app.status()
    g = status["glance"]
    assert g["saved"] == {"today": saved, "day": saved + 7000, "start": saved}
    assert g["hit_ratio"] == {
        "today": round(hits / (hits + misses), 4),
        "day": round((hits + 4) / (hits + misses + 5), 4),
        "start": status["hit_ratio"],
    }
    assert status["hit_ratio"] == round(hits / (hits + misses), 4)
    asked = sum(clients.results.values())  # every answer counted, refusals and errors too
    assert g["requests_last_minute"] == asked
    assert g["requests_per_second"] == round(asked / 60, 3)
    assert g["workers"] == {"answered": 2, "configured": 2}
    assert g["upstreams"] == {"count": 1, "failing": []}  # a 404 is an answer
    st = os.statvfs(cache)
    d = g["disk"]
    assert (d["used"], d["max"], d["total"]) == (2 * len(DEB), 2**30, st.f_blocks * st.f_frsize)
    assert abs(d["free"] - st.f_bavail * st.f_frsize) < 256 * 2**20  # a shared machine writes

    html = page(app)
    assert shown(html, "saved-today") == human_size(saved).replace(" ", "\u00a0")
    assert shown(html, "saved-day") == human_size(saved + 7000).replace(" ", "\u00a0")
    assert shown(html, "bytes-saved") == human_size(saved).replace(" ", "\u00a0")
    assert shown(html, "hit-ratio-day") == f"{g['hit_ratio']['day'] * 100:.1f}\u00a0%"
    assert shown(html, "requests-per-second") == f"{round(asked / 60, 3):g}/s"
    assert shown(html, "workers") == "2 of 2"
    assert shown(html, "upstream-state") == '<span class="ok">all answering'
    assert shown(html, "disk-max") == "1.0\u00a0GiB"
    assert shown(html, "disk-total") == human_size(d["total"]).replace(" ", "\u00a0")
    bar = re.search(r'<div class="bar".*?</div>', html)
    assert bar, html
    widths = {k: float(w) for k, w in re.findall(r'seg-(\w+)"[^>]*flex-basis:([\d.]+)%', bar[0])}
    scale = max(2**30, d["total"])
    assert widths["cache"] == round(2 * len(DEB) / scale * 100, 2)
    assert abs(widths["free"] - d["free"] / scale * 100) < 1
    assert sum(widths.values()) <= 100.03  # three rounded parts of one whole

    # -- upstreams: the median of both workers' windows, the state once one fails
    # slow answers (more than the 3 fast ones: the median is a slow one) until each worker
    # has timed some: the service's median is then over both workers' windows
    slow = 0
    while slow < 4 or not all(_own(s)["upstreams"].get(host, {}).get("recent") for s in socks):
        assert slow < 20, "the kernel never gave one worker a connection"
        assert clients.get(f"{POOL}/slow_{slow}_amd64.deb")[0] == 200
        slow += 1
    windows = [_own(s)["upstreams"][host]["recent"] for s in socks]
    union = sorted(w for window in windows for w in window)
    assert len(union) == 3 + slow  # 2 misses, the 404 (answers, timed) and the slow ones
    u = app.status()["upstreams"][host]
    assert u["recent"] == union
    assert u["median_seconds"] == round(statistics.median(s for _, s in union), 4)
    assert SLOW <= u["median_seconds"] < SLOW + 0.25, union  # most answers waited SLOW
    assert u["state"] == "ok"
    html = page(app)
    row = re.search(rf'<tr title="{re.escape(host)}">.*?</tr>', html)
    assert row, html
    median = f"{u['median_seconds'] * 1000:.0f}\u00a0ms"
    assert f'<td class=n>{median}</td><td><span class="ok">ok</span></td>' in row[0]

    assert clients.get(f"/gone/pool/main/h/{HELLO.rsplit('/', 1)[1]}")[0] == 502
    status = app.status()
    down = status["upstreams"][gone]
    assert (down["state"], down["errors"], down["median_seconds"]) == ("failing", 1, None)
    assert status["upstreams"][host]["state"] == "ok"
    assert status["glance"]["upstreams"] == {"count": 2, "failing": [gone]}
    html = page(app)
    assert shown(html, "upstream-state") == '<span class="bad">1 failing'
    row = re.search(rf'<tr title="{re.escape(gone)}">.*?</tr>', html)
    assert row and '<span class="bad">failing</span>' in row[0], html

    # -- `archive-local status`: the same figures
    text = app.cli("status").stdout
    g = status["glance"]
    ratio = f"{g['hit_ratio']['today'] * 100:.1f} %"
    assert f"saved: today {human_size(saved)} (hit ratio {ratio});" in text, text
    assert f"24 h {human_size(saved + 7000)} " in text
    assert "workers: 2 of 2 answered" in text and f"upstreams: 1 failing ({gone})" in text
    assert f"upstream {host}: " in text and f"; ok, median {median.replace(chr(160), ' ')}" in text
    assert f"upstream {gone}: 1 requests, 1 errors" in text and "; failing, median -" in text
