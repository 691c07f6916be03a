"""State-transition tests of the charm (ops.testing), with the workload on a temp root and
a recorder in place of the machine's commands; the configuration it renders is checked by
the appliance's own validator."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

CHARM = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(CHARM / "src"))

import workload  # noqa: E402
from ops import testing  # noqa: E402

import charm  # noqa: E402

ROOT = CHARM.parent
DEFAULTS = {
    name: spec["default"]
    for name, spec in yaml.safe_load((CHARM / "charmcraft.yaml").read_text())["config"][
        "options"
    ].items()
    if "default" in spec  # a secret option has none
}


class Machine:
    """Stands in for the unit's commands: records them, answers like the real ones."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[list[str]] = []
        self.active = False
        self.enabled = False
        self.health: tuple[int, Any] = (200, {"status": "serving", "problems": []})
        self.status: dict[str, Any] = {
            "hit_ratio": 0.5,
            "sync": {"running": False, "progress": None, "feeds": {}, "last_success": None},
            "cache": {"bytes": 10, "entries": 1, "max_bytes": 100},
            "downloads": [],
        }
        self.cli: dict[str, subprocess.CompletedProcess[str]] = {}
        self.pip_fails = False
        self.version = "0.1.0"  # the wheel bundled in the charm
        self.down = False  # the service does not answer HTTP

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        out = subprocess.CompletedProcess(argv, 0, "", "")
        if argv[0].endswith("/pip") and self.pip_fails:
            out.returncode, out.stderr = 1, "ERROR: No matching distribution found"
        elif argv[0].endswith("/pip"):  # the package lands where a real install puts it
            data = self.root / "opt/archive-local/lib/python3.12/site-packages/appliance/data"
            data.mkdir(parents=True, exist_ok=True)
            unit = (ROOT / "appliance/data/archive-local.service").read_text()
            (data / "archive-local.service").write_text(unit)
        elif argv[0] == "id":
            out.returncode = 0 if any(c[0] == "useradd" for c in self.calls) else 1
        elif argv[:2] == ["systemctl", "is-enabled"]:
            out.returncode = 0 if self.enabled else 1
        elif argv[:2] == ["systemctl", "is-active"]:
            out.returncode = 0 if self.active else 3
        elif argv[0] == "systemctl" and argv[1] in ("start", "restart"):
            self.active = True
        elif argv[:2] == ["systemctl", "enable"]:
            self.enabled = True
        elif argv[0] == "runuser":
            command = argv[argv.index("--config") + 2]
            out = self.cli.get(command, out)
        return out

    def systemctl(self) -> list[list[str]]:
        queries = ("is-active", "is-enabled")
        return [c[1:] for c in self.calls if c[0] == "systemctl" and c[1] not in queries]


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Machine:
    m = Machine(tmp_path)

    class Wired(workload.Workload):
        def get(self, port: int, path: str, body: Any = None) -> tuple[int, Any]:
            if m.down:
                return 0, None
            if path == "/healthz":
                return m.health
            if path == "/api/status":
                return 200, m.status
            if path == "/api/admin/purge":
                return 200, {"removed": 3}
            return 404, None

    monkeypatch.setattr(
        charm.ArchiveLocalCharm, "workload_factory", staticmethod(lambda: Wired(tmp_path, m))
    )
    monkeypatch.setattr(charm, "bundled", lambda _dir: (tmp_path / "wheels", m.version))
    return m


_ROOT: list[Path] = []  # this test process's charm root (see `charm_root`)


@pytest.fixture(scope="session", autouse=True)
def charm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A charm root of this test process's own holding charmcraft.yaml and src/: for each run the
    testing framework writes metadata.yaml (and config, actions) into the root and removes
    it after, so two test processes sharing charm/ would remove each other's."""
    root = tmp_path_factory.mktemp("charm-root")
    (root / "charmcraft.yaml").write_bytes((CHARM / "charmcraft.yaml").read_bytes())
    (root / "src").symlink_to(CHARM / "src")  # the charm reads its rules and dashboards
    _ROOT[:] = [root]
    return root


def ctx() -> testing.Context:
    return testing.Context(charm.ArchiveLocalCharm, charm_root=_ROOT[0])


def _config(machine: Machine) -> dict:
    return yaml.safe_load((machine.root / "etc/archive-local/config.yaml").read_text())


