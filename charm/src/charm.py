#!/usr/bin/env python3
"""The archive-local machine charm: one reconcile for every event, status only in
collect-unit-status, actions through the service's own CLI and API."""

from __future__ import annotations

import base64
import json
import logging
import lzma
import secrets
import time
from pathlib import Path
from typing import Any

import ops
import yaml
from workload import InvalidConfig, Keystone, Workload, keystone_targets

log = logging.getLogger(__name__)


def bundled(charm_dir: Path) -> tuple[Path, str]:
    """The wheels packed into the charm, and the archive-local version among them."""
    wheels = charm_dir / "wheels"
    found = sorted(wheels.glob("archive_local-*.whl"))
    if not found:
        raise RuntimeError(f"no archive-local wheel in {wheels}")
    return wheels, found[-1].name.split("-")[1]


TOKEN_KEY = "admin-token"  # the peer relation's app data: the secret holding the admin token
FLEET_KEY = "fleet-key"  # ... and the secret holding the key the units sign shared objects with
ENDPOINT_KEYS = ("service", "region", "public_url", "internal_url", "admin_url")
RELATIONS = ("apt-proxy", "website", "cos-agent", "identity-service", "cluster")


class ArchiveLocalCharm(ops.CharmBase):
    workload_factory = staticmethod(Workload)

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.workload = self.workload_factory()
        self._statuses: list[ops.StatusBase] = []
        for event in (
            self.on.install,
            self.on.config_changed,
            self.on.upgrade_charm,
            self.on.start,
            self.on.update_status,
            self.on.leader_elected,
            self.on.secret_changed,  # a new revision of the object store's credentials
        ):
            framework.observe(event, self._reconcile)
        for relation in RELATIONS:
            for kind in ("joined", "changed", "departed", "broken"):
                framework.observe(getattr(self.on[relation], f"relation_{kind}"), self._reconcile)
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
            upgraded = self.workload.install(wheels, version)
            if upgraded:
                log.info("installed archive-local %s", version)
            self.unit.set_workload_version(version)
        except RuntimeError as exc:
            self._statuses.append(ops.BlockedStatus(f"install failed: {exc}"))
            return
        options = dict(self.config)
        if not self.unit.is_leader():  # one unit seeds: two never upload one image at once
            options["seed-targets"] = ""
        keystone = self._keystone(options) if self.unit.is_leader() else None
        try:
            token_changed = self._share_token()
            if self._store_credentials(options):
                token_changed = True  # the service reads the file again on reload
            self._share_fleet_key(options)
            done = self.workload.apply(
                options, keystone, upgraded, token_changed, fleet=self._fleet()
            )
        except InvalidConfig as exc:  # the running configuration stays as it was
            self._statuses.append(ops.BlockedStatus(str(exc)))
            return
        except (RuntimeError, ops.SecretNotFoundError, ops.ModelError) as exc:
            self._statuses.append(ops.BlockedStatus(str(exc)))
            return
        if done.action:
            log.info("archive-local: %s", done.action)
        self.unit.set_ports(self.port)
        self._publish_address()
        self._publish_cos()
        self._register_product_streams()

    # -- identity-service: Keystone credentials in, the product-streams endpoint out ----
    def _keystone(self, options: dict[str, Any]) -> Keystone | None:
        """Keystone's credentials when related and sent; says in the status what a glance
        target without `auth` still waits for."""
        relation = self.model.get_relation("identity-service")
        found = None
        if relation is not None and relation.app is not None:
            for unit in sorted(relation.units, key=lambda u: u.name):
                found = Keystone.from_relation(relation.data[unit]) or found
        waiting = keystone_targets(options)
        if relation is None and waiting:
            self._statuses.append(
                ops.BlockedStatus(
                    f"seed-targets: {', '.join(waiting)} take credentials from Keystone: "
                    "integrate with keystone (identity-service)"
                )
            )
        elif relation is not None and found is None:
            self._statuses.append(ops.WaitingStatus("waiting for Keystone credentials"))
        return found

    def _register_product_streams(self) -> None:
        """The leader asks Keystone for a `product-streams` endpoint (service
        `image-stream`, as glance-simplestreams-sync does) at this unit's image-ids feed,
        so Juju finds the seeded images without `image-metadata-url`."""
        relation = self.model.get_relation("identity-service")
        if relation is None:
            return
        if not self.unit.is_leader():  # a former leader withdraws its endpoint
            for key in ENDPOINT_KEYS:
                relation.data[self.unit].pop(key, None)
            return
        url = self._url(relation)
        if url is None:
            return
        relation.data[self.unit].update(
            {
                "service": "image-stream",
                "region": str(self.config.get("region") or "RegionOne"),
                "public_url": url + "/",
                "internal_url": url + "/",
                "admin_url": url + "/",
            }
        )

    # -- the shared object store's credentials, from a user secret ---------------------
    def _store_credentials(self, options: dict[str, Any]) -> bool:
        """Write the object store's credentials file from `object-store-credentials` (a
        Juju secret with `access-key` and `secret-key`); True when it changed."""
        if not str(options.get("object-store") or "").strip():
            return self.workload.set_store_credentials(None, None)
        secret_id = self.config.get("object-store-credentials")
        if not secret_id:
            raise InvalidConfig(
                "object-store-credentials: the object store needs a secret with access-key "
                "and secret-key (juju add-secret, grant-secret, then set this option)"
            )
        try:
            content = self.model.get_secret(id=str(secret_id)).get_content(refresh=True)
        except (ops.SecretNotFoundError, ops.ModelError):
            raise InvalidConfig(
                f"object-store-credentials: secret {secret_id} cannot be read "
                "(juju grant-secret it to archive-local)"
            ) from None
        if not content.get("access-key") or not content.get("secret-key"):
            raise InvalidConfig(
                "object-store-credentials: the secret needs access-key and secret-key"
            )
        return self.workload.set_store_credentials(content["access-key"], content["secret-key"])

    # -- peers: one admin token for every unit -----------------------------------------
    def _share_token(self) -> bool:
        """The leader keeps the admin token in an application secret named in the peer
        data; every unit writes its content to the token file. True when it changed."""
        relation = self.model.get_relation("cluster")
        if relation is None:
            return False
        data = relation.data[self.app]
        if self.unit.is_leader() and not data.get(TOKEN_KEY):
            secret = self.app.add_secret(
                {"token": self.workload.ensure_token()},
                label=TOKEN_KEY,
                description="archive-local admin API bearer token",
            )
            data[TOKEN_KEY] = secret.id or ""
            return False
        secret_id = data.get(TOKEN_KEY)
        if not secret_id:
            return False  # the leader has not shared one yet: this unit's own serves
        token = self.model.get_secret(id=secret_id).get_content(refresh=True)["token"]
        return self.workload.set_token(token)

    def _share_fleet_key(self, options: dict[str, Any]) -> None:
        """With an object store, the leader makes the fleet's key (an application secret
        named in the peer data, never the bucket's credential) and every unit writes it
        to its key file: a unit copies in another's object only when its HMAC record made
        with that key verifies (or the unit can check the bytes itself)."""
        relation = self.model.get_relation("cluster")
        if relation is None or not str(options.get("object-store") or "").strip():
            self.workload.set_fleet_key(None)
            return
        data = relation.data[self.app]
        if self.unit.is_leader() and not data.get(FLEET_KEY):
            secret = self.app.add_secret(
                {"key": secrets.token_hex(32)},
                label=FLEET_KEY,
                description="archive-local: the key units sign shared objects with",
            )
            data[FLEET_KEY] = secret.id or ""
        secret_id = data.get(FLEET_KEY)
        if secret_id:
            key = self.model.get_secret(id=secret_id).get_content(refresh=True)["key"]
            self.workload.set_fleet_key(key)

    def _fleet(self) -> tuple[str, list[str]] | None:
        """This unit's URL and the other units' (their `url` on the peer relation)."""
        relation = self.model.get_relation("cluster")
        own = self._url(relation) if relation is not None else None
        if relation is None or own is None:
            return None
        others = [relation.data[u].get("url") for u in relation.units]
        return own, [u for u in others if u]

    def _address(self, relation: ops.Relation) -> str | None:
        """This unit's address on `relation` (IPv6 in brackets, for URLs)."""
        binding = self.model.get_binding(relation)
        address = binding.network.ingress_address if binding else None
        if address is None:
            return None
        return f"[{address}]" if address.version == 6 else str(address)

    def _url(self, relation: ops.Relation) -> str | None:
        host = self._address(relation)
        return None if host is None else f"http://{host}:{self.port}"

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
        `website` the host and port (its health check is GET /healthz), the peers `url`."""
        for name in ("apt-proxy", "website", "cluster"):
            for relation in self.model.relations[name]:
                host = self._address(relation)
                if host is None:
                    continue
                data = relation.data[self.unit]
                if name == "website":
                    data.update({"hostname": host.strip("[]"), "port": str(self.port)})
                else:
                    data["url"] = f"http://{host}:{self.port}"

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        """The most severe of what reconcile found and what the service says (ops keeps
        the worst): never active while the service is down or /healthz fails."""
        for status in self._statuses:
            event.add_status(status)
        if any(isinstance(s, ops.BlockedStatus) for s in self._statuses):
            return
        if self.workload.installed_version() is None:
            event.add_status(ops.MaintenanceStatus("installing archive-local"))
            return
        if not self.workload.active():
            event.add_status(ops.BlockedStatus("archive-local is not running (see its log)"))
            return
        code, health = self.workload.get(self.port, "/healthz")
        if code == 0:
            event.add_status(ops.MaintenanceStatus("archive-local is starting"))
        elif health and health.get("status") == "draining":
            event.add_status(ops.MaintenanceStatus("draining"))
        elif code != 200:
            problems = "; ".join((health or {}).get("problems", [])) or f"/healthz {code}"
            event.add_status(ops.BlockedStatus(f"unhealthy: {problems}"))
        else:
            code, status = self.workload.get(self.port, "/api/status")
            event.add_status(service_status(status if code == 200 and status else {}))

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


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp))


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}" if n >= 10 * 2**20 else f"{n / 2**20:.1f}"


def service_status(status: dict[str, Any]) -> ops.StatusBase:
    """The unit's status from the service's /api/status: maintenance while a sync runs
    (feed, items and MiB done), else active with the last successful sync, a failed
    feed named (a failed sync is never shown as done) and the hit ratio."""
    sync = status.get("sync") or {}
    progress = sync.get("progress")
    if sync.get("running"):
        if not progress:
            return ops.MaintenanceStatus("syncing images")
        return ops.MaintenanceStatus(
            f"syncing {progress['feed']}: {progress['items_done']}/{progress['items_total']} "
            f"items, {_mib(progress['bytes_done'])}/{_mib(progress['bytes_total'])} MiB"
        )
    parts = ["serving"]
    if status.get("hit_ratio") is not None:
        parts.append(f"hit ratio {status['hit_ratio'] * 100:.0f}%")
    failed = sorted(name for name, o in (sync.get("feeds") or {}).items() if not o.get("ok"))
    if failed:
        parts.append(f"sync FAILED: {', '.join(failed)}")
    if sync.get("last_success"):
        parts.append(f"last sync {_when(sync['last_success'])}")
    elif sync.get("feeds"):
        parts.append("no successful sync yet")
    return ops.ActiveStatus(", ".join(parts))


if __name__ == "__main__":  # pragma: no cover
    ops.main(ArchiveLocalCharm)
