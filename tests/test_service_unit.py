"""A real service (issue 12): /healthz and the drain switch, SIGTERM that drains, the
systemd unit checked by systemd-analyze and run by a real systemd in private namespaces
after a real `make install`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

import pytest

from tests.conftest import StartAppliance, require
from tests.systemd_ns import SystemdNamespace
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parent.parent
PIP_OFFLINE = "--no-deps --no-index"


def _health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_and_the_drain_switch(start_appliance: StartAppliance, tmp_path: Path) -> None:
    app = start_appliance({"debian": ["http://127.0.0.1:9/debian"]})
    assert _health(app.url) == (200, {"status": "serving", "problems": [], "downloads": 0})
    code, body = app.admin("drain", {"drain": True})
    assert (code, json.loads(body)) == (200, {"draining": True})
    assert _health(app.url)[0] == 503 and _health(app.url)[1]["status"] == "draining"
    assert app.admin("drain", {"drain": "yes"})[0] == 400
    off = app.cli("drain", "--off", "--json")
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout) == {"draining": False}
    assert _health(app.url)[0] == 200
    # the cache directory stops being usable (a disk gone, a path that is now a file)
    shutil.rmtree(app.cache_dir)
    app.cache_dir.write_text("not a directory")
    deadline = time.monotonic() + 10
    while (health := _health(app.url))[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health[0] == 503 and health[1]["status"] == "unhealthy", health
    assert str(app.cache_dir) in health[1]["problems"][0]


def test_sigterm_drains_transfers_and_exits_0(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    data = os.urandom(3_000_000)
    (upstream_root / "debian/pool").mkdir(parents=True)
    (upstream_root / "debian/pool/slow.deb").write_bytes(data)
    upstream.rate["/debian/pool/slow.deb"] = 1_000_000  # ~3 s
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]}, extra={"limits": {"drain_timeout": "20s"}}
    )
    got: dict[str, object] = {}

    def client() -> None:
        try:
            with urllib.request.urlopen(f"{app.url}/debian/pool/slow.deb", timeout=30) as r:
                got["body"] = r.read()
        except Exception as exc:  # recorded for the assertion
            got["error"] = exc

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.8)  # mid-transfer
    app.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):  # no longer listening: a load balancer's retry goes elsewhere
        socket.create_connection(("127.0.0.1", app.port), 1).close()
    t.join(30)
    assert "error" not in got, got.get("error")
    assert hashlib.sha256(got["body"]).digest() == hashlib.sha256(data).digest()  # type: ignore[arg-type]
    assert app.proc.wait(30) == 0
    assert "draining 1 connections" in app.log_text()


# --- the unit -------------------------------------------------------------------------


def _source_copy(dest: Path) -> Path:
    """What `make install` needs of the project, copied (pip builds in the source tree)."""
    dest.mkdir(parents=True)
    shutil.copytree(
        ROOT / "appliance", dest / "appliance", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "Makefile"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def _wheel(src: Path) -> Path:
    """The project's wheel, built from the copy (as a release or the charm would)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(src / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    [wheel] = (src / "dist").glob("archive_local-*.whl")
    return wheel


def _make_install(src: Path, *args: str, runner) -> None:  # type: ignore[no-untyped-def]
    """`make install` of the built wheel, offline (its dependencies come from elsewhere)."""
    argv = [
        "make",
        "-C",
        str(src),
        "install",
        "INSTALL_PYTHON=/usr/bin/python3",
        f"PACKAGE={_wheel(src)}",
        f"PIP_INSTALL_ARGS={PIP_OFFLINE}",
        *args,
    ]
    out = runner(argv)
    assert out.returncode == 0, out.stdout + out.stderr