def test_install_installs_the_wheel_writes_unit_and_config_and_starts(machine: Machine) -> None:
    out = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    pip = next(c for c in machine.calls if c[0].endswith("/pip"))
    assert "--no-index" in pip and "archive-local==0.1.0" in pip  # the bundled wheel, offline
    assert [c[0] for c in machine.calls if c[0] == "useradd"] == ["useradd"]
    assert machine.systemctl() == [
        ["daemon-reload"],
        ["enable", "archive-local"],
        ["restart", "archive-local"],
    ]
    assert (machine.root / "etc/systemd/system/archive-local.service").is_file()
    assert _config(machine)["listen"] == "[::]:3142"
    assert out.unit_status == testing.ActiveStatus("serving, hit ratio 50%")
    assert out.workload_version == "0.1.0"
    assert out.opened_ports == {testing.TCPPort(3142)}


def test_an_unchanged_config_changes_nothing(machine: Machine) -> None:
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    machine.calls.clear()
    ctx().run(ctx().on.config_changed(), state)
    assert machine.systemctl() == []
    assert not any(c[0].endswith("/pip") for c in machine.calls)  # installed once


def test_a_reloadable_change_reloads_and_a_port_change_restarts(machine: Machine) -> None:
    """(`workers` and `object-store` restart too: see their tests.)"""
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    machine.calls.clear()
    state = ctx().run(
        ctx().on.config_changed(),
        dataclasses.replace(state, config={**DEFAULTS, "cache-size": "20GiB"}),
    )
    assert machine.systemctl() == [["reload", "archive-local"]]
    assert _config(machine)["cache"]["max_size"] == "20GiB"
    machine.calls.clear()
    ctx().run(
        ctx().on.config_changed(), dataclasses.replace(state, config={**DEFAULTS, "port": 3199})
    )
    assert machine.systemctl() == [["restart", "archive-local"]]  # listen: reload cannot


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("cache-size", "lots", "cache-size: cache.max_size: expected a size"),
        ("image-feeds", "[{name: x", "image-feeds: not valid YAML"),
        ("image-feeds", "- {name: u, url: 'ftp://x/'}", "image-feeds: images.feeds[0].url"),
        ("remaps", "debian", "remaps: line 1: expected NAME URL"),
        ("admin-allow", "not-a-net", "admin-allow: admin.allow[0]: not a network"),
        ("sync-interval", "often", "sync-interval: images.sync_interval"),
        ("workers", "many", "workers: workers: a number of processes"),
    ],
)
def test_an_invalid_option_blocks_with_the_validators_message_and_changes_nothing(
    machine: Machine, option: str, value: str, message: str
) -> None:
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    before = _config(machine)
    machine.calls.clear()
    out = ctx().run(
        ctx().on.config_changed(), dataclasses.replace(state, config={**DEFAULTS, option: value})
    )
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(message), out.unit_status.message
    assert _config(machine) == before and machine.systemctl() == []


def test_every_option_renders_what_the_appliance_accepts() -> None:
    everything = {
        **DEFAULTS,
        "port": 3199,
        "cache-size": "10GiB",
        "remaps": "ubuntu http://archive.ubuntu.com/ubuntu http://mirror.example/ubuntu\n# c\n",
        "allowed-hosts": "ppa.launchpadcontent.net security.ubuntu.com:80",
        "index-ttl": 60,
        "image-feeds": "- {name: ubuntu, url: 'http://cloud-images.ubuntu.com/releases/', "
        "keyring: /etc/archive-local/ubuntu.gpg, filters: [arch=amd64], max_items: 1}",
        "sync-interval": "1d",
        "seed-targets": "- {name: cloud, type: glance, feeds: [ubuntu], "
        "auth: {endpoint: 'http://glance:9292', token_file: /etc/archive-local/token}}",
        "mdns": False,
        "admin-allow": "10.0.0.0/8",
        "region": "RegionTwo",
        "object-store": STORE,
        "workers": "auto",
    }
    keystone = workload.Keystone.from_relation(KEYSTONE_DATA)
    for options in (DEFAULTS, everything):
        for ks in (None, keystone):
            parsed = workload.validate(workload.render(options, ks))  # the appliance's parser
            assert parsed.listen.port == options["port"]
    with_keystone = workload.validate(workload.render({**everything, "seed-targets": ""}, keystone))
    [target] = with_keystone.seed.targets
    assert target.name == "openstack" and target.region == "RegionTwo"
    assert target.keystone["auth_url"] == "https://10.5.0.10:5000/v3" and target.password
    parsed = workload.validate(workload.render(everything))
    assert parsed.cache.store is not None and parsed.cache.store.prefix == "fleet/"
    cores = max(1, os.cpu_count() or 1)  # the default, auto: one per core
    assert parsed.workers >= 1 and workload.validate(workload.render(DEFAULTS)).workers == cores
    assert parsed.apt.remaps["ubuntu"][1] == "http://mirror.example/ubuntu"
    assert parsed.images.feeds[0].name == "ubuntu" and parsed.seed.targets[0].type == "glance"
    assert parsed.discovery.mdns is False and parsed.apt.index_ttl == 60


