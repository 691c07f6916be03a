"""The workload: archive-local installed from the bundled wheel, configured, run by systemd.

Everything the charm does to the machine goes through `Workload`: files under `root`
(`/` on a unit, a temp dir in tests) and commands through `run` (the real one on a unit,
a recorder in tests). The appliance's own code validates the rendered configuration and
says what a reload cannot apply, so the charm never second-guesses it.
"""

from __future__ import annotations

import json
import os
import subprocess
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
    "discovery.mdns": "mdns",
    "admin.allow": "admin-allow",
}

Run = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=3600, check=False)


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


def render(options: Mapping[str, Any]) -> dict[str, Any]:
    """The appliance's configuration document for these charm options."""
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
        "seed": {"targets": _yaml_list(options, "seed-targets")},
        "admin": {
            "token_file": str(TOKEN),
            "allow": str(options.get("admin-allow") or "").split(),
        },
        "discovery": {"mdns": bool(options.get("mdns", True))},
    }
    remaps = _remaps(str(options.get("remaps") or ""))
    if remaps:
        data["apt"]["remaps"] = remaps
    return data


def validate(data: Mapping[str, Any]) -> Any:
    """The appliance's own validation (the same code the service runs)."""
    from appliance import config

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

    # -- configure and run -----------------------------------------------------------
    def apply(self, options: Mapping[str, Any]) -> Applied:
        """Render, validate, write what changed, then reload or restart as needed.
        An invalid configuration raises InvalidConfig and changes nothing."""
        data = render(options)
        new = validate(data)
        text = "# written by the archive-local charm: change the charm's config instead\n"
        text += yaml.safe_dump(data, sort_keys=False)
        old = self._current()
        done = Applied()
        done.unit_changed = self._write(UNIT, self.unit_text())
        done.config_changed = self._write(CONFIG, text)
        if done.unit_changed:
            self._systemctl("daemon-reload")
        if done.unit_changed or not self.enabled():
            self._systemctl("enable", SERVICE)
        from appliance import config

        if done.unit_changed or (old is not None and config.restart_needed(old, new)):
            done.action = "restart"
        elif done.config_changed:
            done.action = "reload" if self.active() else "start"
        elif not self.active():
            done.action = "start"
        if done.action:
            self._systemctl(done.action, SERVICE)
        return done

    def _current(self) -> Any:
        from appliance import config

        try:
            return config.load(self.path(CONFIG))
        except config.ConfigError:
            return None

    def _write(self, target: Path, text: str) -> bool:
        """Atomically, only when different; True when the file changed."""
        path = self.path(target)
        if path.exists() and path.read_text() == text:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
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
