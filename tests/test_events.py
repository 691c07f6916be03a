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
