"""The status page's "Recent events": the last warnings, errors and refused requests, with
their time and reason, merged over the workers (`workers: 2`: the merge is part of what is
tested) and escaped like every string a client or an upstream chose."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import StartAppliance, http_get
from tests.upstream import Upstream

TAMPERED = "/debian/dists/x/main/binary-all/by-hash/SHA256/" + hashlib.sha256(b"x").hexdigest()
EVIL = "http://evil.example/<script>alert(1)</script>.deb"


def _status(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/status", timeout=10) as r:
        return json.loads(r.read())


def test_recent_events_show_refusals_and_rejections_from_every_worker(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    (upstream_root / TAMPERED.lstrip("/")).parent.mkdir(parents=True)
    (upstream_root / TAMPERED.lstrip("/")).write_bytes(b"not x")
    app = start_appliance({"debian": [f"{upstream.url}/debian"]}, extra={"workers": 2})
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    conn.request("GET", EVIL)
    assert conn.getresponse().status == 403
    conn.close()
    for _ in range(4):  # whichever worker answers: each logs what it refused
        with contextlib.suppress(OSError, http.client.HTTPException):  # (a cut transfer)
            http_get(app.url + TAMPERED)
    events = _status(app.url)["events"]
    refused = [e for e in events if e["level"] == "refused"]
    assert refused and "403 GET http://evil.example/<script>" in refused[0]["message"], events
    assert "Not a configured upstream: evil.example" in refused[0]["message"]
    rejected = [e for e in events if e["level"] == "warning" and TAMPERED in e["message"]]
    assert rejected, events
    assert [e["time"] for e in events] == sorted((e["time"] for e in events), reverse=True)
    req = urllib.request.Request(app.url + "/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(req, timeout=10) as page:
        html = page.read().decode()
    assert '<table id="events">' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    r = subprocess.run(  # the terminal's rendering of the same document
        [sys.executable, "-m", "appliance", "status", "--url", app.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and "recent events (" in r.stdout, r.stderr
    assert "warning " in r.stdout and TAMPERED in r.stdout, r.stdout


def test_clients_of_the_last_day_are_counted_over_every_worker(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    """Which instances use the cache: requests and bytes per address and client, the sum
    over the workers (`workers: 2`, each answering some of the requests)."""
    (upstream_root / "debian/pool").mkdir(parents=True)
    (upstream_root / "debian/pool/a.deb").write_bytes(b"a" * 1000)
    app = start_appliance({"debian": [f"{upstream.url}/debian"]}, extra={"workers": 2})
    for _ in range(6):  # a new connection each: the workers share them
        req = urllib.request.Request(
            app.url + "/debian/pool/a.deb", headers={"User-Agent": "Debian APT-HTTP/1.3 (2.6.1)"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.read() == b"a" * 1000
    [row] = _status(app.url)["clients"]
    assert (row["address"], row["agent"], row["requests"], row["bytes"]) == (
        "127.0.0.1",
        "apt 2.6.1",
        6,
        6000,
    )
    req = urllib.request.Request(app.url + "/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(req, timeout=10) as page:
        html = page.read().decode()
    assert '<table id="clients"><tr><th>address</th>' in html and "apt 2.6.1" in html
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--url", app.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "client 127.0.0.1 (apt 2.6.1): 6 requests, 5.9 KiB in 24 h" in r.stdout, r.stdout