def test_make_install_writes_a_unit_systemd_analyze_accepts(tmp_path: Path) -> None:
    require("systemd-analyze", "systemd")
    src = _source_copy(tmp_path / "src")
    prefix, etc, units = tmp_path / "opt/archive-local", tmp_path / "etc", tmp_path / "units"
    _make_install(
        src,
        f"PREFIX={prefix}",
        f"SYSCONFDIR={etc}",
        f"UNITDIR={units}",
        "ACTIVATE=no",
        runner=lambda argv: subprocess.run(argv, capture_output=True, text=True, timeout=300),
    )
    unit = units / "archive-local.service"
    text = unit.read_text()
    assert f"ExecStart={prefix}/bin/archive-local serve --config {etc}/config.yaml" in text
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes"):
        assert hardening in text
    assert (etc / "config.yaml").is_file()
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    # the installed console script is the package, not a copy of the tree
    version = subprocess.run(
        [str(prefix / "bin/python"), "-c", "import appliance, sys; print(appliance.__file__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
        cwd=tmp_path,
    )
    assert str(prefix) in version.stdout


def _curl(ns: SystemdNamespace, url: str, out: str) -> subprocess.Popen[str]:
    assert ns.pid is not None
    return subprocess.Popen(
        [
            "nsenter",
            "-t",
            str(ns.pid),
            "-m",
            "-p",
            "-n",
            "-u",
            "-i",
            "curl",
            "-sS",
            "-o",
            out,
            "-w",
            "%{http_code} %{size_download}",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _install_offline(ns: SystemdNamespace, src: Path) -> None:
    """`make install ACTIVATE=no` inside; the packages archive-local depends on come from
    the test's own venv (no network there), bound where the service user can read them
    whatever the checkout's path."""
    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    _make_install(src, "ACTIVATE=no", runner=lambda argv: ns.run(*argv, check=False, timeout=300))
    ns.run("mkdir", "-p", "/opt/test-deps")
    ns.run("mount", "--bind", "-o", "ro", str(site), "/opt/test-deps")
    [own] = ns.run("sh", "-c", "ls -d /opt/archive-local/lib/python3*/site-packages").stdout.split()
    ns.write(f"{own}/test-deps.pth", "/opt/test-deps\n")


def _healthz(ns: SystemdNamespace, port: int, timeout: float = 20) -> str:
    """The /healthz status code inside, once it is 200 or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        code = ns.run(
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{port}/healthz",
            check=False,
        ).stdout
        if code == "200" or time.monotonic() > deadline:
            return code
        time.sleep(0.3)


def test_the_unit_under_a_real_systemd(systemd: SystemdNamespace, tmp_path: Path) -> None:
    """`make install` inside the namespaces (user, unit, daemon-reload, enable --now), then:
    /healthz 200, a reload by SIGHUP (ExecReload) under a transfer that completes, and a
    stop that lets a transfer finish and ends with exit status 0."""
    ns = systemd
    src = _source_copy(tmp_path / "src")
    files = tmp_path / "upstream/debian/pool"
    files.mkdir(parents=True)
    blobs = {name: os.urandom(3_000_000) for name in ("reload.deb", "stop.deb")}
    for name, data in blobs.items():
        (files / name).write_bytes(data)
    ns.run(
        "systemd-run",
        "--unit=slow-upstream",
        sys.executable,
        str(ROOT / "tests/slow_upstream.py"),
        "127.0.0.1",
        "8000",
        str(tmp_path / "upstream"),
        "1000000",
    )
    ns.write(
        "/etc/archive-local/config.yaml",
        "listen: 127.0.0.1:3142\n"
        "apt: {remaps: {debian: ['http://127.0.0.1:8000/debian']}}\n"
        "discovery: {mdns: false}\n"
        "limits: {drain_timeout: 20s}\n",
    )
    _install_offline(ns, src)
    inside = lambda argv: ns.run(*argv, check=False, timeout=300)  # noqa: E731
    _make_install(src, runner=inside)  # again, for real: user, daemon-reload, enable --now
    code = _healthz(ns, 3142)
    if code != "200":
        show = ns.run("systemctl", "status", "archive-local", "--no-pager", check=False).stdout
        raise AssertionError(f"/healthz never answered 200 ({code}): {show}")
    assert ns.run("id", "-u", "archive-local").returncode == 0
    assert (
        ns.run("systemctl", "show", "archive-local", "-p", "User", "--value").stdout.strip()
        == "archive-local"
    )

    reload_client = _curl(ns, "http://127.0.0.1:3142/debian/pool/reload.deb", "/run/reload.deb")
    time.sleep(0.8)
    ns.run("systemctl", "reload", "archive-local")  # ExecReload: SIGHUP
    out, err = reload_client.communicate(timeout=60)
    assert out == "200 3000000", err
    body = ns.run("sha256sum", "/run/reload.deb").stdout.split()[0]
    assert body == hashlib.sha256(blobs["reload.deb"]).hexdigest()
    assert ns.run("systemctl", "is-active", "archive-local").stdout.strip() == "active"

    stop_client = _curl(ns, "http://127.0.0.1:3142/debian/pool/stop.deb", "/run/stop.deb")
    time.sleep(0.8)
    ns.run("systemctl", "stop", "archive-local", timeout=90)
    out, err = stop_client.communicate(timeout=60)
    assert out == "200 3000000", err  # drained, not cut
    body = ns.run("sha256sum", "/run/stop.deb").stdout.split()[0]
    assert body == hashlib.sha256(blobs["stop.deb"]).hexdigest()
    show = ns.run(
        "systemctl", "show", "archive-local", "-p", "Result", "-p", "ExecMainStatus"
    ).stdout
    assert "Result=success" in show and "ExecMainStatus=0" in show, show


DRIVE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from workload import Workload
done = Workload().apply(json.loads(sys.argv[2]))
print(json.dumps({"unit": done.unit_changed, "config": done.config_changed, "action": done.action}))
"""


def test_the_charms_workload_drives_a_real_systemd(
    systemd: SystemdNamespace, tmp_path: Path
) -> None:
    """The charm's own workload code, run inside the namespaces: its first apply writes the
    unit and config and starts the service; a reloadable change reloads it (same PID); a
    port change restarts it; the same options again change nothing."""
    ns = systemd
    src = _source_copy(tmp_path / "src")
    _install_offline(ns, src)
    ns.run(
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/var/lib/archive-local",
        "--shell",
        "/usr/sbin/nologin",
        "archive-local",
    )
    options = {"port": 3142, "mdns": False, "cache-size": "1GiB", "admin-allow": "127.0.0.0/8"}

    def apply(**changes: object) -> dict:
        out = ns.run(
            sys.executable,
            "-c",
            DRIVE,
            str(ROOT / "charm/src"),
            json.dumps({**options, **changes}),
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def pid() -> str:
        return ns.run(
            "systemctl", "show", "archive-local", "-p", "MainPID", "--value"
        ).stdout.strip()

    # make install wrote the same unit; the config differs where a reload cannot apply it
    assert apply() == {"unit": False, "config": True, "action": "restart"}
    assert ns.run("systemctl", "is-enabled", "archive-local").stdout.strip() == "enabled"
    assert _healthz(ns, 3142) == "200"
    first = pid()
    assert apply(**{"cache-size": "2GiB"}) == {"unit": False, "config": True, "action": "reload"}
    assert _healthz(ns, 3142) == "200" and pid() == first  # reloaded, not restarted
    assert apply(**{"cache-size": "2GiB"}) == {"unit": False, "config": False, "action": None}
    assert apply(**{"cache-size": "2GiB", "port": 3199}) == {
        "unit": False,
        "config": True,
        "action": "restart",
    }
    assert _healthz(ns, 3199) == "200" and pid() != first
