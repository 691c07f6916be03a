"""The status page after a whole day-one workload, against real components: apt-get through
two remaps (two upstreams of a signed repository), a sync of a signed image feed, a seed
into a real Glance and two EC2 regions (moto), a refused request and a download refused
for bytes its index does not list. The page as headless Chromium shows it, `/api/status`
and `archive-local status --json` must hold each figure the test knows, exactly.

The service runs `workers: 2`, pinned (not `auto`): every count is the sum over two
processes, and the images and seed figures are the primary's, whichever worker answers.
"""

from __future__ import annotations

import http.client
import json
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from appliance.web import holdings
from tests.aptclient import AptClient
from tests.aptrepo import AptRepo
from tests.components import ec2_endpoint as moto_server
from tests.components import glance as glance_server
from tests.conftest import FILTERS, StartAppliance, http_get, require
from tests.e2e.cache.test_workers import _sockets
from tests.e2e.targets.test_seed_ec2 import (  # noqa: F401 (fixtures)
    amis,
    clients,
    ec2_target,
    eucarc,
    moto,
    moto_endpoint,
    tags,
)
from tests.e2e.targets.test_seed_glance import (  # noqa: F401 (fixtures)
    glance_pair,
    glance_target,
    glances,
    images_of,
    token_file,
)
from tests.e2e.web.test_observability import chromium
from tests.feed import Feed
from tests.upstream import Upstream

REGIONS = ("us-east-1", "eu-west-1")
NEWEST = "20240301"  # the targets keep one version (max_items 1); the feed mirrors two


@pytest.fixture
def mirror(apt_repo: AptRepo, tmp_path: Path) -> Any:
    """A second upstream with its own copy of the repository: the second remap's."""
    root = tmp_path / "mirror-root"
    shutil.copytree(apt_repo.root, root / "debian")
    server = Upstream(root).start()
    yield server
    server.close()


