"""A real service (issue 12): /healthz and the drain switch, SIGTERM that drains, the
systemd unit checked by systemd-analyze (its `security` exposure included) and run by a
real systemd in private namespaces after a real `make install`, with its sandbox in
effect (system call filter, /proc, memory bound) while it serves."""

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

from tests.conftest import CURL_STATUS, FILTERS, StartAppliance, require
from tests.feed import build_feed
from tests.systemd_ns import SystemdNamespace
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parents[3]
PIP_OFFLINE = "--no-deps --no-index"
# `systemd-analyze security`'s overall exposure of the unit (0 best, 10 worst): what is
# left is the network, which the service is for (docs/security.md)
EXPOSURE = 1.5
HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources",
    "ProtectProc=invisible",
    "ProcSubset=pid",
    "MemoryHigh=",
    "MemoryMax=",
)

# its --threshold (in tenths) fails the command above EXPOSURE
SECURITY = ("systemd-analyze", "security", "--no-pager", f"--threshold={round(EXPOSURE * 10)}")


def _exposure(out: subprocess.CompletedProcess[str]) -> float:
    """The overall exposure level `systemd-analyze security` gives the unit."""
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    [line] = [x for x in out.stdout.splitlines() if "Overall exposure level" in x]
    return float(line.split(":")[1].split()[0])


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
    if out.returncode != 0:  # the service's own words on why it did not start
        said = [
            runner(["systemctl", "status", "--no-pager", "-l", "archive-local"]),
            runner(["journalctl", "-u", "archive-local", "--no-pager", "-n", "40"]),
        ]
        raise AssertionError(out.stdout + out.stderr + "".join(s.stdout for s in said))


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
    for hardening in HARDENING:
        assert hardening in text
    assert (etc / "config.yaml").is_file()
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    security = [*SECURITY, "--offline=yes", str(unit)]
    assert _exposure(subprocess.run(security, capture_output=True, text=True)) <= EXPOSURE
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
        code = ns.run(*CURL_STATUS, f"http://127.0.0.1:{port}/healthz", check=False).stdout
        if code == "200" or time.monotonic() > deadline:
            return code
        time.sleep(0.3)


def _show(ns: SystemdNamespace, unit: str, *props: str) -> dict[str, str]:
    out = ns.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def _status(ns: SystemdNamespace) -> dict:
    return json.loads(ns.run("curl", "-sS", "http://127.0.0.1:3142/api/status").stdout)


MDNS_LOOKUP = """
import asyncio
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
async def main():
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    info = AsyncServiceInfo("_apt_proxy._tcp.local.", "archive._apt_proxy._tcp.local.")
    found = await info.async_request(zc.zeroconf, 5000)
    await zc.async_close()
    print(info.port if found else None)
asyncio.run(main())
"""

# run under the unit's own sandbox (its [Service] section): what the service runs that the
# test does not otherwise (qemu-img, for `method: ebs` seeding; setting the open files
# limit, as `serve` does when a drop-in's soft limit is lower: glibc's prlimit64 is not in
# @resources), and a system call the filter refuses (setpriority)
PROBE = """
cd /tmp
qemu-img create -q -f qcow2 probe.qcow2 16M && qemu-img convert -f qcow2 -O raw probe.qcow2 \
  probe.raw && qemu-img info --output=json probe.raw | grep -q '"format": "raw"' && echo qemu-img
/opt/archive-local/bin/python -c 'import resource as r; r.setrlimit(r.RLIMIT_NOFILE, (512, 512))' \
  && echo setrlimit
/opt/archive-local/bin/python -c 'import os; os.nice(1)' 2>&1 | grep -o 'Operation not permitted'
"""


def _probe_unit(ns: SystemdNamespace) -> str:
    """PROBE's output, run once as a oneshot copy of the installed unit."""
    unit = ns.run("cat", "/etc/systemd/system/archive-local.service").stdout
    service, _install = unit.split("[Install]")
    lines = [
        line
        for line in service.splitlines()
        if not line.startswith(("Type=", "ExecStart=", "ExecReload=", "Restart="))
    ]
    ns.write("/run/probe.sh", PROBE)
    lines += [
        "Type=oneshot",
        "ExecStart=/bin/sh /run/probe.sh",
        "StandardOutput=file:/run/probe.out",
        "StandardError=inherit",
    ]
    ns.write("/run/systemd/system/archive-local-probe.service", "\n".join(lines) + "\n")
    ns.run("systemctl", "daemon-reload")
    ns.run("systemctl", "start", "archive-local-probe", check=False, timeout=120)
    return ns.run("cat", "/run/probe.out").stdout


