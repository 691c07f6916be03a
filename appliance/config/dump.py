"""`archive-local config`: the effective configuration as YAML, written the way users
write it (sizes as 50GiB, durations as 6h), secrets as where they come from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.config.fields import format_duration, format_size
from appliance.config.model import Config, Listen, Secret, TargetConfig

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
    return out


def _target(target: TargetConfig) -> dict[str, Any]:
    """A target: `type` first, then its fields (where secrets come from, never their values)."""
    data = _plain(target)
    return {"type": data.pop("type"), **data}


def dump(config: Config) -> str:
    text = yaml.safe_dump(to_data(config), sort_keys=False)
    if config.workers_auto:  # what `auto` means here, as a comment (read back the same)
        text = text.replace(
            "\nworkers: auto\n", f"\nworkers: auto  # {config.workers} on this machine\n"
        )
    return text