def test_status_follows_the_service(machine: Machine) -> None:
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    machine.health = (503, {"status": "draining", "problems": []})
    assert ctx().run(ctx().on.update_status(), state).unit_status == testing.MaintenanceStatus(
        "draining"
    )
    machine.health = (503, {"status": "unhealthy", "problems": ["/var/cache: read-only"]})
    status = ctx().run(ctx().on.update_status(), state).unit_status
    assert status == testing.BlockedStatus("unhealthy: /var/cache: read-only")
    machine.active = False
    machine.calls.clear()
    ctx().run(ctx().on.update_status(), state)  # reconcile starts it again
    assert ["start", "archive-local"] in machine.systemctl()


def _done(out: Any, rc: int = 0, err: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess([], rc, json.dumps(out), err)


def test_sync_action_reports_and_fails_when_the_sync_failed(machine: Machine) -> None:
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    machine.cli["sync"] = _done([{"feed": "ubuntu", "ok": True, "items": [{}, {}]}])
    c = ctx()
    c.run(c.on.action("sync-images"), state)
    assert json.loads(c.action_results["feeds"]) == {"ubuntu": {"ok": True, "items": 2}}
    runuser = next(x for x in machine.calls if x[0] == "runuser")
    assert runuser[:3] == ["runuser", "-u", "archive-local"]  # files stay the service's
    machine.cli["sync"] = _done([{"feed": "ubuntu", "ok": False, "items": []}], 1, "x\nbad sig")
    with pytest.raises(testing.ActionFailed, match="bad sig"):
        ctx().run(ctx().on.action("sync-images"), state)


def test_seed_verify_stats_purge_and_token_actions(machine: Machine) -> None:
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    machine.cli["seed"] = _done([], 2, "archive-local: no seed.targets in the configuration")
    with pytest.raises(testing.ActionFailed, match=r"no seed\.targets"):
        ctx().run(ctx().on.action("seed"), state)
    machine.cli["verify"] = _done({"checked": 4, "ok": 4, "bad": 0})
    c = ctx()
    c.run(c.on.action("verify", params={"fix": True}), state)
    assert c.action_results == {"checked": 4, "ok": 4, "bad": 0}
    assert "--fix" in next(x for x in machine.calls if x[0] == "runuser" and "verify" in x)
    c = ctx()
    c.run(c.on.action("cache-stats"), state)
    assert c.action_results["hit-ratio"] == 0.5 and c.action_results["entries"] == 1
    c = ctx()
    c.run(c.on.action("purge", params={"remap": "ubuntu"}), state)
    assert c.action_results == {"removed": 3}
    with pytest.raises(testing.ActionFailed, match="one of them"):
        ctx().run(ctx().on.action("purge"), state)
    with pytest.raises(testing.ActionFailed, match="no admin token"):
        ctx().run(ctx().on.action("get-admin-token"), state)
    token = machine.root / "var/lib/archive-local/admin-token"
    token.parent.mkdir(parents=True)
    token.write_text("s3cret-token-value\n")
    c = ctx()
    c.run(c.on.action("get-admin-token"), state)
    assert c.action_results == {"token": "s3cret-token-value"}


def test_related_applications_learn_where_the_unit_is(machine: Machine) -> None:
    proxy = testing.Relation("apt-proxy", remote_app_name="ubuntu")
    lb = testing.Relation("website", remote_app_name="haproxy")
    state = testing.State(config={**DEFAULTS, "port": 3199}, relations={proxy, lb})
    out = ctx().run(ctx().on.relation_joined(proxy, remote_unit=0), state)
    assert out.get_relation(proxy.id).local_unit_data["url"] == "http://192.0.2.0:3199"
    assert out.get_relation(lb.id).local_unit_data["port"] == "3199"
    assert out.get_relation(lb.id).local_unit_data["hostname"] == "192.0.2.0"


def test_cos_agent_gets_the_scrape_job_rules_and_dashboard(machine: Machine) -> None:
    import base64
    import lzma

    cos = testing.Relation("cos-agent", remote_app_name="otel-collector")
    state = testing.State(config=DEFAULTS, relations={cos})
    out = ctx().run(ctx().on.relation_joined(cos, remote_unit=0), state)
    config = json.loads(out.get_relation(cos.id).local_unit_data["config"])
    [job] = config["metrics_scrape_jobs"]
    assert job["static_configs"] == [{"targets": ["localhost:3142"]}]
    alerts = {r["alert"] for g in config["metrics_alert_rules"]["groups"] for r in g["rules"]}
    assert "ArchiveLocalSyncFailing" in alerts and "ArchiveLocalDown" in alerts
    [dashboard] = config["dashboards"]
    assert json.loads(lzma.decompress(base64.b64decode(dashboard)))["uid"] == "archive-local"


# -- upgrade, install failure ---------------------------------------------------------
def test_upgrade_installs_the_new_wheel_and_restarts_once(machine: Machine) -> None:
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    machine.calls.clear()
    ctx().run(ctx().on.upgrade_charm(), state)  # the same charm again: nothing to do
    assert machine.systemctl() == [] and not any(c[0].endswith("/pip") for c in machine.calls)
    machine.version = "0.2.0"
    out = ctx().run(ctx().on.upgrade_charm(), state)
    pip = next(c for c in machine.calls if c[0].endswith("/pip"))
    assert "archive-local==0.2.0" in pip and "--upgrade" in pip
    assert machine.systemctl() == [["restart", "archive-local"]]  # the new code runs
    assert out.workload_version == "0.2.0"
    machine.calls.clear()
    ctx().run(ctx().on.update_status(), out)
    assert machine.systemctl() == []


def test_a_failed_install_blocks_and_starts_nothing(machine: Machine) -> None:
    machine.pip_fails = True
    out = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    assert out.unit_status == testing.BlockedStatus(
        "install failed: /opt/archive-local/bin/pip: ERROR: No matching distribution found"
    )
    assert machine.systemctl() == []
    assert not (machine.root / "etc/archive-local/config.yaml").exists()


# -- status ---------------------------------------------------------------------------
def test_status_shows_a_sync_under_way_then_the_last_sync_and_a_failed_feed(
    machine: Machine,
) -> None:
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    machine.status["sync"] = {
        "running": True,
        "progress": {
            "feed": "ubuntu",
            "items_done": 3,
            "items_total": 8,
            "bytes_done": 700 * 2**20,
            "bytes_total": 2000 * 2**20,
        },
        "feeds": {},
        "last_success": None,
    }
    out = ctx().run(ctx().on.update_status(), state)
    assert out.unit_status == testing.MaintenanceStatus("syncing ubuntu: 3/8 items, 700/2000 MiB")
    machine.status["sync"] = {
        "running": False,
        "progress": None,
        "feeds": {"ubuntu": {"ok": True}, "debian": {"ok": False}},
        "last_success": 1796194800.0,  # 2026-12-02 07:00 UTC
    }
    out = ctx().run(ctx().on.update_status(), state)
    assert out.unit_status == testing.ActiveStatus(
        "serving, hit ratio 50%, sync FAILED: debian, last sync 2026-12-02 07:00 UTC"
    )
    machine.status["sync"]["feeds"] = {"debian": {"ok": False}}
    machine.status["sync"]["last_success"] = None
    machine.status["hit_ratio"] = None
    out = ctx().run(ctx().on.update_status(), state)
    assert out.unit_status == testing.ActiveStatus(
        "serving, sync FAILED: debian, no successful sync yet"
    )


def test_never_active_when_the_service_is_down_or_unreachable(machine: Machine) -> None:
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    machine.health = (0, None)  # no answer on the port yet
    assert ctx().run(ctx().on.update_status(), state).unit_status == (
        testing.MaintenanceStatus("archive-local is starting")
    )
    fail = subprocess.CompletedProcess([], 1, "", "Job for archive-local.service failed")

    class Down(Machine):
        def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
            if list(argv[:2]) == ["systemctl", "start"]:
                self.calls.append(list(argv))
                return fail
            return super().__call__(argv)

    machine.__class__ = Down
    machine.active = False
    out = ctx().run(ctx().on.update_status(), state)
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "systemctl start archive-local: Job for archive-local.service failed" in (
        out.unit_status.message
    )


# -- identity-service -----------------------------------------------------------------
KEYSTONE_DATA = {
    "service_protocol": "https",
    "service_host": "10.5.0.10",
    "service_port": "5000",
    "service_username": "image-stream",
    "service_password": "keystone-made-this-password",
    "service_tenant": "services",
    "service_domain": "service_domain",
    "auth_host": "10.5.0.10",
    "auth_port": "35357",
}
FEEDS = (
    "- {name: ubuntu, url: 'http://cloud-images.ubuntu.com/releases/', "
    "keyring: /etc/archive-local/ubuntu.gpg, filters: [arch=amd64]}"
)


def test_glance_seeding_takes_keystones_credentials_and_registers_product_streams(
    machine: Machine,
) -> None:
    keystone = testing.Relation("identity-service", remote_app_name="keystone")
    options = {**DEFAULTS, "image-feeds": FEEDS, "region": "RegionTwo"}
    state = ctx().run(ctx().on.install(), testing.State(config=options, leader=True))
    state = dataclasses.replace(state, relations={keystone})
    out = ctx().run(ctx().on.relation_joined(keystone, remote_unit=0), state)
    assert out.unit_status == testing.WaitingStatus("waiting for Keystone credentials")
    assert _config(machine)["seed"]["targets"] == []  # nothing to seed with yet
    sent = out.get_relation(keystone.id).local_unit_data
    assert sent["service"] == "image-stream" and sent["region"] == "RegionTwo"
    assert sent["public_url"] == sent["internal_url"] == "http://192.0.2.0:3142/"

    keystone = dataclasses.replace(
        out.get_relation(keystone.id), remote_units_data={0: KEYSTONE_DATA}
    )
    machine.calls.clear()
    out = ctx().run(
        ctx().on.relation_changed(keystone, remote_unit=0),
        dataclasses.replace(out, relations={keystone}),
    )
    assert out.unit_status == testing.ActiveStatus("serving, hit ratio 50%")
    [target] = _config(machine)["seed"]["targets"]
    assert target["name"] == "openstack" and target["feeds"] == ["ubuntu"]
    assert target["auth"]["keystone"] == {
        "auth_url": "https://10.5.0.10:5000/v3",
        "username": "image-stream",
        "project_name": "services",
        "user_domain_name": "service_domain",
        "project_domain_name": "service_domain",
        "region_name": "RegionTwo",
        "password_file": "/etc/archive-local/keystone-password",
    }
    password = machine.root / "etc/archive-local/keystone-password"
    assert password.read_text() == "keystone-made-this-password\n"
    assert password.stat().st_mode & 0o777 == 0o600
    assert next(c[:2] for c in machine.calls if c[0] == "chown") == [
        "chown",
        "archive-local:archive-local",
    ]
    config_text = (machine.root / "etc/archive-local/config.yaml").read_text()
    assert "keystone-made-this-password" not in config_text
    assert machine.systemctl() == [["reload", "archive-local"]]
    workload.validate(_config(machine))  # the appliance accepts what was written

    machine.calls.clear()
    out = ctx().run(ctx().on.relation_broken(keystone), out)
    assert _config(machine)["seed"]["targets"] == [] and not password.exists()
    assert machine.systemctl() == [["reload", "archive-local"]]
    assert out.unit_status == testing.ActiveStatus("serving, hit ratio 50%")


def test_a_glance_target_without_auth_needs_keystone(machine: Machine) -> None:
    targets = "- {name: cloud, type: glance, feeds: [ubuntu]}"
    options = {**DEFAULTS, "image-feeds": FEEDS, "seed-targets": targets}
    out = ctx().run(ctx().on.install(), testing.State(config=options, leader=True))
    assert out.unit_status == testing.BlockedStatus(
        "seed-targets: cloud take credentials from Keystone: "
        "integrate with keystone (identity-service)"
    )
    assert _config(machine)["seed"]["targets"] == []  # apt and the feeds are served meanwhile
    assert machine.active
    keystone = testing.Relation(
        "identity-service", remote_app_name="keystone", remote_units_data={0: KEYSTONE_DATA}
    )
    out = ctx().run(
        ctx().on.relation_changed(keystone, remote_unit=0),
        dataclasses.replace(out, relations={keystone}),
    )
    [target] = _config(machine)["seed"]["targets"]
    assert target["name"] == "cloud" and target["auth"]["keystone"]["region_name"] == "RegionOne"
    assert out.unit_status == testing.ActiveStatus("serving, hit ratio 50%")

    # another unit: it serves and syncs, but seeds nothing and registers nothing
    machine.calls.clear()
    other = ctx().run(ctx().on.config_changed(), dataclasses.replace(out, leader=False))
    assert _config(machine)["seed"]["targets"] == []
    assert "service" not in other.get_relation(keystone.id).local_unit_data
    assert not (machine.root / "etc/archive-local/keystone-password").exists()
    assert other.unit_status == testing.ActiveStatus("serving, hit ratio 50%")
    assert machine.systemctl() == [["reload", "archive-local"]]


# -- peers: the admin token -------------------------------------------------------------
def test_the_leader_shares_the_admin_token_and_followers_use_it(machine: Machine) -> None:
    cluster = testing.PeerRelation("cluster", peers_data={1: {}})
    out = ctx().run(
        ctx().on.install(), testing.State(config=DEFAULTS, leader=True, relations={cluster})
    )
    token_file = machine.root / "var/lib/archive-local/admin-token"
    token = token_file.read_text().strip()
    assert len(token) >= 32 and token_file.stat().st_mode & 0o777 == 0o600
    data = out.get_relation(cluster.id).local_app_data
    [secret] = [s for s in out.secrets if s.id == data["admin-token"]]
    assert secret.tracked_content == {"token": token} and secret.owner == "app"
    assert out.get_relation(cluster.id).local_unit_data["url"] == "http://192.0.2.0:3142"
    machine.calls.clear()
    again = ctx().run(ctx().on.leader_elected(), out)  # the same leader: no second secret
    assert len(again.secrets) == 1 and machine.systemctl() == []

    # a follower (its own token, written before the leader's arrived) takes the leader's
    token_file.write_text("a-token-this-unit-made-itself\n")
    peers = testing.PeerRelation(
        "cluster", local_app_data={"admin-token": secret.id}, peers_data={1: {}}
    )
    follower = testing.State(config=DEFAULTS, leader=False, relations={peers}, secrets={secret})
    machine.calls.clear()
    out = ctx().run(
        ctx().on.relation_changed(peers, remote_unit=1), follower
    )  # the leader's app data
    assert token_file.read_text().strip() == token
    assert machine.systemctl() == [["reload", "archive-local"]]  # the service re-reads it
    assert len(out.secrets) == 1  # a follower makes none


def test_a_new_leader_keeps_the_shared_token(machine: Machine) -> None:
    secret = testing.Secret(
        tracked_content={"token": "the-token-all-units-share-1234"}, owner="app"
    )
    cluster = testing.PeerRelation(
        "cluster", local_app_data={"admin-token": secret.id}, peers_data={1: {}}
    )
    state = testing.State(config=DEFAULTS, leader=True, relations={cluster}, secrets={secret})
    out = ctx().run(ctx().on.leader_elected(), state)
    assert [s.id for s in out.secrets] == [secret.id]  # no new secret
    token_file = machine.root / "var/lib/archive-local/admin-token"
    assert token_file.read_text().strip() == "the-token-all-units-share-1234"
    departed = ctx().run(
        ctx().on.relation_departed(out.get_relation(cluster.id), remote_unit=1), out
    )
    assert departed.unit_status == testing.ActiveStatus("serving, hit ratio 50%")


# -- the other relations come and go -------------------------------------------------------
@pytest.mark.parametrize("name", ["apt-proxy", "website", "cos-agent"])
def test_provided_relations_change_and_break_cleanly(machine: Machine, name: str) -> None:
    relation = testing.Relation(name, remote_app_name="other")
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS, relations={relation}))
    relation = state.get_relation(relation.id)
    out = ctx().run(ctx().on.relation_changed(relation, remote_unit=0), state)
    assert out.get_relation(relation.id).local_unit_data  # published
    machine.calls.clear()
    out = ctx().run(
        ctx().on.config_changed(), dataclasses.replace(out, config={**DEFAULTS, "port": 3150})
    )
    data = out.get_relation(relation.id).local_unit_data
    assert "3150" in json.dumps(data)  # the new port reaches the related application
    out = ctx().run(ctx().on.relation_broken(out.get_relation(relation.id)), out)
    assert out.unit_status == testing.ActiveStatus("serving, hit ratio 50%")
    assert ["restart", "archive-local"] in machine.systemctl()  # the port change, once


