#!/usr/bin/env python3
"""The archive-local machine charm: one reconcile for every event, status only in
collect-unit-status, actions through the service's own CLI and API."""

from __future__ import annotations

import base64
import json
import logging
import lzma
from pathlib import Path
from typing import Any

import ops
import yaml
from workload import InvalidConfig, Workload

log = logging.getLogger(__name__)


def bundled(charm_dir: Path) -> tuple[Path, str]:
    """The wheels packed into the charm, and the archive-local version among them."""
    wheels = charm_dir / "wheels"
    found = sorted(wheels.glob("archive_local-*.whl"))
    if not found:
        raise RuntimeError(f"no archive-local wheel in {wheels}")
    return wheels, found[-1].name.split("-")[1]


class ArchiveLocalCharm(ops.CharmBase):
    workload_factory = staticmethod(Workload)

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.workload = self.workload_factory()
        self._problem: ops.StatusBase | None = None
        for event in (
            self.on.install,
            self.on.config_changed,
            self.on.upgrade_charm,
            self.on.start,
            self.on.update_status,
        ):
            framework.observe(event, self._reconcile)
        for relation in ("apt-proxy", "website", "cos-agent"):
            framework.observe(self.on[relation].relation_joined, self._reconcile)
            framework.observe(self.on[relation].relation_changed, self._reconcile)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)
        for name in ("sync_images", "seed", "cache_stats", "purge", "verify", "get_admin_token"):
            framework.observe(getattr(self.on, f"{name}_action"), getattr(self, f"_on_{name}"))

    @property
    def port(self) -> int:
        return int(self.config.get("port", 3142))

    # -- the one reconcile ------------------------------------------------------------
    def _reconcile(self, _event: ops.EventBase) -> None:
        try:
            wheels, version = bundled(self.charm_dir)
            if self.workload.install(wheels, version):
                log.info("installed archive-local %s", version)
            self.unit.set_workload_version(version)
        except RuntimeError as exc:
            self._problem = ops.BlockedStatus(f"install failed: {exc}")
            return
        try:
            done = self.workload.apply(dict(self.config))
        except InvalidConfig as exc:  # the running configuration stays as it was
            self._problem = ops.BlockedStatus(str(exc))
            return
        except RuntimeError as exc:
            self._problem = ops.BlockedStatus(str(exc))
            return
        if done.action:
            log.info("archive-local: %s", done.action)
        self.unit.set_ports(self.port)
        self._publish_address()
        self._publish_cos()

    def _publish_cos(self) -> None:
        """The cos-agent provider side, written here (its wire format: one unit-data key
        `config` with scrape jobs, alert rules and LZMA+base64 dashboards)."""
        relations = self.model.relations["cos-agent"]
        if not relations:
            return
        src = self.charm_dir / "src"
        rules: dict[str, Any] = {}
        for path in sorted((src / "prometheus_alert_rules").glob("*.rules")):
            rules.setdefault("groups", []).extend(yaml.safe_load(path.read_text())["groups"])
        dashboards = [
            base64.b64encode(lzma.compress(path.read_bytes())).decode()
            for path in sorted((src / "grafana_dashboards").glob("*.json"))
        ]
        config = {
            "metrics_alert_rules": rules,
            "log_alert_rules": {},
            "dashboards": dashboards,
            "metrics_scrape_jobs": [
                {
                    "job_name": "archive-local",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [f"localhost:{self.port}"]}],
                }
            ],
            "log_slots": [],
        }
        for relation in relations:
            relation.data[self.unit]["config"] = json.dumps(config, sort_keys=True)

    def _publish_address(self) -> None:
        """Where related applications reach this unit: `apt-proxy` gets the proxy URL,
        `website` the host and port (its health check is GET /healthz)."""
        for name in ("apt-proxy", "website"):
            for relation in self.model.relations[name]:
                binding = self.model.get_binding(relation)
                address = binding.network.ingress_address if binding else None
                if address is None:
                    continue
                host = f"[{address}]" if address.version == 6 else str(address)
                data = relation.data[self.unit]
                if name == "apt-proxy":
                    data["url"] = f"http://{host}:{self.port}"
                else:
                    data.update({"hostname": str(address), "port": str(self.port)})

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        if self._problem is not None:
            event.add_status(self._problem)
            return
        if not self.workload.active():
            event.add_status(ops.BlockedStatus("archive-local is not running (see its log)"))
            return
        code, health = self.workload.get(self.port, "/healthz")
        if code == 0:
            event.add_status(ops.WaitingStatus("archive-local is starting"))
        elif health and health.get("status") == "draining":
            event.add_status(ops.MaintenanceStatus("draining"))
        elif code != 200:
            problems = "; ".join((health or {}).get("problems", [])) or f"/healthz {code}"
            event.add_status(ops.BlockedStatus(f"unhealthy: {problems}"))
        else:
            event.add_status(ops.ActiveStatus(self._summary()))

    def _summary(self) -> str:
        code, status = self.workload.get(self.port, "/api/status")
        if code != 200 or not status:
            return "serving"
        parts = ["serving"]
        if status.get("hit_ratio") is not None:
            parts.append(f"hit ratio {status['hit_ratio'] * 100:.0f}%")
        feeds = status.get("sync", {}).get("feeds", {})
        if any(not o.get("ok") for o in feeds.values()):
            parts.append("a sync failed")
        return ", ".join(parts)

    # -- actions ---------------------------------------------------------------------
    def _cli_action(self, event: ops.ActionEvent, *args: str) -> Any:
        out = self.workload.cli(*args)
        try:
            result = json.loads(out.stdout) if out.stdout.strip() else None
        except ValueError:
            result = None
        if out.returncode != 0:
            detail = (out.stderr or "").strip().splitlines()[-1:] or [f"exit {out.returncode}"]
            if result is not None:
                event.set_results({"result": json.dumps(result)})
            event.fail(detail[0])
            return None
        return result

    def _on_sync_images(self, event: ops.ActionEvent) -> None:
        outcomes = self._cli_action(event, "sync", "--json")
        if outcomes is not None:
            event.set_results(
                {
                    "feeds": json.dumps(
                        {o["feed"]: {"ok": o["ok"], "items": len(o["items"])} for o in outcomes}
                    )
                }
            )

    def _on_seed(self, event: ops.ActionEvent) -> None:
        outcomes = self._cli_action(event, "seed", "--json")
        if outcomes is not None:
            event.set_results(
                {"targets": json.dumps({o["target"]: {"ok": o["ok"]} for o in outcomes})}
            )

    def _on_verify(self, event: ops.ActionEvent) -> None:
        args = ["verify", "--json", *(["--fix"] if event.params.get("fix") else [])]
        report = self._cli_action(event, *args)
        if report is not None:
            event.set_results({k: report[k] for k in ("checked", "ok", "bad") if k in report})

    def _on_cache_stats(self, event: ops.ActionEvent) -> None:
        code, status = self.workload.get(self.port, "/api/status")
        if code != 200 or not status:
            event.fail(f"the service did not answer (/api/status: {code or 'no connection'})")
            return
        cache = status["cache"]
        event.set_results(
            {
                "bytes": cache["bytes"],
                "entries": cache["entries"],
                "max-bytes": cache["max_bytes"],
                "hit-ratio": status["hit_ratio"] if status["hit_ratio"] is not None else "none",
                "downloads": len(status["downloads"]),
            }
        )

    def _on_purge(self, event: ops.ActionEvent) -> None:
        params = {k: v for k, v in event.params.items() if k in ("path", "remap") and v}
        if len(params) != 1:
            event.fail("give path or remap (one of them)")
            return
        code, body = self.workload.get(self.port, "/api/admin/purge", params)
        if code != 200:
            event.fail(f"purge: {code}")
            return
        event.set_results({"removed": body["removed"]})

    def _on_get_admin_token(self, event: ops.ActionEvent) -> None:
        try:
            event.set_results({"token": self.workload.token()})
        except OSError as exc:
            event.fail(f"no admin token yet: {exc.strerror}")


if __name__ == "__main__":  # pragma: no cover
    ops.main(ArchiveLocalCharm)