class Dom(HTMLParser):
    """What the page shows: the text of each element with an id (and its attributes), and
    each table row as its cells' texts."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.ids: dict[str, tuple[dict[str, str | None], str]] = {}
        self.rows: list[list[str]] = []
        self._open: list[str] = []  # the ids of the elements open around the text ("": none)
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "meta", "link", "img", "input"):
            return
        a = dict(attrs)
        key = a.get("id") or ""
        if key:
            self.ids[key] = (a, "")
        self._open.append(key)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("br", "meta", "link", "img", "input") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for key in set(self._open) - {""}:
            attrs, text = self.ids[key]
            self.ids[key] = (attrs, text + data)
        if self.rows and self.rows[-1]:
            self.rows[-1][-1] += data

    def text(self, key: str) -> str:
        assert key in self.ids, f"#{key} not on the page"
        return self.ids[key][1]


def test_the_page_shows_a_whole_workload_exactly(
    tmp_path: Path,
    apt_repo: AptRepo,
    upstream: Upstream,
    mirror: Upstream,
    qcow_feed: Feed,
    qcow_served: Upstream,
    glance_pair: list[glance_server.Glance],  # noqa: F811
    moto: moto_server.Moto,  # noqa: F811
    eucarc: tuple[Path, Any],  # noqa: F811
    start_appliance: StartAppliance,
) -> None:
    require("chromium", "chromium")
    g = glance_pair[0]
    targets = [
        glance_target("glance", g, token_file(tmp_path), max_items=1),
        ec2_target("euca", moto, eucarc[0], regions=list(REGIONS), max_items=1),
    ]
    feed = {"name": "ex", "url": qcow_served.url + "/", "keyring": str(qcow_feed.key.keyring)}
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"], "mirror": [f"{mirror.url}/debian"]},
        images={"feeds": [{**feed, "filters": FILTERS}]},
        extra={"workers": 2, "seed": {"after_sync": True, "targets": targets}},
    )
    _sockets(app, 2)
    # apt-get through each remap (the primary syncs and seeds meanwhile)
    for remap in ("debian", "mirror"):
        apt = AptClient(tmp_path / remap, f"{app.url}/{remap}", apt_repo.keyring, apt_repo.arch)
        r = apt.update()
        assert r.returncode == 0, r.stdout + r.stderr
        r = apt.download("al-hello")
        assert r.returncode == 0, r.stdout + r.stderr
    hello = "/" + str(apt_repo.debs["al-hello"].relative_to(apt_repo.root.parent))
    assert http_get(f"{app.url}{hello}")[0] == 200  # a hit
    assert http_get(f"{app.url}/nosuchremap/x.deb")[0] == 403  # refused
    app.wait_indexes(3)
    tools = mirror.root / str(apt_repo.debs["al-tools"].relative_to(apt_repo.root.parent))
    tools.write_bytes(b"\0" * tools.stat().st_size)  # same size, other bytes
    tools_path = "/mirror/" + str(tools.relative_to(mirror.root / "debian"))
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
    conn.request("GET", tools_path)
    answer = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead):  # refused at its end: never completed
        answer.read()
    deadline = time.monotonic() + 120  # the primary synced at start, then seeded
    while True:
        s = app.status()
        if len(s["seed"]["targets"]) == 2 and not s["seed"]["running"]:
            break
        assert time.monotonic() < deadline, app.log_text()
        time.sleep(0.5)

    # what the test knows. Every apt request was a first one (a miss, one upstream GET each)
    # but the hit; the refused one never reached an upstream.
    assert {r.status for r in [*upstream.requests, *mirror.requests]} == {200}
    misses = len(upstream.requests) + len(mirror.requests)  # the rejected download too
    assert misses == 7  # InRelease, Packages (by hash), al-hello twice; al-tools
    apt_counts = {"hit": 1, "miss": misses, "revalidated": 0, "stale": 0, "error": 0}
    apt_counts["refused"] = 1
    host = {u: f"127.0.0.1:{u.port}" for u in (upstream, mirror, qcow_served)}
    health = {  # a download refused at its end counts again, as a failed exchange
        host[upstream]: (len(upstream.requests), 0),
        host[mirror]: (len(mirror.requests) + 1, 1),
        host[qcow_served]: (len(qcow_served.requests), 0),  # the sync's
    }
    places = [("glance", "RegionOne"), *(("euca", r) for r in REGIONS)]
    seeded: dict[tuple[str, str, str], str] = {}  # (product, version, place) -> image id
    for image in images_of(g).values():
        seeded[image.product_name, image.version_name, "glance/RegionOne"] = image.id
    for region in REGIONS:
        for ami in amis(clients(moto, region)[0]):
            t = tags(ami)
            seeded[t["product_name"], t["version_name"], f"euca/{region}"] = ami["ImageId"]
    products = sorted({p for p, _, _ in seeded})
    assert len(products) == 2 and len(seeded) == 2 * 3  # one version, three places
    rows = [(p, v) for p in products for v in (NEWEST, "20240101")]  # newest first
    matrix = [
        [seeded.get((p, v, f"{t}/{r}")) for t, r in places] for p, v in rows
    ]  # None: the older version is mirrored (the feed keeps two) but no target wants it

    api = app.status()
    cli = app.cli("status", "--json")
    assert cli.returncode == 0, cli.stderr
    text = app.cli("status")
    assert text.returncode == 0, text.stderr
    r = chromium("--virtual-time-budget=2000", "--dump-dom", f"{app.url}/")
    assert r.returncode == 0, r.stderr
    page = Dom(r.stdout)

    for doc in (api, json.loads(cli.stdout)):
        assert doc["workers"] == 2
        assert doc["requests"]["apt"] == apt_counts
        assert (
            doc["requests"]["images"]
            == doc["requests"]["feed"]
            == dict.fromkeys(("hit", "miss", "revalidated", "stale", "error", "refused"), 0)
        )
        assert {h: (u["requests"], u["errors"]) for h, u in doc["upstreams"].items()} == health
        assert doc["integrity"]["rejected_downloads"] == 1
        assert [e["level"] for e in doc["events"] if "/nosuchremap/x.deb" in e["message"]] == [
            "refused"
        ]
        assert any(
            "al-tools_0.5_all.deb failed: sha256 mismatch" in e["message"] for e in doc["events"]
        )
        assert {n: o["ok"] for n, o in doc["seed"]["targets"].items()} == {
            "glance": True,
            "euca": True,
        }
        assert {n: o["ok"] for n, o in doc["sync"]["feeds"].items()} == {"ex": True}
        c = doc["clouds"]
        assert [(t["target"], t["region"]) for t in c["targets"]] == places
        assert [(i["product"], i["version"], i["feed"]) for i in c["images"]] == [
            (p, v, "ex") for p, v in rows
        ]
        assert [[x and (x["state"], x["id"]) for x in i["cells"]] for i in c["images"]] == [
            [ident and ("present", ident) for ident in line] for line in matrix
        ]
        assert c["counts"] == {"present": 6, "pending": 0, "failed": 0, "pruned": 0}
        # at a glance: the bytes the hit saved; the mirror's last exchange failed
        assert doc["glance"]["saved"]["start"] == doc["bytes"]["cache"] > 0
        assert doc["glance"]["upstreams"]["failing"] == [host[mirror]]
        # what is cached: each remap's index and al-hello; the rejected al-tools is not
        groups = {holdings.name(r): r["files"] for r in doc["cached"]["apt"]}
        assert groups["debian test main amd64"] == groups["mirror test main amd64"] == 2, groups

    # the page, as Chromium shows it
    for result, n in apt_counts.items():
        assert page.text(f"req-apt-{result}") == str(n), result
    for h, (requests, errors) in health.items():
        assert [h, str(requests), str(errors)] in [row[:3] for row in page.rows]
    assert ["downloads refused (wrong size or digest)", "1"] in page.rows
    events = page.text("events")
    assert "403 GET /nosuchremap/x.deb" in events
    assert "al-tools_0.5_all.deb failed: sha256 mismatch" in events
    for i, line in enumerate(matrix):
        for j, ident in enumerate(line):
            if ident is None:
                assert f"cloud-{i}-{j}" not in page.ids  # shown as "-"
                continue
            attrs, shown = page.ids[f"cloud-{i}-{j}"]
            assert (attrs["class"], shown) == ("s-present", f"present{ident}")
    assert page.text("clouds-counts") == "6 present, 0 pending, 0 failed, 0 pruned"
    jobs = {(row[0], row[1]): row[2] for row in page.rows if row[:1] in (["sync"], ["seed"])}
    assert jobs == {("sync", "ex"): "ok", ("seed", "glance"): "ok", ("seed", "euca"): "ok"}

    # `archive-local status`
    assert "  apt     " + ", ".join(f"{k} {v}" for k, v in apt_counts.items()) in text.stdout
    for (p, v), line in zip(rows, matrix, strict=True):
        where = ", ".join(
            f"{t}/{r} present {ident}" for (t, r), ident in zip(places, line, strict=True) if ident
        )
        assert f"image ex {p} {v}: {where or 'not seeded'}\n" in text.stdout