def test_actions_succeed_and_fail_as_the_service_does(machine: Machine) -> None:
    """The cases the other action tests leave: seed succeeding, verify finding bad files,
    cache-stats and purge when the service does not answer."""
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS))
    machine.cli["seed"] = _done([{"target": "cloud", "ok": True}, {"target": "aws", "ok": True}])
    c = ctx()
    c.run(c.on.action("seed"), state)
    assert json.loads(c.action_results["targets"]) == {"cloud": {"ok": True}, "aws": {"ok": True}}
    machine.cli["verify"] = _done({"checked": 4, "ok": 3, "bad": 1}, 1, "1 file is wrong")
    c = ctx()
    with pytest.raises(testing.ActionFailed, match="1 file is wrong"):
        c.run(c.on.action("verify"), state)
    assert json.loads(c.action_results["result"])["bad"] == 1  # the report is kept

    machine.down = True  # nothing answers on the port
    with pytest.raises(testing.ActionFailed, match="did not answer"):
        ctx().run(ctx().on.action("cache-stats"), state)
    with pytest.raises(testing.ActionFailed, match="purge: 0"):
        ctx().run(ctx().on.action("purge", params={"path": "/ubuntu/x"}), state)


# -- the shared object store ---------------------------------------------------------------
STORE = "{endpoint: 'http://swift.internal:8080', bucket: archive-local, prefix: fleet}"


