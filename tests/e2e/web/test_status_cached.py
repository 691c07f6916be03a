"""The status page's "What is cached": after real apt-get through two remaps and a sync of a
feed, each remap's suite/component/architecture shows the files and bytes it holds (a pool
file placed by the Packages index that lists it: its path names no suite or architecture),
the hits it served and its last use, and each feed its images; the same in `/api/status`
and `archive-local status`. A cache of 10,000 entries is grouped in under a second and its
section stays small (the largest groups, then one "more" line)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from appliance.apt.catalog import IndexCatalog
from appliance.cache.store import FilesystemStore, Meta
from appliance.config import human_size
from appliance.web import holdings
from appliance.web.status.tables import ago as _ago
from appliance.web.status.tables import size as _bytes
from appliance.web.status.tables import table as _table
from tests.aptclient import AptClient
from tests.aptrepo import SUITE, AptRepo
from tests.conftest import FILTERS, ITEM_SIZE, Appliance, StartAppliance
from tests.e2e.cache.test_workers import _sockets
from tests.e2e.web.test_worker_figures import Clients, _own, _until_both
from tests.feed import Feed
from tests.upstream import Upstream


def _apt(doc: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {holdings.name(r): (r["files"], r["bytes"]) for r in doc["cached"]["apt"]}


def _hits(doc: dict[str, Any], name: str) -> int:
    return next((r["hits"] for r in doc["cached"]["apt"] if holdings.name(r) == name), 0)


def _wait(check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def test_what_is_cached_per_remap_suite_and_feed_summed_over_workers(
    apt_repo: AptRepo,
    upstream_root: Path,
    upstream: Upstream,
    feed: Feed,
    served: Upstream,
    start_appliance: StartAppliance,
    tmp_path: Path,
) -> None:
    shutil.copytree(upstream_root / "debian", upstream_root / "debian2")  # a second archive
    feed_entry = {
        "name": "ex",
        "url": served.url + "/",
        "keyring": str(feed.key.keyring),
        "filters": FILTERS,
        "max_items": 1,  # the newest jammy and noble amd64 disk images: 2
    }
    app: Appliance = start_appliance(
        {"debian": [f"{upstream.url}/debian"], "debian2": [f"{upstream.url}/debian2"]},
        cache_dir=tmp_path / "cache",
        images={"feeds": [feed_entry]},
        # what `auto` gives on two cores, written out: each worker counts the hits it
        # serves and the figures must be the exact sums on any machine
        extra={"workers": 2},
    )
    socks = _sockets(app, 2)
    arch = apt_repo.arch
    for remap, packages in (("debian", ("al-tools",)), ("debian2", ("al-hello",))):
        apt = AptClient(tmp_path / f"apt-{remap}", f"{app.url}/{remap}", apt_repo.keyring, arch)
        assert apt.update().returncode == 0
        r = apt.download(*packages)
        assert r.returncode == 0, r.stdout + r.stderr
    # what the cache must hold: what apt fetched (InRelease for the suite; the Packages
    # index it chose and the packages, both of main on this architecture)
    fetched = {r.path for r in upstream.requests if r.status == 200}
    want: dict[str, tuple[int, int]] = {}
    for path in sorted(fetched):
        remap, _, rest = path[1:].partition("/")
        main = rest.startswith((f"dists/{SUITE}/main/binary-{arch}/", "pool/main/"))
        name = f"{remap} {SUITE} main {arch}" if main else f"{remap} {SUITE}"
        assert main or rest == f"dists/{SUITE}/InRelease", path
        files, size = want.get(name, (0, 0))
        want[name] = (files + 1, size + (upstream_root / path[1:]).stat().st_size)
    assert want[f"debian {SUITE} main {arch}"][0] == 3  # an index, al-hello, al-tools
    assert want[f"debian2 {SUITE} main {arch}"][0] == 2  # an index, al-hello

    # hits: a package asked again until each worker has served it (new connections: the
    # kernel spreads them), each worker's own document counting its own
    group = f"debian {SUITE} main {arch}"
    before = time.time()
    clients = Clients(app)
    hello = "/debian/pool/main/a/al-hello/al-hello_1.0_all.deb"
    hits = _until_both(socks, clients, hello, lambda d: _hits(d, group))
    own = [_hits(_own(s), group) for s in socks]
    assert min(own) > 0 and sum(own) == hits  # both served some: the merge adds them up

    _wait(lambda: app.status()["sync"]["feeds"].get("ex", {}).get("ok"))
    feed_files = [p for p in (tmp_path / "cache/_images/ex").rglob("*") if p.is_file()]
    feed_files = [p for p in feed_files if not p.name.startswith(".")]
    images = {
        "feed": "ex",
        "images": 2,
        "files": 2 + len(feed_files),
        "bytes": 2 * ITEM_SIZE + sum(p.stat().st_size for p in feed_files),
    }

    def settled() -> dict[str, Any] | None:
        doc = app.status()
        ex = [r for r in doc["cached"]["images"] if r["feed"] == "ex"]
        found = ex and {k: ex[0][k] for k in images} == images
        return doc if _apt(doc) == want and found else None

    api = _wait(settled)
    cli = json.loads(app.cli("status", "--json").stdout)
    text = app.cli("status").stdout
    page = clients.open("/", {"Accept": "text/html"}).read().decode()
    for doc in (api, cli):
        assert doc["workers"] == 2
        assert _apt(doc) == want
        rows = {holdings.name(r): r for r in doc["cached"]["apt"]}
        assert {n: r["hits"] for n, r in rows.items()} == {
            n: hits if n == group else 0 for n in want
        }
        assert rows[group]["last_use"] >= before  # the hits' time, not the download's
        assert all(r["last_use"] <= time.time() for r in rows.values())
        ex = next(r for r in doc["cached"]["images"] if r["feed"] == "ex")
        assert {k: ex[k] for k in images} == images and ex["hits"] == 0
        assert doc["cached"]["files"] >= sum(f for f, _ in want.values()) + images["files"]
    # the page: one row per group, figures as the document has them; the feed's images
    files, size = want[group]
    assert (
        f'<tr title="{group}"><td>{group}</td><td class=n>{files}</td>'
        f"<td class=n>{_bytes(size)}</td><td class=n>{hits}</td>"
    ) in page
    for name, (files, size) in want.items():
        assert f"<td>{name}</td><td class=n>{files}</td><td class=n>{_bytes(size)}</td>" in page
    assert (
        f"<td>ex</td><td class=n>2</td><td class=n>{_bytes(images['bytes'])}</td><td class=n>0</td>"
    ) in page
    # `archive-local status`
    files, size = want[group]
    assert f"  {group}: {files} files, {human_size(size)}, {hits} hits, last use" in text
    assert f"  images ex: 2 images, {human_size(images['bytes'])}" in text


def test_ten_thousand_entries_are_grouped_by_the_indexes_that_list_them(tmp_path: Path) -> None:
    """40 suites of 250 packages each (what their Packages indexes list), on a real store
    and apt index table: each in its suite's group, and the page lists the 30 largest
    groups. How long it takes is a benchmark figure (`make bench-status`), not a test's."""
    root = tmp_path / "cache"
    store = FilesystemStore(root)
    catalog = IndexCatalog(root, store)
    body = b"\x00" * 100
    digest = hashlib.sha256(body).hexdigest()
    base = "mirror.example/debian"
    # every package and its sidecar are hard links of one file and one sidecar: writing
    # 20,000 files one by one takes many seconds on a busy disk, and the grouping reads
    # names, sizes and times only
    first = root / base / "pool/main/p/first.deb"
    first.parent.mkdir(parents=True)
    first.write_bytes(body)
    meta = Meta(f"http://{base}/pool/main/p/first.deb", len(body), 1e9, 1e9, sha256=digest)
    sidecar = first.with_name(".first.deb.meta")
    sidecar.write_text(json.dumps(meta.to_dict()))
    indexes = {}
    for s in range(40):
        paragraphs = []
        for i in range(250):
            path = f"pool/main/p/pkg{s}-{i}_1.0_all.deb"
            os.link(first, root / base / path)
            os.link(sidecar, root / base / f"pool/main/p/.pkg{s}-{i}_1.0_all.deb.meta")
            paragraphs.append(f"Package: p{s}-{i}\nFilename: {path}\nSize: 100\nSHA256: {digest}\n")
        index = indexes[s] = "\n".join(paragraphs).encode()
        key = f"{base}/dists/suite{s:02d}/main/binary-amd64/Packages"
        (root / key).parent.mkdir(parents=True)
        (root / key).write_bytes(index)  # as `commit` leaves it, without its fsyncs
        sha = hashlib.sha256(index).hexdigest()
        meta = Meta(f"http://{key}", len(index), 1e9 + s, 1e9 + s, sha256=sha)
        (root / key).with_name(".Packages.meta").write_text(json.dumps(meta.to_dict()))
    keys = [f"{base}/dists/suite{s:02d}/main/binary-amd64/Packages" for s in indexes]
    assert asyncio.run(catalog.rebuild(keys)) == 40  # as the service learns what it found
    try:
        grouping = holdings.compute(store, catalog.listed_by, [(base, "debian")])
        doc = holdings.Holdings().document(grouping)
        section = holdings.render(doc, _table, _bytes, _ago)
    finally:
        catalog.close()
    assert doc["files"] == 1 + 40 * 251 and len(doc["apt"]) == 41  # and first.deb: other
    rows = {holdings.name(r): (r["files"], r["bytes"]) for r in doc["apt"]}
    assert rows == {
        "debian other": (1, 100),
        **{
            f"debian suite{s:02d} main amd64": (251, 250 * 100 + len(index))
            for s, index in indexes.items()
        },
    }
    assert section.count("<tr title=") == holdings.SHOWN
    assert '<p class="muted" id="cached-more">… 11 more: ' in section
    assert len(section) < 20_000
