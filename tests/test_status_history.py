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
from tests.test_observability import chromium
from tests.test_worker_figures import Clients, _own, _until_both
from tests.test_workers import _sockets
from tests.upstream import Upstream

DEB = b"\x21" * 50_000
POOL = "/debian/pool/main/h"
HELLO, WORLD = f"{POOL}/hello_1.0_amd64.deb", f"{POOL}/world_2.0_amd64.deb"


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
    show after the restart is the merge of both restored histories (matched by time), so
    both workers must have counted some of the traffic."""
    cache = tmp_path / "cache"
    app = start_appliance(remaps, cache_dir=cache, extra={"workers": 2})
    socks = _sockets(app, 2)
    clients = Clients(app)
    for path in (HELLO, WORLD):
        assert clients.get(path)[0] == 200  # misses
    time.sleep(0.3)  # committed: what follows are hits
    _until_both(socks, clients, HELLO, lambda d: d["requests"]["apt"]["hit"])
    assert all(_own(s)["history"][-1]["hits"] > 0 for s in socks)  # both counted some
    hits, misses = clients.results["hit"], clients.results["miss"]
    assert misses == 2 and clients.bytes["upstream"] == 2 * len(DEB)
    before = app.status()["history"]
    want = {
        "hits": hits,
        "misses": misses,
        "bytes_cache": clients.bytes["cache"],
        "bytes_upstream": clients.bytes["upstream"],
    }
    assert {k: before[-1][k] for k in want} == want
    app.stop()
    assert app.proc.returncode == 0, app.log_text()
    stopped = time.time()
    for i in (0, 1):
        doc = json.loads((cache / f".state/history-{i}.json").read_text())
        assert doc["format"] == "archive-local history" and doc["points"], doc

    again = start_appliance(remaps, cache_dir=cache, extra={"workers": 2})
    _sockets(again, 2)
    status = again.status()
    assert status["workers"] == 2
    assert status["requests"]["apt"]["hit"] == 0  # counted since this start: nothing yet
    history = status["history"]
    restored = [p for p in history if p["t"] <= stopped]
    assert restored, history
    assert {k: restored[-1][k] for k in want} == want  # the last point before the stop
    assert {k: history[-1][k] for k in want} == want  # and now: nothing since
    assert all(a["t"] < b["t"] for a, b in itertools.pairwise(history))
    assert all(a["hits"] <= b["hits"] for a, b in itertools.pairwise(history))
    assert "history: ignoring" not in again.log_text()

    require("chromium", "chromium")
    dom = rendered(again)
    for key in ("hour", "day"):
        chart = figure(dom, key)
        assert summary(chart) == (
            f"{human_size(hits * len(DEB))} from cache, 97.7 KiB from upstream, "
            f"{hits} hits, 2 misses, hit ratio {hits / (hits + 2) * 100:.1f} %"
        )
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
