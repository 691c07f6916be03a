"""The status page's layout in real headless Chromium: at a phone's, a laptop's and a wide
screen's width no card or table is wider than its room and nothing scrolls sideways; package
names read as apt names them (decoded), upstream-controlled text stays text."""

from __future__ import annotations

import html
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from appliance.web.status import render_page
from tests.conftest import Appliance, StartAppliance, http_get, require
from tests.e2e.web.test_observability import ARTIFACTS, chromium
from tests.upstream import Upstream

DEB = b"\x21" * 20_000
PLUS = "bash_5.2.15-2+b13_amd64.deb"  # apt asks for bash_5.2.15-2%2bb13_amd64.deb
LONG = "libreoffice-help-common-and-then-some-more-words_4:24.2.7-1+deb13u1~bpo12+1_all.deb"
HOSTILE = "<script>document.title='pwned'</script>"
WIDTHS = (390, 1280, 1920)

# Appended to a copy of the page: the page's CSS is inline, so the copy lays out as the page
# does. It runs in a frame of the width under test (headless Chromium's window is never
# narrower than 500 px) and hands its verdict to the frame's parent, which writes it into
# the DOM that --dump-dom prints.
CHECK = """<script>
addEventListener('load', () => {
  const bad = [], doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth)
    bad.push(`document ${doc.scrollWidth}>${doc.clientWidth}`);
  const name = el => el.tagName + (el.className ? '.' + el.className : '')
    + ' in ' + (el.closest('section')?.querySelector('h2')?.textContent || '-');
  // cells too: a number or heading spilling into its neighbour (names are cut on purpose)
  for (const el of document.querySelectorAll('section, .card, table, th, td'))
    if (el.scrollWidth > el.clientWidth && getComputedStyle(el).textOverflow != 'ellipsis')
      bad.push(`${name(el)} ${el.scrollWidth}>${el.clientWidth}`);
  for (const card of document.querySelectorAll('section, .card')) {
    const c = card.getBoundingClientRect();
    for (const el of card.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width && (r.left < c.left - 0.5 || r.right > c.right + 0.5))
        bad.push(`${name(el)} ${r.left}..${r.right} outside ${c.left}..${c.right}`);
    }
  }
  parent.postMessage({width: innerWidth, bad}, '*');
});
</script>"""

# The page at `width` CSS px, scaled to fill the window (as a phone's pixel ratio does).
FRAME = """<!doctype html><html><body style="margin:0;overflow:hidden">
<iframe src="{page}" style="border:0;width:{width}px;height:{height}px;
transform:scale({scale});transform-origin:0 0"></iframe>
<script>
addEventListener('message', e => {{
  document.body.dataset.width = e.data.width;
  document.body.dataset.overflow = JSON.stringify(e.data.bad);
}});
</script></body></html>"""


def framed(page: str, width: int, tmp_path: Path, name: str, height: int = 900) -> tuple[Path, int]:
    """A file showing `page` `width` px wide, and the window width to open it at."""
    (tmp_path / f"{name}.html").write_text(page.replace("</body>", CHECK + "</body>"))
    window = max(width, 500)
    scale = window / width
    frame = tmp_path / f"{name}-{width}.html"
    frame.write_text(
        FRAME.format(page=f"{name}.html", width=width, height=int(height / scale), scale=scale)
    )
    return frame, window


@pytest.fixture
def app(upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance) -> Appliance:
    for letter, name in (("h", "hello_1.0_amd64.deb"), ("b", PLUS), ("libr", LONG)):
        pool = upstream_root / "debian/pool/main" / letter
        pool.mkdir(parents=True, exist_ok=True)
        (pool / name).write_bytes(DEB)
    return start_appliance({"debian": [f"{upstream.url}/debian"]})


def workload(app: Appliance) -> None:
    """Misses then hits, names as apt spells them in URLs (%2b, %3a), an upstream 404."""
    base = f"{app.url}/debian/pool/main"
    paths = (
        "h/hello_1.0_amd64.deb",
        "b/bash_5.2.15-2%2bb13_amd64.deb",
        "libr/" + urllib.parse.quote(LONG, safe="~").replace("%2B", "%2b"),
    )
    for path in paths:
        assert http_get(f"{base}/{path}")[0] == 200, path
    time.sleep(0.3)  # committed
    for path in paths:
        assert http_get(f"{base}/{path}")[0] == 200, path
    assert http_get(f"{base}/m/missing_1_amd64.deb")[0] == 404  # an upstream error


