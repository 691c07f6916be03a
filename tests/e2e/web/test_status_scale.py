"""The status page of a big cache: 10,000 cached files and 200 published images.

It stays one page an operator can load on a phone: under 100 KB, every section there, the
long lists cut to their busiest rows with what was left out counted. Its render time is a
benchmark figure (`make bench-status`), not asserted here.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from appliance.web.clouds import PAGE_ROWS
from tests.bigcache import all_workers_status, fill_apt, publish_images, unreachable_targets
from tests.conftest import StartAppliance, Upstream

ENTRIES, IMAGES = 10_000, 200
PAGE_LIMIT = 100 * 1024


def page(url: str) -> bytes:
    req = urllib.request.Request(f"{url}/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
        return r.read()


def test_the_page_of_a_big_cache_stays_small_and_whole(
    tmp_path: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    remaps = {
        "debian": [f"{upstream.url}/debian"],
        "ubuntu": [f"{upstream.url}/ubuntu"],
        "security": [f"{upstream.url}/debian-security"],
    }
    cache = tmp_path / "cache"
    cache.mkdir()
    fill_apt(cache, {n: u[0] for n, u in remaps.items()}, ENTRIES)
    targets = unreachable_targets(tmp_path)  # every image pending in three places
    # the defaults: `workers: auto` (the figures are the merged ones)
    app = start_appliance(
        remaps,
        cache_dir=cache,
        max_size="50GiB",
        extra={"workers": "auto", "seed": {"after_sync": False, "targets": targets}},
    )
    publish_images(app.config, tmp_path, IMAGES)
    status = all_workers_status(app.url, app.config)
    assert status["cache"]["entries"] == ENTRIES  # published images are kept, not counted
    assert sum(len(p["versions"]) for p in status["images"]) == IMAGES
    assert status["clouds"]["counts"]["pending"] == 3 * IMAGES
    body = page(app.url)
    assert len(body) < PAGE_LIMIT, len(body)
    text = body.decode()
    for heading in (
        "At a glance",
        "Over time",
        "What is cached",
        "Upstream health",
        "Images and clouds",
        "Use it",
        "Recent events",
    ):
        assert f"<h2>{heading}</h2>" in text, heading
    # the long lists are cut, and say by how much
    assert text.count('class="s-pending"') == 3 * PAGE_ROWS
    assert f"… {IMAGES - PAGE_ROWS} more images" in text
