"""Every metric family is declared once, by its whole name, in `appliance.families`: a
running service (`workers: 2`, the merged exposition) exposes nothing undeclared, each with
its declared type, help and labels; every family declared is written by the scrape; and
every name the docs, the alert rules and the dashboard query is declared."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from appliance import families
from appliance.cache.engine import Figures
from appliance.metrics import Metrics
from appliance.web.status import scrape
from tests.conftest import StartAppliance, http_get
from tests.e2e.cache.test_workers import _sockets
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parents[3]
QUERIED = (  # where names are written for people and for Prometheus
    ROOT / "docs/operations.md",
    *sorted((ROOT / "charm/src/prometheus_alert_rules").glob("*.rules")),
    *sorted((ROOT / "charm/src/grafana_dashboards").glob("*.json")),
)
NAME = re.compile(r"\barchive_local_[a-z_]+")
DEB = b"\x21" * 20_000


def exposed(text: str) -> dict[str, dict[str, Any]]:
    """Per name on a HELP/TYPE line: its help, type and the label names of its samples."""
    out: dict[str, dict[str, Any]] = {}
    for kind, name, rest in re.findall(r"^# (HELP|TYPE) (\S+) (.*)$", text, re.M):
        out.setdefault(name, {"labels": set()})[kind.lower()] = rest
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # a histogram's `_bucket`s are under its own name
            owner = families.declared(sample.name)
            line = sample.name if sample.name in out else owner.name if owner else None
            if line in out:
                out[line]["labels"] |= set(sample.labels) - {"le"}
    return out


def check(text: str) -> set[str]:
    """The names `text` exposes; each one declared, as declared."""
    found = exposed(text)
    for name, seen in found.items():
        family = families.declared(name)
        assert family is not None, f"{name} is exposed but not declared in appliance.families"
        created = name != family.name  # the `_created` gauge of a Counter or Histogram
        assert seen["type"] == ("gauge" if created else family.type), name
        assert seen["help"] == family.help, name
        if seen["labels"]:  # a family without samples yet shows no labels
            assert seen["labels"] == set(family.labels), name
    return set(found)


def test_a_service_of_two_workers_exposes_only_declared_families(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance, tmp_path: Path
) -> None:
    pool = upstream_root / "debian/pool/main/h"
    pool.mkdir(parents=True)
    (pool / "hello_1.0_amd64.deb").write_bytes(DEB)
    app = start_appliance(
        {"debian": [f"{upstream.url}/debian"]},
        cache_dir=tmp_path / "cache",
        extra={"workers": 2},
    )
    _sockets(app, 2)
    for name in ("hello_1.0_amd64.deb", "hello_1.0_amd64.deb", "missing_1_amd64.deb"):
        http_get(f"{app.url}/debian/pool/main/h/{name}")  # a miss, a hit, an upstream 404
    code, body = http_get(f"{app.url}/metrics")
    assert code == 200
    names = check(body.decode())
    assert {"archive_local_requests_total", "archive_local_upstream_errors_total"} <= names
    assert "archive_local_upstream_request_duration_seconds" in names


def test_every_declared_family_is_written_by_the_scrape() -> None:
    """A process with every figure there is (a shared store, syncs, seeds, refusals)."""
    metrics = Metrics()
    metrics.request("apt", "hit", 10, False, "/debian/pool/h/hello_1.0_amd64.deb")
    metrics.upstream("mirror", 0.1, "timeout")
    shared = dict.fromkeys(("hits", "misses", "uploads", "errors", "corrupt"), 1)
    figures = Figures(
        bytes=1,
        entries=1,
        max_bytes=10,
        evictions=0,
        rejected=0,
        not_stored={},
        downloads=[{"clients": 1}],
        shared_store={**shared, "up": True, "pending_uploads": 0},
        refused={"peer/size": 1},
    )
    stats = {"runs": 1, "failures": 0, "seconds": 1.0, "last_success": 1.0}
    jobs = SimpleNamespace(
        sync_stats={"feed": stats},
        seed_stats={"target": stats},
        last={"feed": SimpleNamespace(count=lambda _: 1)},
        seed_last={"target": SimpleNamespace(images=[1])},
    )
    source = SimpleNamespace(
        cache_figures=lambda: figures,
        jobs=jobs,
        integrity=lambda: {"connections_refused": 0, "apt_indexes": {"files": 0}},
    )
    metrics.add_source(lambda: scrape(source))  # type: ignore[arg-type]
    names = check(metrics.exposition().decode())
    declared = {name for f in families.FAMILIES for name in f.exposed()}
    assert names == declared


def test_every_name_the_docs_rules_and_dashboard_query_is_declared() -> None:
    for path in QUERIED:
        names = set(NAME.findall(path.read_text()))
        assert names or path.suffix == ".md", f"{path}: no metric named?"
        undeclared = sorted(n for n in names if families.declared(n) is None)
        assert undeclared == [], f"{path.relative_to(ROOT)} names {undeclared}"
    table = (ROOT / "docs/operations.md").read_text()
    assert "archive_local_sync_runs_total" in table  # the table is still where it was


def test_each_family_is_declared_once() -> None:
    names = [name for f in families.FAMILIES for name in f.exposed()]
    assert len(names) == len(set(names))
    assert all(f.name.startswith(families.PREFIX) for f in families.FAMILIES)
    assert all((f.type == "counter") == f.name.endswith("_total") for f in families.FAMILIES)
