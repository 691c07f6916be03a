"""Metrics (promtool, a real Prometheus), the status page (headless Chromium), the admin API
and the access log, against known traffic."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.configs import write_config
from tests.conftest import CURL_STATUS, Appliance, StartAppliance, free_port, http_get, require
from tests.upstream import Upstream

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
DEB = b"\x21" * 50_000


@pytest.fixture
def app(upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance) -> Appliance:
    pool = upstream_root / "debian/pool/main/h"
    pool.mkdir(parents=True)
    for name in ("hello_1.0_amd64.deb", "world_2.0_amd64.deb"):
        (pool / name).write_bytes(DEB)
    return start_appliance({"debian": [f"{upstream.url}/debian"]})


def traffic(app: Appliance) -> None:
    """Known traffic: 2 misses, 3 hits, 1 refused, 1 upstream 404 (error)."""
    base = f"{app.url}/debian/pool/main/h"
    for name in ("hello_1.0_amd64.deb", "world_2.0_amd64.deb"):
        assert http_get(f"{base}/{name}")[0] == 200  # miss
    time.sleep(0.3)  # committed
    for _ in range(2):
        assert http_get(f"{base}/hello_1.0_amd64.deb")[0] == 200  # hit
    assert http_get(f"{base}/world_2.0_amd64.deb")[0] == 200  # hit
    assert http_get(f"{app.url}/nosuchremap/x.deb")[0] == 403  # refused
    assert http_get(f"{base}/missing_1_amd64.deb")[0] == 404  # upstream says 404


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    raise AssertionError(f"{name}{{{want}}} not in metrics")


def test_metrics_are_valid_and_count_known_traffic(app: Appliance) -> None:
    require("promtool", "prometheus")
    traffic(app)
    code, body = http_get(f"{app.url}/metrics")
    assert code == 200
    text = body.decode()
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    assert metric(text, "archive_local_requests_total", service="apt", result="miss") == 2
    assert metric(text, "archive_local_requests_total", service="apt", result="hit") == 3
    assert metric(text, "archive_local_requests_total", service="apt", result="refused") == 1
    assert metric(text, "archive_local_requests_total", service="apt", result="error") == 1
    assert metric(text, "archive_local_served_bytes_total", source="cache") == 3 * len(DEB)
    assert metric(text, "archive_local_served_bytes_total", source="upstream") == 2 * len(DEB)
    hosts = set(
        re.findall(
            r'archive_local_upstream_request_duration_seconds_count\{upstream="([^"]+)"', text
        )
    )
    assert len(hosts) == 1
    [host] = hosts
    assert metric(text, "archive_local_upstream_request_duration_seconds_count", upstream=host) == 3
    assert (
        metric(text, "archive_local_upstream_errors_total", upstream=host, reason="not-found") == 1
    )
    assert metric(text, "archive_local_cache_entries") == 2
    assert metric(text, "archive_local_cache_size_bytes") == 2 * len(DEB)
    assert metric(text, "archive_local_downloads_in_flight") == 0
    assert all(n.startswith("archive_local_") for n in re.findall(r"^# TYPE (\w+)", text, re.M))
    assert "hello_1.0_amd64.deb" not in text  # never a raw path or URL as a label


def test_a_real_prometheus_scrapes_the_hit_counts(app: Appliance, tmp_path: Path) -> None:
    require("prometheus", "prometheus")
    traffic(app)
    port = free_port()
    target = app.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {"job_name": "archive-local", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        query = 'sum(archive_local_requests_total{service="apt",result="hit"})'
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        deadline = time.monotonic() + 60
        value = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    result = json.loads(r.read())["data"]["result"]
                if result:
                    value = float(result[0]["value"][1])
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert value == 3, (tmp_path / "prometheus.log").read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        require("chromium", "chromium")
    return subprocess.run(
        [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_page_in_headless_chromium(app: Appliance) -> None:
    require("chromium", "chromium")
    traffic(app)
    # 7 s of virtual time: the page's 5 s refresh has run once when the DOM is dumped
    r = chromium("--virtual-time-budget=7000", "--dump-dom", f"{app.url}/")
    assert r.returncode == 0, r.stderr
    dom = r.stdout

    def shown(id_: str) -> str:
        m = re.search(rf'id="{id_}">([^<]*)<', dom)
        assert m, f"#{id_} not on the page"
        return m.group(1)

    assert shown("req-apt-hit") == "3" and shown("req-apt-miss") == "2"
    assert shown("req-apt-refused") == "1" and shown("req-apt-error") == "1"
    assert shown("hit-ratio") == "60.0 %"
    assert shown("bytes-saved") == "146.5&nbsp;KiB"  # IEC, as sizes are configured; no wrap
    assert "1.0&nbsp;GiB" in dom and "1.1&nbsp;GB" not in dom  # max_size: 1GiB
    assert "hello_1.0_amd64.deb" in dom  # busiest packages
    assert "<polyline" in dom and "<rect" in dom  # the chart: hit ratio and bytes saved
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    ARTIFACTS.mkdir(exist_ok=True)
    for name, size in (("status-wide.png", "1280,900"), ("status-phone.png", "390,844")):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        r = chromium(f"--window-size={size}", f"--screenshot={shot}", f"{app.url}/")
        assert r.returncode == 0 and shot.stat().st_size > 5000, r.stderr
    # the fragment the page re-fetches is the same markup, without the page around it
    req = urllib.request.Request(
        f"{app.url}/", headers={"Accept": "text/html", "X-Status-Fragment": "1"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        fragment = resp.read().decode()
    assert fragment.startswith("<section>") and 'id="req-apt-hit">3<' in fragment
    # apt and curl (no text/html) get apt-cacher-ng's `406 Usage Information` with the index
    code, body = http_get(f"{app.url}/")
    assert code == 406 and body.startswith(b"archive-local")


def test_status_json_and_cli(app: Appliance) -> None:
    traffic(app)
    s = app.status()
    assert s["requests"]["apt"]["hit"] == 3 and s["hit_ratio"] == 0.6
    assert s["busiest"][0] == {"package": "hello_1.0_amd64.deb", "requests": 3}
    [(_host, health)] = s["upstreams"].items()
    assert health["requests"] == 3 and health["errors"] == 1 and health["last_error"] == "not-found"
    cfg = write_config(
        app.cache_dir.parent / "status.yaml", {"listen": app.url.removeprefix("http://")}
    )
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(cfg), "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "hit ratio 60.0 %" in r.stdout and "apt     hit 3, miss 2" in r.stdout
    assert "(max 1.0 GiB)" in r.stdout, r.stdout  # max_size 1GiB, in the units it was written
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--url", app.url, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(r.stdout)["requests"]["apt"]["miss"] == 2


def test_admin_api_needs_the_token(app: Appliance) -> None:
    token_file = app.cache_dir.parent / f"admin-token-{app.port}"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert app.admin("purge", {"remap": "debian"}, token="wrong-token-xxxxxxxxxx")[0] == 401
    req = urllib.request.Request(f"{app.url}/api/admin/purge", method="POST", data=b"{}")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("no token accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401 and exc.headers["WWW-Authenticate"].startswith("Bearer")
    traffic(app)
    assert app.admin("purge", {"path": "/debian/pool/main/h/hello_1.0_amd64.deb"}) == (
        200,
        b'{"removed": 1}',
    )
    assert app.admin("purge", {"path": "/debian/pool/main/h/hello_1.0_amd64.deb"})[0] == 404
    code, body = app.admin("purge", {"remap": "debian"})
    assert code == 200 and json.loads(body)["removed"] >= 1
    assert app.status()["cache"]["entries"] == 0
    assert app.admin("purge", {"remap": "nope"})[0] == 404
    assert app.admin("purge", {"path": "/x", "remap": "debian"})[0] == 400
    assert app.admin("sync")[0] == 409  # no feeds configured: says so
    assert app.admin("nothing")[0] == 404
    assert 'reason="admin API: missing or wrong bearer token"' in access_log(app)


def access_log(app: Appliance) -> str:
    time.sleep(1.5)  # written once a second
    return app.log_text()


def test_access_log_lines_and_reload(app: Appliance, upstream: Upstream) -> None:
    traffic(app)
    log = access_log(app)
    hit = re.search(
        r"^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "
        r'"GET /debian/pool/main/h/world_2.0_amd64.deb HTTP/1.1" 200 50000 "-" "[^"]*" HIT [\d.]+$',
        log,
        re.M,
    )
    assert hit, log
    assert re.search(r'"GET /nosuchremap/x.deb HTTP/1.1" 403 \d+ .* reason="forbidden: [^"]+"', log)
    # reload: a new remap answers without a restart; a broken file changes nothing
    cfg_path = next(app.cache_dir.parent.glob("config-*.yaml"))
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["apt"]["remaps"]["other"] = [f"{upstream.url}/debian"]
    cfg["logging"] = {"access_log": "off"}
    write_config(cfg_path, cfg)
    code, body = app.admin("reload")
    assert code == 200 and json.loads(body)["restart_needed_for"] == ["logging"]
    assert http_get(f"{app.url}/other/pool/main/h/hello_1.0_amd64.deb")[0] == 200
    cfg_path.write_text("apt: [not, a, mapping]\n")
    code, body = app.admin("reload")
    assert code == 400 and b"nothing changed" in body
    assert http_get(f"{app.url}/other/pool/main/h/hello_1.0_amd64.deb")[0] == 200


def test_json_logs(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    (upstream_root / "debian").mkdir()
    (upstream_root / "debian/f.deb").write_bytes(b"x" * 10)
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]}, extra={"logging": {"format": "json"}}
    )
    assert http_get(f"{app.url}/debian/f.deb")[0] == 200
    assert http_get(f"{app.url}/elsewhere/f.deb")[0] == 403
    lines = [json.loads(line) for line in access_log(app).splitlines() if line.startswith("{")]
    access = [r for r in lines if "path" in r]
    assert {(r["path"], r["status"], r["cache"]) for r in access} >= {
        ("/debian/f.deb", 200, "MISS"),
        ("/elsewhere/f.deb", 403, None),
    }
    assert any(r.get("reason", "").startswith("forbidden") for r in access)
    assert any(r.get("logger") == "appliance" and "serving on" in r["message"] for r in lines)


def test_admin_api_is_not_reachable_from_another_host_by_default(
    upstream: Upstream, start_appliance: StartAppliance
) -> None:
    from tests.netns import veth_pair

    require("curl", "curl")
    with veth_pair("adm", 41) as net:
        default = start_appliance({"debian": [f"{upstream.url}/debian"]}, host=net.host_addr)
        opened = start_appliance(
            {"debian": [f"{upstream.url}/debian"]},
            host=net.host_addr,
            extra={
                "admin": {
                    "token_file": str(default.cache_dir.parent / "shared-token"),
                    "allow": [f"{net.ns_addr}/32"],
                }
            },
        )

        def post(app: Appliance, token: str) -> str:
            r = net.run(
                *CURL_STATUS,
                "-X",
                "POST",
                "-H",
                f"Authorization: Bearer {token}",
                "-d",
                '{"remap": "debian"}',
                f"http://{net.host_addr}:{app.port}/api/admin/purge",
            )
            return r.stdout

        assert post(default, default.token) == "403"  # right token, wrong place
        status = net.run(
            *CURL_STATUS,
            f"http://{net.host_addr}:{default.port}/api/status",
        )
        assert status.stdout == "200"  # the status page is for everyone
        shared = (default.cache_dir.parent / "shared-token").read_text().strip()
        assert post(opened, shared) == "200"  # allowed network + token
        assert post(opened, "x" * 40) == "401"


def test_well_known_shows_the_key_once_it_exists(
    tmp_path: Path, start_appliance: StartAppliance
) -> None:
    app = start_appliance(
        {"debian": ["http://127.0.0.1:9/debian"]}, images={"gnupg_home": str(tmp_path / "gnupg")}
    )
    doc = json.loads(http_get(f"{app.url}/.well-known/archive-local")[1])
    assert doc["service"] == "archive-local" and doc["images"]["key_fingerprint"] is None
    cfg = next(tmp_path.glob("config-*.yaml"))
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(cfg), "keys", "--create", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    fingerprint = json.loads(r.stdout)["fingerprint"]
    doc = json.loads(http_get(f"{app.url}/.well-known/archive-local")[1])
    assert doc["images"]["key_fingerprint"] == fingerprint  # no restart needed