def test_units_share_one_object_store_with_credentials_from_a_secret(machine: Machine) -> None:
    secret = testing.Secret(tracked_content={"access-key": "fleet:unit", "secret-key": "s3cr3t"})
    options = {**DEFAULTS, "object-store": STORE, "object-store-credentials": secret.id}
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS, secrets={secret}))
    machine.calls.clear()
    out = ctx().run(ctx().on.config_changed(), dataclasses.replace(state, config=options))
    store = _config(machine)["cache"]["store"]
    assert store == {
        "type": "s3",
        "endpoint": "http://swift.internal:8080",
        "bucket": "archive-local",
        "prefix": "fleet",
        "credentials_file": "/etc/archive-local/store-credentials",
    }
    workload.validate(_config(machine))  # the appliance accepts it
    creds = machine.root / "etc/archive-local/store-credentials"
    assert creds.read_text() == (
        "[default]\naws_access_key_id = fleet:unit\naws_secret_access_key = s3cr3t\n"
    )
    assert creds.stat().st_mode & 0o777 == 0o600
    assert "s3cr3t" not in (machine.root / "etc/archive-local/config.yaml").read_text()
    assert machine.systemctl() == [["restart", "archive-local"]]  # cache.store: restart
    assert out.unit_status == testing.ActiveStatus("serving, hit ratio 50%")
    machine.calls.clear()
    out = ctx().run(ctx().on.config_changed(), dataclasses.replace(out, config=DEFAULTS))
    assert "store" not in _config(machine)["cache"] and not creds.exists()
    assert machine.systemctl() == [["restart", "archive-local"]]


