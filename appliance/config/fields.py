"""Field validators shared by every section, and the formats `dump` prints back.

Each validator names the key in its error (`cache.max_size: expected a size ...`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.config.filters import Filter, FilterError
from appliance.config.model import ConfigError, Listen, Secret

SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
RESERVED_PATHS = frozenset({"images", "streams", "keys"})  # served by the image feed
REMAP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?$")


def valid_name(name: Any) -> bool:
    """Remap and feed names: they become URL path segments."""
    return isinstance(name, str) and bool(REMAP_NAME.match(name)) and name not in RESERVED_PATHS


def parse_size(value: Any, key: str) -> int:
    """'50GiB', '500MB', 1024 -> bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size such as 50GiB, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in SIZE_UNITS:
        raise ConfigError(f"{key}: expected a size such as 50GiB or 500MB, got {value!r}")
    size = int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])
    if size <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    return size


def parse_listen(value: Any, key: str = "listen") -> Listen:
    """'0.0.0.0:3142', '[::]:3142', '127.0.0.1:3199', 'localhost:3142': an address the
    service binds (checked now, not at the bind: `999.1.1.1` or `my host` is refused)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", str(value))
    if not m:
        raise ConfigError(f"{key}: expected HOST:PORT (IPv6 as [ADDR]:PORT), got {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port must be 1-65535, got {port}")
    if host != "localhost":
        try:
            (ipaddress.IPv6Address if m.group(1) else ipaddress.IPv4Address)(host)
        except ValueError:
            raise ConfigError(
                f"{key}: {host!r} is not an IP address (one of this machine's, "
                "0.0.0.0 or [::] for all, or localhost)"
            ) from None
    return Listen(host, port)


def check_host_port(value: str, key: str) -> None:
    """A `host[:port]` that HOSTPORT matched (apt.allow): the port within 1-65535, a
    bracketed host an IPv6 address."""
    m = HOSTPORT.match(value)
    if m is None:
        raise ConfigError(f"{key}: expected host[:port], got {value!r}")
    host, port = m.group(1), m.group(2)
    if port and not 0 < int(port[1:]) < 65536:
        raise ConfigError(f"{key}: port must be 1-65535, got {value!r}")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"{key}: {host} is not an IPv6 address, got {value!r}") from None


def parse_upstream(value: Any, key: str) -> str:
    """An http(s) base URL, normalised without a trailing slash."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {value!r}")
    try:
        parts = urlsplit(value)
    except ValueError:  # `http://[::1`
        raise ConfigError(f"{key}: not a URL: {redact(value)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {redact(value)!r}")
    if parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        raise ConfigError(f"{key}: no query, fragment or credentials allowed in {redact(value)!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc} in {value!r}") from None
    return value.rstrip("/")


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, key: str) -> float:
    """'6h', '30m', '45s', '1d' or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
    if not m or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration such as 6h, 30m or 45s, got {value!r}")
    return float(m.group(1)) * DURATION_UNITS[m.group(2)]


def expect_mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def check_keys(data: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
    for k in data:
        if k not in allowed:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{where}: unknown key (expected one of: {', '.join(allowed)})")


def text(data: Mapping[str, Any], name: str, key: str, default: str | None = None) -> str | None:
    value = data.get(name, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{key}.{name}: expected text, got {value!r}")
    return value


def secret(data: Mapping[str, Any], stem: str, key: str) -> Secret | None:
    """`<stem>_file` or `<stem>_env`; a secret written in clear is refused."""
    if stem in data:
        raise ConfigError(
            f"{key}.{stem}: secrets are not written in the configuration; "
            f"use {stem}_file (a file only root can read) or {stem}_env"
        )
    path, env = data.get(f"{stem}_file"), data.get(f"{stem}_env")
    if path is not None and env is not None:
        raise ConfigError(f"{key}: give {stem}_file or {stem}_env, not both")
    if path is not None:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{key}.{stem}_file: expected a file path, got {path!r}")
        return Secret(file=Path(path))
    if env is not None:
        if not isinstance(env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise ConfigError(f"{key}.{stem}_env: expected a variable name, got {env!r}")
        return Secret(env=env)
    return None


def url(data: Mapping[str, Any], name: str, key: str) -> str | None:
    """An http(s) URL without credentials in it: a URL is shown on the status page and in
    problem messages, credentials live in files named by the configuration."""
    value = data.get(name)
    if value is None:
        return None
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = redact(value) if isinstance(value, str) else value
        raise ConfigError(f"{key}.{name}: expected an http(s) URL, got {shown!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{key}.{name}: no credentials in the URL ({redact(value)}): "
            "put them in the file the configuration names"
        )
    return value


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")  # to the authority's last @


def redact(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced: problem messages and errors
    name URLs, never the credentials someone put in one."""
    return _USERINFO.sub(r"\1***@", text)