def browser_page(app: Appliance) -> str:
    req = urllib.request.Request(f"{app.url}/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def with_long_text(s: dict[str, Any]) -> dict[str, Any]:
    """The service's own snapshot plus what a bad day adds and a test upstream cannot
    produce: a long upstream name and reason, big counts, failed jobs with long errors,
    long image names, a long download, all carrying markup."""
    now = time.time()
    s["upstreams"]["mirror-with-a-rather-long-name.internal.example.org:8443"] = {
        "requests": 123456789,
        "errors": 1234567,
        "last_ok": now - 30,
        "last_error": f"{HOSTILE} connect: Cannot connect to host "
        "mirror-with-a-rather-long-name.internal.example.org:8443 ssl:default "
        "[Connection refused]",
        "last_error_at": now - 5,
        "last_seconds": 0.5,
        "median_seconds": 12.3456,  # the widest a median shows: "12.35 s"
        "state": "failing",
    }
    g = s["glance"]
    g["upstreams"]["failing"].append(f"{HOSTILE}mirror-with-a-rather-long-name.example.org")
    g["saved"] = dict.fromkeys(g["saved"], 1023 * 2**40)  # "1023.0 TiB"
    g["disk"] = {"used": 1023 * 2**30, "max": 2 * 2**40, "free": 10**12, "total": 2 * 10**12}
    s["busiest"].append(
        {"package": "%3Cscript%3Edocument.title%3D'pwned'%3C/script%3E", "requests": 1}
    )
    s["downloads"].append(
        {
            "key": f"debian/pool/main/l/{LONG}",
            "written": 123456789,
            "total": 987654321,
            "clients": 12,
            "seconds": 1234.5,
        }
    )
    error = f"{HOSTILE} https://cloud-images.example.org/releases/streams/v1/index.sjson: " * 3
    s["sync"]["feeds"]["ubuntu-cloud-images-releases-and-dailies"] = {
        "ok": False,
        "error": error,
        "seconds": 12345.6,
    }
    s["seed"]["targets"]["openstack-region-one-production"] = {
        "ok": False,
        "error": error,
        "seconds": 1.5,
    }
    s["events"] = [
        {
            "time": now - 3,
            "level": "refused",
            "source": "mirror-with-a-rather-long-name.internal.example.org",
            "message": f"403 GET http://evil.example/{HOSTILE}{'a' * 120} Not a configured "
            "upstream: evil.example",
        },
        *s.get("events", []),
    ]
    s["clients"] = [
        {
            "address": "2001:db8:1234:5678:9abc:def0:1234:5678",
            "agent": f"{HOSTILE} Debian APT-HTTP/1.3 (2.6.1) non-interactive some-long-suffix",
            "requests": 1234567890,
            "bytes": 1023 * 2**30,
            "last_seen": now - 86_000,  # "1433 min ago"
        },
        *s.get("clients", []),
    ]
    s["cached"]["apt"] += [
        {
            "remap": "mirror-with-a-rather-long-name.internal.example.org:8443/debian",
            "suite": f"{HOSTILE}bookworm-proposed-updates-backports-sloppy",
            "component": "non-free-firmware",
            "arch": "source",
            "files": 1234567890,
            "bytes": 1023 * 2**40,
            "hits": 1234567890,
            "last_use": now - 86_000,
        }
        for _ in range(40)  # more than the page lists: a "more" line
    ]
    s["cached"]["images"].append(
        {
            "feed": f"{HOSTILE}ubuntu-cloud-images-releases-and-dailies",
            "images": 12345,
            "files": 1234567,
            "bytes": 1023 * 2**40,
            "hits": 1234567890,
            "last_use": None,
        }
    )
    s["images"] = [
        {"feed": "ubuntu-cloud-images-releases", "product": None, "versions": [], "error": error},
        {
            "feed": "ubuntu-cloud-images-releases",
            "product": "com.ubuntu.cloud:server:24.04:amd64-with-a-long-suffix",
            "versions": [
                {
                    "version": "20240423.really.long.version.string",
                    "items": 3,
                    "bytes": 1023 * 2**30,
                    "seeded": [
                        {"target": f"openstack-{r}", "region": f"RegionNumber{r}", "id": "x"}
                        for r in range(4)
                    ],
                }
            ],
        },
    ]
    # six places (five Glance regions and an EC2 region), every state, a product name,
    # a target and an error carrying markup
    states = [
        {"state": "present", "id": "0b6d5a4e-2c1f-4a8e-9d3b-7f1e2a3c4d5e", "error": None},
        {"state": "pending", "id": None, "error": None, "note": "not uploaded yet"},
        {"state": "failed", "id": None, "error": error},
        {"state": "pruned", "id": "ami-0123456789abcdef0", "error": None},
        None,
        {"state": "present", "id": "ami-0fedcba9876543210", "error": None},
    ]
    s["clouds"] = {
        "targets": [
            {
                "target": f"openstack-region-{r}-production{HOSTILE if r == 2 else ''}",
                "type": "glance" if r < 5 else "ec2",
                "region": f"RegionNumber{r}" if r < 5 else "ap-southeast-2",
                "configured": r != 4,
            }
            for r in range(6)
        ],
        "images": [
            {
                "feed": "ubuntu-cloud-images-releases",
                "product": f"{HOSTILE}com.ubuntu.cloud:server:24.04:amd64-with-a-long-suffix",
                "version": f"2024042{n}.really.long.version.string",
                "mirrored": n > 0,
                "cells": states[n:] + states[:n],
            }
            for n in range(3)
        ],
        "errors": [{"feed": "ubuntu-cloud-images-daily", "error": error}],
        "counts": {"present": 6, "pending": 3, "failed": 3, "pruned": 3},
    }
    return s


def verdict(page: str, width: int, tmp_path: Path, name: str) -> list[str]:
    """What in `page` is wider than its room at `width` px, as Chromium lays it out."""
    frame, window = framed(page, width, tmp_path, name)
    r = chromium(
        f"--window-size={window},900", "--virtual-time-budget=2000", "--dump-dom", frame.as_uri()
    )
    assert r.returncode == 0, r.stderr
    body = re.search(r"<body([^>]*)>", r.stdout)
    assert body, r.stdout[:2000]
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))
    assert attrs.get("width") == str(width), (attrs, r.stderr)  # laid out that wide
    return json.loads(html.unescape(attrs["overflow"]))