def test_units_on_one_store_know_each_other_and_a_new_one_reloads(machine: Machine) -> None:
    secret = testing.Secret(tracked_content={"access-key": "fleet:unit", "secret-key": "s3cr3t"})
    options = {**DEFAULTS, "object-store": STORE, "object-store-credentials": secret.id}
    cluster = testing.PeerRelation("cluster", peers_data={1: {"url": "http://192.0.2.1:3142"}})
    state = testing.State(config=options, secrets={secret}, relations={cluster})
    out = ctx().run(ctx().on.install(), state)
    store = _config(machine)["cache"]["store"]
    assert (store["peer_url"], store["peers"]) == (
        "http://192.0.2.0:3142",
        ["http://192.0.2.1:3142"],
    )
    assert workload.validate(_config(machine)).cache.store.peers == ("http://192.0.2.1:3142",)
    machine.calls.clear()
    grown = dataclasses.replace(
        out.get_relation(cluster.id),
        peers_data={1: {"url": "http://192.0.2.1:3142"}, 2: {"url": "http://192.0.2.2:3142"}},
    )
    ctx().run(
        ctx().on.relation_changed(grown, remote_unit=2),
        dataclasses.replace(out, relations={grown}),
    )
    assert _config(machine)["cache"]["store"]["peers"] == [
        "http://192.0.2.1:3142",
        "http://192.0.2.2:3142",
    ]
    assert machine.systemctl() == [["reload", "archive-local"]]  # the store stays: no restart