def flag(data: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}.{name}: expected true or false, got {value!r}")
    return value


def whole(data: Mapping[str, Any], name: str, key: str, default: Any, minimum: int = 1) -> Any:
    """A whole number >= `minimum` (the default may be None: optional)."""
    value = data.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}.{name}: expected a whole number >= {minimum}, got {value!r}")
    return value


def choice(
    data: Mapping[str, Any], name: str, key: str, default: str, choices: Sequence[str]
) -> str:
    value = data.get(name, default)
    if value not in choices:
        raise ConfigError(f"{key}.{name}: {' or '.join(choices)}, got {value!r}")
    return str(value)


def path(data: Mapping[str, Any], name: str, key: str, default: Path | None, what: str) -> Path:
    value = data.get(name, None if default is None else str(default))
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}.{name}: expected {what} path, got {value!r}")
    return Path(value)


def filter_list(
    data: Mapping[str, Any], name: str, key: str, default: Sequence[str]
) -> tuple[str, ...]:
    """Item filters (`arch=amd64`, `ftype~img`), each checked now, not at the first sync."""
    value = data.get(name, list(default))
    if not isinstance(value, list):
        raise ConfigError(f"{key}.{name}: expected a list such as ['arch=amd64']")
    for j, text_ in enumerate(value):
        try:
            Filter.parse(str(text_))
        except FilterError as exc:
            raise ConfigError(f"{key}.{name}[{j}]: {exc}") from None
    return tuple(map(str, value))


def seconds(data: Mapping[str, Any], name: str, key: str, default: float, positive: bool) -> float:
    """A plain number of seconds (> 0, or >= 0)."""
    value = data.get(name, default)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or value < 0 or (positive and value == 0):
        sign = ">" if positive else ">="
        raise ConfigError(f"{key}.{name}: expected seconds {sign} 0, got {value!r}")
    return float(value)


_BINARY = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_DECIMAL = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000))


def format_size(n: float) -> str | int:
    """50GiB for 53687091200: the largest unit that divides it exactly (else bytes)."""
    n = int(n)
    for name, unit in (*_BINARY, *_DECIMAL):
        if n and n % unit == 0:
            return f"{n // unit}{name}"
    return n


def human_size(n: float) -> str:
    """A size for people, in the units the configuration uses (IEC: `50GiB` is shown as
    `50.0 GiB`, never `53.7 GB`): one decimal from KiB up."""
    for name, unit in _BINARY:
        if abs(n) >= unit:
            return f"{n / unit:.1f} {name}"
    return f"{int(n)} B"


def format_duration(s: float) -> str | float:
    """6h for 21600.0, 3d, 90s: the largest unit that divides it exactly."""
    if s != int(s):
        return s
    n = int(s)
    for name, unit in (("d", 86400), ("h", 3600), ("m", 60)):
        if n and n % unit == 0:
            return f"{n // unit}{name}"
    return f"{n}s"
