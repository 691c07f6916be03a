"""`archive-local config`: the effective configuration as YAML, written the way users
write it (sizes as 50GiB, durations as 6h), secrets as where they come from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.config.fields import format_duration, format_size
from appliance.config.model import Config, GlanceTargetConfig, Listen, Secret, TargetConfig

_FORMATS = {"size": format_size, "duration": format_duration}


def _plain(value: Any, unit: str | None = None) -> Any:
    """One value, generically: dataclasses by their fields, units by their metadata."""
    if unit is not None and isinstance(value, int | float) and not isinstance(value, bool):
        return _FORMATS[unit](value)
    if isinstance(value, Secret):
        return str(value.file) if value.file else f"${value.env}"
    if isinstance(value, Listen | Path):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name), f.metadata.get("unit"))
            for f in fields(value)
            if f.name != "source"
        }
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def to_data(config: Config) -> dict[str, Any]:
    """The configuration as the YAML document that would produce it."""
    out = _plain(config)
    del out["workers_auto"]
    if config.workers_auto:  # as written: the count follows the machine's cores
        out["workers"] = "auto"
    out["metrics"] = {"enabled": config.metrics}
    out["seed"]["targets"] = [_target(t) for t in config.seed.targets]
    if config.tls is not None and config.tls.cert is None:  # self-signed: cert, key left out
        del out["tls"]["cert"], out["tls"]["key"]
    return out


def _target(target: TargetConfig) -> dict[str, Any]:
    """A target: `type` first, then its fields (where secrets come from, never their values)."""
    data = _plain(target)
    if isinstance(target, GlanceTargetConfig):
        data = _glance(target, data)
    return {"type": data.pop("type"), **data}


def _glance(target: GlanceTargetConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Glance's credentials as they are written, under `auth` (the dataclass holds them
    flat): `endpoint`, `token_file`/`_env`, `keystone` with its secret's `_file`/`_env`."""
    for name in ("endpoint", "token", "keystone", "password"):
        del data[name]
    auth: dict[str, Any] = {}
    if target.endpoint is not None:
        auth["endpoint"] = target.endpoint
    if target.token is not None:
        auth |= _secret("token", target.token)
    if target.keystone:
        application = any(k.startswith("application_credential_") for k in target.keystone)
        stem = "application_credential_secret" if application else "password"
        auth["keystone"] = {**target.keystone, **_secret(stem, target.password)}
    return {**data, "auth": auth}


def _secret(stem: str, secret: Secret | None) -> dict[str, str]:
    """`<stem>_file: PATH` or `<stem>_env: NAME`: where the secret is read from."""
    if secret is None:
        return {}
    return {f"{stem}_file": str(secret.file)} if secret.file else {f"{stem}_env": str(secret.env)}


def dump(config: Config) -> str:
    text = yaml.safe_dump(to_data(config), sort_keys=False)
    if config.workers_auto:  # what `auto` means here, as a comment (read back the same)
        text = text.replace(
            "\nworkers: auto\n", f"\nworkers: auto  # {config.workers} on this machine\n"
        )
    return text
