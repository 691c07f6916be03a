"""The workload: archive-local installed from the bundled wheel, configured, run by systemd.

Everything the charm does to the machine goes through `Workload`: files under `root`
(`/` on a unit, a temp dir in tests) and commands through `run` (the real one on a unit,
a recorder in tests). The appliance's own code validates the rendered configuration and
says what a reload cannot apply, so the charm never second-guesses it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PREFIX = Path("/opt/archive-local")
CONFIG = Path("/etc/archive-local/config.yaml")
UNIT = Path("/etc/systemd/system/archive-local.service")
STATE = Path("/var/lib/archive-local")
CACHE = Path("/var/cache/archive-local")
TOKEN = STATE / "admin-token"
KEYSTONE_PASSWORD = Path("/etc/archive-local/keystone-password")
STORE_CREDENTIALS = Path("/etc/archive-local/store-credentials")
FLEET_KEY = Path("/etc/archive-local/fleet-key")  # the units' shared HMAC key (not the bucket's)
SERVICE = "archive-local"
USER = "archive-local"

# charm option -> the appliance key its errors name
OPTION_OF = {
    "listen": "port",
    "cache.max_size": "cache-size",
    "apt.remaps": "remaps",
    "apt.allow": "allowed-hosts",
    "apt.index_ttl": "index-ttl",
    "images.feeds": "image-feeds",
    "images.sync_interval": "sync-interval",
    "seed.targets": "seed-targets",
    "cache.store": "object-store",
    "workers": "workers",
    "discovery.mdns": "mdns",
    "admin.allow": "admin-allow",
}
DEFAULT_TARGET = "openstack"  # the glance target made when Keystone is related and none given

Run = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """A command on the unit, without the charm's own PYTHONPATH (dispatch puts the charm's
    venv there: pip would count its packages as installed, the service would import them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=3600, check=False, env=env
    )


class InvalidConfig(ValueError):
    """The charm config renders a configuration the appliance refuses; says which option."""


def _option(message: str) -> str:
    """`images.feeds[0].url: ...` -> `image-feeds: images.feeds[0].url: ...`."""
    for key, option in OPTION_OF.items():
        if message.startswith(key):
            return f"{option}: {message}"
    return message


def _yaml_list(options: Mapping[str, Any], name: str) -> list[Any]:
    text = str(options.get(name) or "").strip()
    if not text:
        return []
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"{name}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(value, list):
        raise InvalidConfig(f"{name}: expected a YAML list")
    return value