@pytest.mark.parametrize(
    ("store", "credentials", "message"),
    [
        (STORE, None, "object-store-credentials: the object store needs a secret"),
        (STORE, "not-granted", "object-store-credentials: secret secret:"),
        ("[a, list]", "ok", "object-store: expected a YAML mapping"),
        ("{endpoint: 'http://x:8080', bucket: B}", "ok", "object-store: cache.store.bucket"),
    ],
)
def test_a_bad_object_store_option_blocks_and_changes_nothing(
    machine: Machine, store: str, credentials: str | None, message: str
) -> None:
    secret = testing.Secret(tracked_content={"access-key": "a", "secret-key": "b"})
    state = ctx().run(ctx().on.install(), testing.State(config=DEFAULTS, secrets={secret}))
    before = _config(machine)
    machine.calls.clear()
    options = {**DEFAULTS, "object-store": store}
    if credentials == "ok":
        options["object-store-credentials"] = secret.id
    elif credentials is not None:  # a secret this application was never granted
        options["object-store-credentials"] = testing.Secret(tracked_content={"x": "y"}).id
    out = ctx().run(ctx().on.config_changed(), dataclasses.replace(state, config=options))
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(message), out.unit_status.message
    assert _config(machine) == before and machine.systemctl() == []


def test_units_on_one_store_sign_what_they_share_with_the_leaders_key(machine: Machine) -> None:
    """Not the bucket's credential: a key of the application's, made by the leader, that
    every unit writes to its key file (0600) and names in `cache.store.fleet_key_file`."""
    creds = testing.Secret(tracked_content={"access-key": "fleet:unit", "secret-key": "s3cr3t"})
    options = {**DEFAULTS, "object-store": STORE, "object-store-credentials": creds.id}
    cluster = testing.PeerRelation("cluster", peers_data={1: {"url": "http://192.0.2.1:3142"}})
    out = ctx().run(
        ctx().on.install(),
        testing.State(config=options, secrets={creds}, relations={cluster}, leader=True),
    )
    key_file = machine.root / "etc/archive-local/fleet-key"
    key = key_file.read_text().strip()
    assert len(key) == 64 and key_file.stat().st_mode & 0o777 == 0o600
    data = out.get_relation(cluster.id).local_app_data
    [secret] = [s for s in out.secrets if s.id == data["fleet-key"]]
    assert secret.tracked_content == {"key": key} and secret.owner == "app"
    store = _config(machine)["cache"]["store"]
    assert store["fleet_key_file"] == "/etc/archive-local/fleet-key"
    assert workload.validate(_config(machine)).cache.store.fleet_key_file is not None
    assert key not in (machine.root / "etc/archive-local/config.yaml").read_text()
    again = ctx().run(ctx().on.leader_elected(), out)  # the same leader: the same key
    assert key_file.read_text().strip() == key
    assert len([s for s in again.secrets if s.label == "fleet-key"]) == 1

    key_file.unlink()  # a follower: takes the leader's
    peers = testing.PeerRelation(
        "cluster",
        local_app_data={"fleet-key": secret.id},
        peers_data={1: {"url": "http://192.0.2.1:3142"}},
    )
    follower = testing.State(config=options, secrets={creds, secret}, relations={peers})
    ctx().run(ctx().on.relation_changed(peers, remote_unit=1), follower)
    assert key_file.read_text().strip() == key
    ctx().run(  # no object store: no key
        ctx().on.config_changed(), dataclasses.replace(follower, config=DEFAULTS)
    )
    assert not key_file.exists() and "store" not in _config(machine)["cache"]
