"""The alert rules and dashboard the charm ships: promtool checks and unit-tests the rules
(firing and not firing), and every metric a rule or panel queries is one the appliance
exports (read from a running appliance's /metrics, not from a list)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.conftest import StartAppliance, http_get, require

CHARM = Path(__file__).resolve().parents[3] / "charm"
RULES = CHARM / "src/prometheus_alert_rules/archive-local.rules"
DASHBOARD = CHARM / "src/grafana_dashboards/archive-local.json"
METRIC = re.compile(r"\barchive_local_[a-z_]+")


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    require("promtool", "prometheus")
    check = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = CHARM / "tests/rules/archive-local.test.yaml"
    run = subprocess.run(
        ["promtool", "test", "rules", tests.name], cwd=tests.parent, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = set(re.findall(r"alertname: (\w+)", tests.read_text()))
    assert alerts - {"ArchiveLocalSeedFailing"} <= tested  # seed failing: same shape as sync


def test_rules_and_panels_query_only_metrics_the_appliance_exports(
    start_appliance: StartAppliance,
) -> None:
    app = start_appliance({"debian": ["http://127.0.0.1:9/debian"]})
    exposition = http_get(f"{app.url}/metrics")[1].decode()
    exported = set(re.findall(r"^# (?:HELP|TYPE) (archive_local_\w+)", exposition, re.M))
    exported |= {n + "_total" for n in exported} | {n + "_bucket" for n in exported}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in METRIC.findall(target["expr"])
    }
    queried |= set(METRIC.findall(RULES.read_text()))
    assert queried, "nothing queried?"
    assert sorted(queried - exported) == []
