"""The packed charm (issue 12): `make charm` is reproducible and holds what Juju reads; the
packed `dispatch` installs archive-local from the charm's own wheels, offline, under a real
systemd, and runs an action, with stand-in hook tools in place of Juju's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from tests import hooktools
from tests.systemd_ns import SystemdNamespace

ROOT = Path(__file__).resolve().parents[3]
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _make_charm(out: Path, python: str = "3.12") -> Path:
    """What `make charm` runs (charm/pack.py), with this test's Python."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "charm/pack.py"), "--python", python, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_make_charm_is_reproducible_and_holds_what_juju_reads(tmp_path: Path) -> None:
    first = _make_charm(tmp_path / "one/archive-local_amd64.charm")
    second = _make_charm(tmp_path / "two/archive-local_amd64.charm")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, second)]
    assert digest[0] == digest[1]  # byte-identical

    spec = yaml.safe_load((ROOT / "charm/charmcraft.yaml").read_text())
    with zipfile.ZipFile(first) as z:
        names = z.namelist()
        assert names == sorted(names)
        meta = yaml.safe_load(z.read("metadata.yaml"))
        assert meta["name"] == "archive-local" and meta["display-name"] == spec["title"]
        assert meta["requires"]["identity-service"]["interface"] == "keystone"
        assert meta["peers"]["cluster"] and set(meta["provides"]) == set(spec["provides"])
        assert yaml.safe_load(z.read("config.yaml")) == spec["config"]  # one source
        assert yaml.safe_load(z.read("actions.yaml")) == spec["actions"]
        [base] = yaml.safe_load(z.read("manifest.yaml"))["bases"]
        assert base == {"name": "ubuntu", "channel": "24.04", "architectures": ["amd64"]}
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in z.infolist()}
        dates = {i.date_time for i in z.infolist()}
        wheels = [n for n in names if n.startswith("wheels/")]
        own = [n for n in wheels if n.startswith("wheels/archive_local-")]
    assert modes["dispatch"] == modes["src/charm.py"] == modes["hooks/install"] == 0o755
    assert modes["src/workload.py"] == modes["metadata.yaml"] == 0o644
    assert dates == {(1980, 1, 1, 0, 0, 0)}
    assert not [n for n in names if n.endswith(".pyc") or n.startswith("venv/bin/")]
    assert any(n.startswith("venv/ops/") for n in names)
    assert own == ["wheels/archive_local-0.1.0-py3-none-any.whl"]
    assert any("aiohttp-" in n and "cp312" in n for n in wheels)  # for the unit's Python 3.12
    with zipfile.ZipFile(first) as z, zipfile.ZipFile(z.open(own[0])) as wheel:
        inner = wheel.namelist()
        assert "appliance/data/archive-local.service" in inner  # the project's own unit
        assert "appliance/config/parse.py" in inner and not [n for n in inner if "test" in n]


def _dispatch(
    ns: SystemdNamespace,
    charm: Path,
    hook: str,
    log: Path,
    tools: Path,
    config: dict,
    action: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{tools}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "JUJU_UNIT_NAME": "archive-local/0",
        "JUJU_MODEL_NAME": "test",
        "JUJU_MODEL_UUID": "00000000-0000-4000-8000-000000000000",
        "JUJU_VERSION": "3.6.4",
        "JUJU_CHARM_DIR": str(charm),
        "JUJU_DISPATCH_PATH": hook,
        "HOOKTOOLS_LOG": str(log),
        "HOOKTOOLS_CONFIG": json.dumps(config),
        "LANG": "C.UTF-8",
    }
    if action:
        env.update({"JUJU_ACTION_NAME": action, "JUJU_ACTION_UUID": "1"})
    argv = ["env", "-i", "-C", str(charm), *(f"{k}={v}" for k, v in env.items()), "./dispatch"]
    return ns.run(*argv, check=False, timeout=600)


@pytest.mark.slow
def test_packed_dispatch_installs_offline_under_systemd_and_runs_actions(
    systemd: SystemdNamespace, tmp_path: Path
) -> None:
    """The charm packed for this machine's Python (the unit's would be 3.12), unzipped and
    run by its `dispatch` inside private namespaces with only loopback: install creates the
    venv from wheels/, the user, the unit, starts the service; update-status reports it
    active; `cache-stats` and `get-admin-token` answer through action-set."""
    ns = systemd
    packed = _make_charm(tmp_path / "build/archive-local_amd64.charm", HOST_PYTHON)
    charm = tmp_path / "unit/charm"
    with zipfile.ZipFile(packed) as z:
        z.extractall(charm)
        for info in z.infolist():  # as Juju does: the modes in the archive
            (charm / info.filename).chmod((info.external_attr >> 16) & 0o777)
    tools = hooktools.install(tmp_path / "tools")
    log = tmp_path / "hooktools.jsonl"
    config = {"mdns": False, "cache-size": "1GiB"}

    out = _dispatch(ns, charm, "hooks/install", log, tools, config)
    assert out.returncode == 0, out.stderr[-3000:]
    state = ns.run("systemctl", "status", "archive-local", check=False).stdout
    assert "Active: active (running)" in state, state + str(hooktools.calls(log))
    assert ns.run("id", "-u", "archive-local", check=False).returncode == 0
    version = ns.run("cat", "/opt/archive-local/VERSION").stdout.strip()
    assert version == "0.1.0"
    calls = hooktools.calls(log)
    assert ["--", "0.1.0"] in [c["args"] for c in calls if c["tool"] == "application-version-set"]
    assert any(c["tool"] == "open-port" and "3142/tcp" in c["args"] for c in calls)

    deadline = time.monotonic() + 30
    while True:  # the service answers: the next hook reports it active
        out = _dispatch(ns, charm, "hooks/update-status", log, tools, config)
        assert out.returncode == 0, out.stderr[-3000:]
        [last] = [c for c in hooktools.calls(log) if c["tool"] == "status-set"][-1:]
        if "active" in last["args"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "active" in last["args"] and last["args"][-1].startswith("serving"), last

    log.unlink()
    out = _dispatch(ns, charm, "actions/cache-stats", log, tools, config, "cache-stats")
    assert out.returncode == 0, out.stderr[-3000:]
    [results] = [c["args"] for c in hooktools.calls(log) if c["tool"] == "action-set"]
    assert any(a.startswith("entries=") for a in results)
    assert any(a.startswith("max-bytes=1073741824") for a in results), results

    out = _dispatch(ns, charm, "actions/get-admin-token", log, tools, config, "get-admin-token")
    assert out.returncode == 0, out.stderr[-3000:]
    [results] = [c["args"] for c in hooktools.calls(log) if c["tool"] == "action-set"][-1:]
    token = ns.run("cat", "/var/lib/archive-local/admin-token").stdout.strip()
    assert results == [f"token={token}"]
    assert not Path("/opt/archive-local").exists() and os.path.exists(charm / "dispatch")