def _remaps(text: str) -> dict[str, list[str]]:
    remaps: dict[str, list[str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 2:
            raise InvalidConfig(f"remaps: line {n}: expected NAME URL [URL...]")
        remaps[words[0]] = words[1:]
    return remaps


@dataclass(frozen=True)
class Keystone:
    """Service credentials Keystone gave this application on `identity-service`."""

    auth_url: str
    username: str
    password: str
    project_name: str
    domain: str = "service_domain"

    @classmethod
    def from_relation(cls, data: Mapping[str, str]) -> Keystone | None:
        """From the keystone unit's relation data; None until it has sent everything."""
        need = ("service_host", "service_port", "service_username", "service_password")
        if not all(data.get(k) for k in need) or not data.get("service_tenant"):
            return None
        protocol = data.get("service_protocol") or "http"
        host = data["service_host"]
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return cls(
            auth_url=f"{protocol}://{host}:{data['service_port']}/v3",
            username=data["service_username"],
            password=data["service_password"],
            project_name=data["service_tenant"],
            domain=data.get("service_domain") or cls.domain,
        )


def keystone_targets(options: Mapping[str, Any]) -> list[str]:
    """The glance seed targets that take their credentials from Keystone (no `auth`)."""
    return [
        str(t.get("name"))
        for t in _yaml_list(options, "seed-targets")
        if isinstance(t, dict) and t.get("type") == "glance" and "auth" not in t
    ]


def _seed_targets(options: Mapping[str, Any], keystone: Keystone | None) -> list[Any]:
    """seed-targets, with Keystone's credentials in the glance targets given no `auth`
    (left out until Keystone has sent them); with none given and Keystone related, one
    glance target seeding every feed."""
    targets = _yaml_list(options, "seed-targets")
    if keystone is None:
        return [t for t in targets if str(t.get("name")) not in keystone_targets(options)]
    if not targets:
        feeds = [f.get("name") for f in _yaml_list(options, "image-feeds") if isinstance(f, dict)]
        if not feeds:
            return []
        targets = [{"name": DEFAULT_TARGET, "type": "glance", "feeds": feeds}]
    region = str(options.get("region") or "RegionOne")
    auth = {
        "keystone": {
            "auth_url": keystone.auth_url,
            "username": keystone.username,
            "project_name": keystone.project_name,
            "user_domain_name": keystone.domain,
            "project_domain_name": keystone.domain,
            "region_name": region,
            "password_file": str(KEYSTONE_PASSWORD),
        }
    }
    return [
        {**t, "auth": auth}
        if isinstance(t, dict) and t.get("type") == "glance" and "auth" not in t
        else t
        for t in targets
    ]


def _object_store(options: Mapping[str, Any]) -> dict[str, Any] | None:
    text = str(options.get("object-store") or "").strip()
    if not text:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"object-store: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise InvalidConfig("object-store: expected a YAML mapping (endpoint, bucket, ...)")
    if "credentials_file" in value:
        raise InvalidConfig("object-store: the credentials go in object-store-credentials")
    return {"type": "s3", **value, "credentials_file": str(STORE_CREDENTIALS)}


def render(
    options: Mapping[str, Any],
    keystone: Keystone | None = None,
    fleet: tuple[str, list[str]] | None = None,
    fleet_key: bool = False,
) -> dict[str, Any]:
    """The appliance's configuration document for these charm options. `fleet`: this
    unit's URL and the other units' (the `cluster` relation): with an object store, a
    unit streams a download another unit holds the lease for from that unit."""
    data: dict[str, Any] = {
        "listen": f"[::]:{options.get('port', 3142)}",
        "cache": {"dir": str(CACHE), "max_size": options.get("cache-size", "50GiB")},
        "apt": {
            "index_ttl": options.get("index-ttl", 300),
            "allow": str(options.get("allowed-hosts") or "").split(),
        },
        "images": {
            "sync_interval": options.get("sync-interval", "6h"),
            "gnupg_home": str(STATE / "gnupg"),
            "feeds": _yaml_list(options, "image-feeds"),
        },
        "seed": {"targets": _seed_targets(options, keystone)},
        "admin": {
            "token_file": str(TOKEN),
            "allow": str(options.get("admin-allow") or "").split(),
        },
        "discovery": {"mdns": bool(options.get("mdns", True))},
    }
    remaps = _remaps(str(options.get("remaps") or ""))
    if remaps:
        data["apt"]["remaps"] = remaps
    if (store := _object_store(options)) is not None:
        if fleet is not None:
            store |= {"peer_url": fleet[0], "peers": sorted(fleet[1])}
        if fleet_key:
            store["fleet_key_file"] = str(FLEET_KEY)
        data["cache"]["store"] = store
    workers = str(options.get("workers") or "auto").strip()
    data["workers"] = int(workers) if workers.isdigit() else workers  # "auto", or refused
    return data


def appliance_config() -> Any:
    """The appliance's own `config` package: from the installed service's venv on a unit
    (the code the service runs), from the source tree in tests."""
    try:
        from appliance import config
    except ImportError:
        sys.path.extend(str(p) for p in PREFIX.glob("lib/python3*/site-packages"))
        from appliance import config
    return config


def validate(data: Mapping[str, Any]) -> Any:
    """The appliance's own validation (the same code the service runs)."""
    config = appliance_config()

    try:
        return config.parse(dict(data), "charm config")
    except config.ConfigError as exc:
        raise InvalidConfig(_option(str(exc))) from None


@dataclass
class Applied:
    """What `Workload.apply` did (for logs and tests)."""

    installed: bool = False
    unit_changed: bool = False
    config_changed: bool = False
    action: str | None = None  # restart, reload, start or None


class Workload:
    def __init__(self, root: Path = Path("/"), run: Run = run_command) -> None:
        self.root = root
        self.run = run

    def path(self, p: Path) -> Path:
        return self.root / p.relative_to("/")

    # -- install --------------------------------------------------------------------
    def installed_version(self) -> str | None:
        version = self.path(PREFIX / "VERSION")
        return version.read_text().strip() if version.exists() else None

    def install(self, wheels: Path, version: str) -> bool:
        """The bundled wheel (and its dependencies' wheels) into the venv, offline; a no-op
        when that version is installed already."""
        if self.installed_version() == version:
            return False
        prefix = str(PREFIX)
        steps = (
            ["python3", "-m", "venv", prefix],
            [
                f"{prefix}/bin/pip",
                "install",
                "--no-index",
                "--find-links",
                str(wheels),
                "--upgrade",
                f"archive-local=={version}",
            ],
        )
        for argv in steps:
            out = self.run(argv)
            if out.returncode != 0:
                raise RuntimeError(f"{argv[0]}: {(out.stderr or out.stdout).strip()[-300:]}")
        if self.run(["id", "-u", USER]).returncode != 0:
            self.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    str(STATE),
                    "--shell",
                    "/usr/sbin/nologin",
                    USER,
                ]
            )
        self._write(PREFIX / "VERSION", version + "\n")
        return True

    def unit_text(self) -> str:
        """The project's own unit, as installed with the package."""
        found = list(self.path(PREFIX).glob("lib/python3*/site-packages/appliance/data"))
        if not found:
            raise RuntimeError("archive-local is not installed")
        return (found[0] / "archive-local.service").read_text()

    # -- secrets the service reads --------------------------------------------------
    def ensure_token(self) -> str:
        """The admin token: the one on disk, else a new one written before the service
        starts (so that the service never makes its own)."""
        path = self.path(TOKEN)
        if path.exists():
            return path.read_text().strip()
        token = secrets.token_urlsafe(32)
        self.set_token(token)
        return token

    def set_token(self, token: str) -> bool:
        """The admin token shared by the leader; True when the file changed."""
        return self._write_secret(TOKEN, token + "\n")

    def _write_secret(self, target: Path, text: str) -> bool:
        """Like `_write`, readable by the service's user only."""
        return self._write(target, text, secret=True)

    # -- configure and run -----------------------------------------------------------
    def set_store_credentials(self, access_key: str | None, secret_key: str | None) -> bool:
        """The object store's credentials file (AWS style) or none; True when it changed."""
        if access_key is None or secret_key is None:
            path = self.path(STORE_CREDENTIALS)
            existed = path.exists()
            path.unlink(missing_ok=True)
            return existed
        text = (
            f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"
        )
        return self._write_secret(STORE_CREDENTIALS, text)

    def set_fleet_key(self, key: str | None) -> bool:
        """The fleet's key file (the leader's secret) or none; True when it changed."""
        if key is None:
            path = self.path(FLEET_KEY)
            existed = path.exists()
            path.unlink(missing_ok=True)
            return existed
        return self._write_secret(FLEET_KEY, key + "\n")

    def apply(
        self,
        options: Mapping[str, Any],
        keystone: Keystone | None = None,
        upgraded: bool = False,
        token_changed: bool = False,
        fleet: tuple[str, list[str]] | None = None,
    ) -> Applied:
        """Render, validate, write what changed, then reload or restart as needed: a new
        package (`upgraded`) restarts, a new admin token reloads. An invalid configuration
        raises InvalidConfig and changes nothing."""
        data = render(options, keystone, fleet, fleet_key=self.path(FLEET_KEY).exists())
        new = validate(data)
        text = "# written by the archive-local charm: change the charm's config instead\n"
        text += yaml.safe_dump(data, sort_keys=False)
        old = self._current()
        done = Applied()
        if keystone is not None:
            secret_changed = self._write_secret(KEYSTONE_PASSWORD, keystone.password + "\n")
        else:
            secret_changed = False
            self.path(KEYSTONE_PASSWORD).unlink(missing_ok=True)
        done.unit_changed = self._write(UNIT, self.unit_text())
        done.config_changed = self._write(CONFIG, text)
        if done.unit_changed:
            self._systemctl("daemon-reload")
        if done.unit_changed or not self.enabled():
            self._systemctl("enable", SERVICE)
        config = appliance_config()

        restart = upgraded or done.unit_changed
        if restart or (old is not None and config.restart_needed(old, new)):
            done.action = "restart"
        elif done.config_changed or token_changed or secret_changed:
            done.action = "reload" if self.active() else "start"
        elif not self.active():
            done.action = "start"
        if done.action:
            self._systemctl(done.action, SERVICE)
        return done

    def _current(self) -> Any:
        config = appliance_config()
        try:
            return config.load(self.path(CONFIG))
        except config.ConfigError:
            return None

    def _write(self, target: Path, text: str, secret: bool = False) -> bool:
        """Atomically, only when different; True when the file changed. A `secret` is
        created 0600 and given to the service's user before it takes the file's place."""
        path = self.path(target)
        if path.exists() and path.read_text() == text:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if secret:
            self.run(["chown", f"{USER}:{USER}", str(tmp)])
        os.replace(tmp, path)
        return True

    def _systemctl(self, *args: str) -> None:
        out = self.run(["systemctl", *args])
        if out.returncode != 0:
            raise RuntimeError(f"systemctl {' '.join(args)}: {out.stderr.strip()[-300:]}")

    def enabled(self) -> bool:
        return self.run(["systemctl", "is-enabled", "--quiet", SERVICE]).returncode == 0

    def active(self) -> bool:
        return self.run(["systemctl", "is-active", "--quiet", SERVICE]).returncode == 0

    # -- talking to the service -------------------------------------------------------
    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`archive-local ARGS` as the service's user (files it writes stay its own)."""
        return self.run(
            [
                "runuser",
                "-u",
                USER,
                "--",
                f"{PREFIX}/bin/archive-local",
                "--config",
                str(CONFIG),
                *args,
            ]
        )

    def token(self) -> str:
        return self.path(TOKEN).read_text().strip()

    def get(self, port: int, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """A GET (or, with `body`, an admin POST) to the service on loopback, no proxy."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
        if body is not None:
            request = urllib.request.Request(
                request.full_url,
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Authorization": f"Bearer {self.token()}"},
            )
        try:
            with opener.open(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read())
            except ValueError:
                return exc.code, None
        except (OSError, ValueError):
            return 0, None