def test_nothing_is_wider_than_its_card_at_phone_laptop_and_wide_widths(
    app: Appliance, tmp_path: Path
) -> None:
    require("chromium", "chromium")
    workload(app)
    pages = {"live": browser_page(app), "long": render_page(with_long_text(app.status()))}
    problems = {
        f"{name} at {width} px": bad
        for name, page in pages.items()
        for width in WIDTHS
        if (bad := verdict(page, width, tmp_path, name))
    }
    assert problems == {}
    ARTIFACTS.mkdir(exist_ok=True)
    for width, height in zip(WIDTHS, (1800, 900, 900), strict=True):  # a phone scrolls down
        shot = ARTIFACTS / f"status-{width}.png"
        shot.unlink(missing_ok=True)
        frame, window = framed(pages["long"], width, tmp_path, "long", height)
        r = chromium(
            f"--window-size={window},{height}",
            "--virtual-time-budget=2000",
            f"--screenshot={shot}",
            frame.as_uri(),
        )
        assert r.returncode == 0 and shot.stat().st_size > 5000, r.stderr


def test_package_names_are_decoded_and_still_escaped(app: Appliance, tmp_path: Path) -> None:
    require("chromium", "chromium")
    workload(app)
    live = browser_page(app)
    file = tmp_path / "long.html"
    file.write_text(render_page(with_long_text(app.status())))
    for url in (f"{app.url}/", file.as_uri()):
        r = chromium("--virtual-time-budget=2000", "--dump-dom", url)
        assert r.returncode == 0, r.stderr
        dom = r.stdout
        assert f">{PLUS}</td>" in dom and f">{html.escape(LONG, quote=False)}</td>" in dom
        assert "%2b" not in dom.lower() and "%3a" not in dom.lower()
        assert "<title>archive-local</title>" in dom  # no upstream script ran
    assert f'title="{html.escape(LONG)}"' in live  # the whole name where the cell cuts it
    # markup in a package name (decoded here) or an upstream's reason shows as text
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert HOSTILE not in file.read_text()
