"""The status page's history: kept under `<cache.dir>/.state/` across a restart (merged over
the workers by time), a bad history file ignored, and the charts' axes and legend as
headless Chromium renders them."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path

import pytest

from appliance.config import human_size
from tests.conftest import Appliance, StartAppliance, http_get, require
from tests.e2e.cache.test_workers import _sockets
from tests.e2e.web.test_observability import chromium
from tests.e2e.web.test_worker_figures import Clients, _until_both
from tests.upstream import Upstream

DEB = b"\x21" * 50_000
POOL = "/debian/pool/main/h"
HELLO, WORLD = f"{POOL}/hello_1.0_amd64.deb", f"{POOL}/world_2.0_amd64.deb"
FIELDS = ("hits", "misses", "bytes_cache", "bytes_upstream")
FORMAT = {"format": "archive-local history", "version": 1, "fields": ["t", *FIELDS]}


@pytest.fixture
def remaps(upstream_root: Path, upstream: Upstream) -> dict[str, list[str]]:
    pool = upstream_root / "debian/pool/main/h"
    pool.mkdir(parents=True)
    for name in ("hello_1.0_amd64.deb", "world_2.0_amd64.deb"):
        (pool / name).write_bytes(DEB)
    return {"debian": [f"{upstream.url}/debian"]}


def rendered(app: Appliance) -> str:
    """The page as headless Chromium has it, after its 5 s refresh has run once."""
    r = chromium("--virtual-time-budget=7000", "--dump-dom", f"{app.url}/")
    assert r.returncode == 0, r.stderr
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    return r.stdout


def figure(dom: str, key: str) -> str:
    m = re.search(rf'<figure[^>]*id="chart-{key}".*?</figure>', dom, re.S)
    assert m, f"#chart-{key} is not on the page"
    return m.group(0)


def summary(chart: str) -> str:
    m = re.search(r'class="chart-sum">([^<]*)<', chart)
    assert m, chart
    return m.group(1).replace("&nbsp;", " ")


def test_history_survives_a_restart(
    start_appliance: StartAppliance, remaps: dict[str, list[str]], tmp_path: Path
) -> None:
    """`workers: 2`: each worker keeps its own file, and what `/api/status` and the page
    show is the merge of both histories, restored ones included, so both workers count
    some of the traffic. Worker 1 also starts from an earlier run's history (two older
    points): the workers' histories differ in length, so only points matched by time
    (not by position) add up to the exact counts."""
    cache = tmp_path / "cache"
    (cache / ".state").mkdir(parents=True)
    t0 = int(time.time())
    older = [[t0 - 7200, 10, 5, 1000, 2000], [t0 - 1800, 20, 6, 3000, 4000]]
    (cache / ".state/history-1.json").write_text(json.dumps({**FORMAT, "points": older}))
    seeded = dict(zip(FIELDS, older[-1][1:], strict=True))
    app = start_appliance(remaps, cache_dir=cache, extra={"workers": 2})
    socks = _sockets(app, 2)
    clients = Clients(app)
    for path in (HELLO, WORLD):
        assert clients.get(path)[0] == 200  # misses
    time.sleep(0.3)  # committed: what follows are hits
    _until_both(socks, clients, HELLO, lambda d: d["requests"]["apt"]["hit"])
    hits, misses = clients.results["hit"], clients.results["miss"]
    assert misses == 2 and clients.bytes["upstream"] == 2 * len(DEB)
    traffic = {
        "hits": hits,
        "misses": misses,
        "bytes_cache": clients.bytes["cache"],
        "bytes_upstream": clients.bytes["upstream"],
    }
    want = {k: seeded[k] + traffic[k] for k in FIELDS}
    old_point = {"t": older[-1][0], **seeded}  # worker 0 had counted nothing by then

    before = app.status()
    assert before["requests"]["apt"]["hit"] == hits  # since the start
    assert old_point in before["history"]
    assert {k: before["history"][-1][k] for k in FIELDS} == want
    app.stop()
    assert app.proc.returncode == 0, app.log_text()
    stopped = time.time()
    saved = [json.loads((cache / f".state/history-{i}.json").read_text()) for i in (0, 1)]
    assert all(doc["fields"] == ["t", *FIELDS] for doc in saved), saved
    last = [dict(zip(FIELDS, doc["points"][-1][1:], strict=True)) for doc in saved]
    assert {k: last[0][k] + last[1][k] for k in FIELDS} == want, saved  # each its own

    again = start_appliance(remaps, cache_dir=cache, extra={"workers": 2})
    deadline = time.monotonic() + 20
    while (status := again.status())["workers"] < 2:  # the old sockets are still there
        assert time.monotonic() < deadline, again.log_text()
        time.sleep(0.1)
    assert status["requests"]["apt"]["hit"] == 0  # counted since this start: nothing yet
    history = status["history"]
    assert old_point in history and history[0]["t"] <= stopped, history
    assert {k: history[-1][k] for k in FIELDS} == want  # now: the same counts, not 0
    assert all(a["t"] < b["t"] for a, b in itertools.pairwise(history))
    assert all(a["hits"] <= b["hits"] for a, b in itertools.pairwise(history))
    assert "history:" not in again.log_text()

    # both charts: the traffic and what the older run added 30 min ago (its first point,
    # 2 h ago, is where its counts stood: nothing of it is drawn as traffic)
    require("chromium", "chromium")
    dom = rendered(again)
    shown = {k: want[k] - older[0][1 + i] for i, k in enumerate(FIELDS)}
    for key in ("hour", "day"):
        chart = figure(dom, key)
        ratio = shown["hits"] / (shown["hits"] + shown["misses"]) * 100
        assert summary(chart) == (
            f"{human_size(shown['bytes_cache'])} from cache, "
            f"{human_size(shown['bytes_upstream'])} from upstream, "
            f"{shown['hits']} hits, {shown['misses']} misses, hit ratio {ratio:.1f} %"
        )
        assert f"hit ratio {ratio:.1f}&nbsp;%<" in chart  # a narrow card never breaks it
        assert "<rect" in chart and "<polyline" in chart  # bars and the hit ratio line


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff not json at all",
        b'{"format": "archive-local history", "version": 1, "fields": ["t", "hits", "mis',
        b'{"version": 1, "points": [[1, 2, 3, 4, 5]]}',  # not ours
        b'{"format": "archive-local history", "version": 99, "points": []}',  # a newer one
        json.dumps(  # counts that go down
            {
                "format": "archive-local history",
                "version": 1,
                "fields": ["t", "hits", "misses", "bytes_cache", "bytes_upstream"],
                "points": [[1e9, 5, 0, 0, 0], [1e9 + 60, 1, 0, 0, 0]],
            }
        ).encode(),
        b"[" * 100_000,  # nested too deep for the JSON parser
    ],
    ids=["garbage", "truncated", "foreign", "future", "decreasing", "deep"],
)
def test_a_bad_history_file_is_ignored(
    start_appliance: StartAppliance, remaps: dict[str, list[str]], tmp_path: Path, content: bytes
) -> None:
    cache = tmp_path / "cache"
    (cache / ".state").mkdir(parents=True)
    (cache / ".state/history-0.json").write_bytes(content)
    app = start_appliance(remaps, cache_dir=cache)
    history = app.status()["history"]
    assert all(p["hits"] == p["misses"] == p["bytes_cache"] == 0 for p in history), history
    assert http_get(f"{app.url}{HELLO}")[0] == 200  # it serves
    assert app.status()["history"][-1]["misses"] == 1
    app.stop()
    log = app.log_text()
    lines = [line for line in log.splitlines() if "history:" in line]
    assert len(lines) == 1 and "history-0.json" in lines[0], log
    assert "Traceback" not in log, log
    doc = json.loads((cache / ".state/history-0.json").read_text())  # replaced at the stop
    assert doc["format"] == "archive-local history" and doc["points"][-1][2] == 1, doc


def test_the_charts_have_axes_and_a_legend(
    start_appliance: StartAppliance, remaps: dict[str, list[str]]
) -> None:
    require("chromium", "chromium")
    app = start_appliance(remaps)
    for path in (HELLO, WORLD):
        assert http_get(f"{app.url}{path}")[0] == 200
    time.sleep(0.3)
    assert http_get(f"{app.url}{HELLO}")[0] == 200
    dom = rendered(app)
    now = time.time()
    for key, title, tick in (("hour", "Last hour", 15), ("day", "Last 24 h", 240)):
        chart = figure(dom, key)
        assert f"<b>{title}</b>" in chart
        times = re.findall(r'class="time-tick"[^>]*>([^<]*)<', chart)
        assert len(times) >= 4, chart
        minutes = [int(t[:2]) * 60 + int(t[3:]) for t in times]
        assert all((b - a) % 1440 == tick for a, b in itertools.pairwise(minutes))
        at = time.gmtime(now)
        behind = (at.tm_hour * 60 + at.tm_min - minutes[-1] + 720) % 1440 - 720
        assert -15 <= behind < tick, times  # the last tick: at most the chart's end
        values = re.findall(r'class="value-tick"[^>]*>([^<]*)<', chart)
        sizes = [v for v in values if not v.endswith("%")]
        assert [v for v in values if v.endswith("%")] == ["50 %", "100 %"], values
        assert len(sizes) == 2 and all(re.fullmatch(r"\d+(\.\d)? (B|KiB|MiB)", v) for v in sizes)
        for label in ("bytes served from cache", "bytes fetched upstream", "hit ratio"):
            assert label in chart
        assert "<rect" in chart and "<polyline" in chart
        # the text is in CSS px whatever the page's width: the outer SVG has no viewBox
        outer = re.search(r"<svg[^>]*>", chart)
        assert outer and "viewBox" not in outer.group(0), chart
        fonts = {int(f) for f in re.findall(r'font-size="(\d+)"', chart)}
        assert fonts and min(fonts) >= 11, fonts