def _check_the_sandbox(ns: SystemdNamespace) -> None:
    """The new hardening in effect on the running service, not only written in the unit:
    every process filtered, /proc reduced to the service's own, the memory bound set in
    the cgroup; `systemd-analyze security` of the loaded unit."""
    show = _show(
        ns,
        "archive-local",
        "MainPID",
        "ControlGroup",
        "ProtectProc",
        "ProcSubset",
        "SystemCallErrorNumber",
        "MemoryHigh",
        "MemoryMax",
        "OOMPolicy",
    )
    assert show["ProtectProc"] == "invisible" and show["ProcSubset"] == "pid", show
    assert show["SystemCallErrorNumber"] in ("1", "EPERM") and show["OOMPolicy"] == "continue", show
    high, limit = int(show["MemoryHigh"]), int(show["MemoryMax"])
    [total] = [
        int(line.split()[1]) * 1024
        for line in ns.run("cat", "/proc/meminfo").stdout.splitlines()
        if line.startswith("MemTotal:")
    ]
    assert 0 < high < limit < total, show
    cgroup, page = Path("/sys/fs/cgroup"), os.sysconf("SC_PAGESIZE")
    if (cgroup / "cgroup.controllers").exists():  # unified: both bounds
        applied = {
            name: int(ns.run("cat", f"{cgroup}{show['ControlGroup']}/memory.{name}").stdout)
            for name in ("high", "max")
        }
        assert applied == {"high": high // page * page, "max": limit // page * page}, applied
    else:  # legacy: systemd applies MemoryMax as the memory controller's limit
        path = f"{cgroup}/memory{show['ControlGroup']}/memory.limit_in_bytes"
        assert int(ns.run("cat", path).stdout) == limit // page * page

    # `workers: auto` still counts every core (ProcSubset=pid hides /proc/cpuinfo and stat)
    # the master's own children, by name (a worker's subprocess, gpg, carries the
    # worker's name between its fork and its exec: it is not the master's child)
    workers = ns.run(
        "pgrep", "-P", show["MainPID"], "--", "^al-worker-[0-9]+$", check=False
    ).stdout.split()
    cores = os.cpu_count() or 1
    assert len(workers) == (cores if cores > 1 else 0), workers
    for pid in [show["MainPID"], *workers]:
        status = ns.run("cat", f"/proc/{pid}/status").stdout
        assert "Seccomp:\t2" in status, status  # filtered
    # what the service sees of /proc: its own processes (systemd's PID 1 is not one)
    uid, gid = (ns.run("id", flag, "archive-local").stdout.strip() for flag in ("-u", "-g"))
    seen = ns.run(
        "nsenter", "-t", show["MainPID"], "-m", "-S", uid, "-G", gid, "ls", "/proc"
    ).stdout.split()
    assert "1" not in seen and show["MainPID"] in seen and "meminfo" not in seen, seen
    assert _exposure(ns.run(*SECURITY, "archive-local", check=False)) <= EXPOSURE

    if shutil.which("qemu-img"):
        assert _probe_unit(ns).split() == ["qemu-img", "setrlimit", "Operation", "not", "permitted"]


def _check_gpg_tls_mdns(ns: SystemdNamespace) -> None:
    """What the service runs under the filter besides serving: the sync on start (gpg
    verifies the feed; gpg and gpg-agent make the appliance's key, which signs the curated
    feed), the HTTPS port's handshake, mDNS."""
    deadline = time.monotonic() + 60
    while (sync := _status(ns)["sync"])["last_run"] is None:
        assert time.monotonic() < deadline, sync
        time.sleep(0.3)
    feed = sync["feeds"]["ex"]
    assert feed["ok"] and {i["status"] for i in feed["items"]} == {"fetched"}, feed
    assert len(feed["items"]) == 4, feed
    index = ns.run("curl", "-sS", "http://127.0.0.1:3142/streams/v1/index.sjson").stdout
    assert index.startswith("-----BEGIN PGP SIGNED MESSAGE-----"), index[:200]
    https = ns.run(
        "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "https://127.0.0.1:3143/healthz"
    ).stdout
    assert https == "200"
    assert ns.run(sys.executable, "-c", MDNS_LOOKUP, timeout=30).stdout.strip() == "3142"


@pytest.mark.slow
def test_the_unit_under_a_real_systemd(systemd: SystemdNamespace, tmp_path: Path) -> None:
    """`make install` inside the namespaces (user, unit, daemon-reload, enable --now), then:
    /healthz 200, its sandbox in effect with every worker, a feed synced (gpg), HTTPS and
    mDNS, a reload by SIGHUP (ExecReload) under a transfer that completes, and a stop that
    lets a transfer finish and ends with exit status 0."""
    ns = systemd
    src = _source_copy(tmp_path / "src")
    files = tmp_path / "upstream/debian/pool"
    files.mkdir(parents=True)
    require("gpg", "gnupg")
    feed = build_feed(
        tmp_path / "upstream/images", item_size=64 * 1024, serials=("20240101", "20240301")
    )
    feed.key.close()
    ns.run("install", "-D", "-m", "0644", str(feed.key.keyring), "/etc/archive-local/ex.gpg")
    ns.run("ip", "link", "set", "lo", "multicast", "on")  # for mDNS on loopback
    ns.run("ip", "route", "add", "224.0.0.0/4", "dev", "lo")
    blobs = {name: os.urandom(3_000_000) for name in ("reload.deb", "stop.deb")}
    for name, data in blobs.items():
        (files / name).write_bytes(data)
    ns.run(
        "systemd-run",
        "--unit=slow-upstream",
        f"--working-directory={ROOT}",
        sys.executable,
        "-m",
        "tests.hostile",
        "127.0.0.1",
        "8000",
        str(tmp_path / "upstream"),
        "1000000",
    )
    images = {
        "name": "ex",
        "url": "http://127.0.0.1:8000/images/feed/",
        "keyring": "/etc/archive-local/ex.gpg",
        "filters": FILTERS,
    }
    ns.write(
        "/etc/archive-local/config.yaml",
        "listen: 0.0.0.0:3142\n"  # not loopback alone: mDNS advertises
        "apt: {remaps: {debian: ['http://127.0.0.1:8000/debian']}}\n"
        "discovery: {mdns: true, interfaces: ['127.0.0.1']}\n"
        "tls: {listen: 127.0.0.1:3143}\n"
        f"images: {{feeds: [{json.dumps(images)}]}}\n"
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
    _check_the_sandbox(ns)
    _check_gpg_tls_mdns(ns)

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


@pytest.mark.slow
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
