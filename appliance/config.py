"""Configuration: one YAML document parsed once into frozen dataclasses.

The parsed `Config` is passed down explicitly (never a global), so tests build
their own from inline YAML. Every error names the offending key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml


class ConfigError(ValueError):
    """A configuration problem, phrased for the operator: `key: problem`."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CacheConfig:
    dir: Path
    max_size: int


@dataclass(frozen=True)
class AptConfig:
    index_ttl: float
    remaps: Mapping[str, tuple[str, ...]]
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpstreamConfig:
    """Timeouts for every upstream transfer (apt files, feeds, images)."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # longest silence between two reads of a body


@dataclass(frozen=True)
class FeedConfig:
    """One upstream simplestreams feed to mirror."""

    name: str
    url: str
    keyring: Path | None
    filters: tuple[str, ...] = ()
    max_items: int | None = None


@dataclass(frozen=True)
class ImagesConfig:
    sync_interval: float = 6 * 3600.0
    gnupg_home: Path = Path("/var/lib/archive-local/gnupg")
    feeds: tuple[FeedConfig, ...] = ()


@dataclass(frozen=True)
class Config:
    listen: Listen
    cache: CacheConfig
    apt: AptConfig
    images: ImagesConfig = ImagesConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    source: str = field(default="<embedded default>", compare=False)


_SIZE_UNITS = {
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
_REMAP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?$")


def valid_name(name: Any) -> bool:
    """Remap and feed names: they become URL path segments."""
    return isinstance(name, str) and bool(_REMAP_NAME.match(name)) and name not in RESERVED_PATHS


def parse_size(value: Any, key: str) -> int:
    """'50GiB', '500MB', 1024 -> bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size such as 50GiB, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"{key}: expected a size such as 50GiB or 500MB, got {value!r}")
    size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if size <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    return size


def parse_listen(value: Any, key: str = "listen") -> Listen:
    """'0.0.0.0:3142', '[::]:3142', '127.0.0.1:3199'."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", str(value))
    if not m:
        raise ConfigError(f"{key}: expected HOST:PORT (IPv6 as [ADDR]:PORT), got {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port must be 1-65535, got {port}")
    return Listen(host, port)


def parse_upstream(value: Any, key: str) -> str:
    """An http(s) base URL, normalised without a trailing slash."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{key}: no query, fragment or credentials allowed in {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc} in {value!r}") from None
    return value.rstrip("/")


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, key: str) -> float:
    """'6h', '30m', '45s', '1d' or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
    if not m or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration such as 6h, 30m or 45s, got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def _parse_feed(i: int, value: Any, names: set[str]) -> FeedConfig:
    from appliance.streams.filters import Filter, FilterError

    key = f"images.feeds[{i}]"
    data = _expect_mapping(value, key)
    _check_keys(data, ("name", "url", "keyring", "filters", "max_items"), key)
    name = data.get("name")
    if not isinstance(name, str) or not _REMAP_NAME.match(name):
        raise ConfigError(f"{key}.name: letters, digits, '.', '_' or '-' required, got {name!r}")
    if name in names:
        raise ConfigError(f"{key}.name: feed {name!r} is defined twice")
    names.add(name)
    url = parse_upstream(data.get("url"), f"{key}.url")
    keyring = data.get("keyring")
    if not isinstance(keyring, str) or not keyring:
        raise ConfigError(f"{key}.keyring: the keyring that verifies this feed is required")
    filters = data.get("filters", [])
    if not isinstance(filters, list):
        raise ConfigError(f"{key}.filters: expected a list such as ['arch=amd64']")
    for j, text in enumerate(filters):
        try:
            Filter.parse(str(text))
        except FilterError as exc:
            raise ConfigError(f"{key}.filters[{j}]: {exc}") from None
    max_items = data.get("max_items")
    if max_items is not None and (
        isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1
    ):
        raise ConfigError(f"{key}.max_items: expected a whole number >= 1, got {max_items!r}")
    return FeedConfig(name, url + "/", Path(keyring), tuple(map(str, filters)), max_items)


def _parse_images(value: Any) -> ImagesConfig:
    data = _expect_mapping(value, "images")
    _check_keys(data, ("sync_interval", "gnupg_home", "feeds"), "images")
    feeds = data.get("feeds") or []
    if not isinstance(feeds, list):
        raise ConfigError("images.feeds: expected a list of feeds")
    names: set[str] = set()
    default = ImagesConfig()
    home = data.get("gnupg_home", str(default.gnupg_home))
    if not isinstance(home, str) or not home:
        raise ConfigError(f"images.gnupg_home: expected a directory path, got {home!r}")
    return ImagesConfig(
        sync_interval=parse_duration(data.get("sync_interval", "6h"), "images.sync_interval"),
        gnupg_home=Path(home),
        feeds=tuple(_parse_feed(i, f, names) for i, f in enumerate(feeds)),
    )


def _parse_upstream_section(value: Any) -> UpstreamConfig:
    data = _expect_mapping(value, "upstream")
    _check_keys(data, ("connect_timeout", "read_timeout"), "upstream")
    default = UpstreamConfig()
    out = {}
    for key in ("connect_timeout", "read_timeout"):
        seconds = data.get(key, getattr(default, key))
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            raise ConfigError(f"upstream.{key}: expected seconds > 0, got {seconds!r}")
        out[key] = float(seconds)
    return UpstreamConfig(**out)


def _expect_mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
    for k in data:
        if k not in allowed:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{where}: unknown key (expected one of: {', '.join(allowed)})")


def _parse_remaps(value: Any) -> dict[str, tuple[str, ...]]:
    remaps: dict[str, tuple[str, ...]] = {}
    for name, mirrors in _expect_mapping(value, "apt.remaps").items():
        key = f"apt.remaps.{name}"
        if not isinstance(name, str) or not _REMAP_NAME.match(name):
            raise ConfigError(f"{key}: a remap name is letters, digits, '.', '_' or '-'")
        if name in RESERVED_PATHS:
            raise ConfigError(f"{key}: /{name}/ is reserved for the image feeds")
        if isinstance(mirrors, str):
            mirrors = [mirrors]
        if not isinstance(mirrors, list) or not mirrors:
            raise ConfigError(f"{key}: expected a non-empty list of upstream URLs")
        remaps[name] = tuple(parse_upstream(u, f"{key}[{i}]") for i, u in enumerate(mirrors))
    return remaps


def _parse_allow(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"apt.allow: expected a list of host[:port], got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not _HOSTPORT.match(item):
            raise ConfigError(f"apt.allow[{i}]: expected host[:port], got {item!r}")
    return tuple(item.lower() for item in value)


def parse(data: Any, source: str = "<config>") -> Config:
    """Validate a loaded YAML document; defaults fill in what it leaves out."""
    base = _default_data()
    if data is None:
        data = {}
    data = _expect_mapping(data, "<top level>")
    _check_keys(data, ("listen", "cache", "apt", "images", "upstream"), "")
    cache = {**base["cache"], **_expect_mapping(data.get("cache", {}), "cache")}
    _check_keys(cache, ("dir", "max_size"), "cache")
    apt = {**base["apt"], **_expect_mapping(data.get("apt", {}), "apt")}
    _check_keys(apt, ("index_ttl", "remaps", "allow"), "apt")

    ttl = apt["index_ttl"]
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 0:
        raise ConfigError(f"apt.index_ttl: expected seconds >= 0, got {ttl!r}")
    if not isinstance(cache["dir"], str) or not cache["dir"]:
        raise ConfigError(f"cache.dir: expected a directory path, got {cache['dir']!r}")
    return Config(
        listen=parse_listen(data.get("listen", base["listen"])),
        cache=CacheConfig(Path(cache["dir"]), parse_size(cache["max_size"], "cache.max_size")),
        apt=AptConfig(
            index_ttl=float(ttl),
            remaps=_parse_remaps(apt["remaps"]),
            allow=_parse_allow(apt["allow"]),
        ),
        images=_parse_images(data.get("images") or {}),
        upstream=_parse_upstream_section(data.get("upstream") or {}),
        source=source,
    )


def _default_data() -> dict[str, Any]:
    text = resources.files("appliance").joinpath("default-config.yaml").read_text()
    return yaml.safe_load(text)


def load(path: Path | None = None) -> Config:
    """The file at `path`, or the embedded default when there is none."""
    if path is None:
        return parse(_default_data(), "<embedded default>")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return parse(data, str(path))


def with_overrides(
    config: Config,
    *,
    listen: str | None = None,
    cache_dir: str | None = None,
    remaps: Sequence[str] = (),
) -> Config:
    """Apply command-line flags (`--listen`, `--cache-dir`, `--remap NAME=URL[,URL]`)."""
    if listen is not None:
        config = replace(config, listen=parse_listen(listen, "--listen"))
    if cache_dir is not None:
        config = replace(config, cache=replace(config.cache, dir=Path(cache_dir)))
    if remaps:
        merged = dict(config.apt.remaps)
        for spec in remaps:
            name, sep, urls = spec.partition("=")
            if not sep or not urls:
                raise ConfigError(f"--remap: expected NAME=URL[,URL...], got {spec!r}")
            merged.update(_parse_remaps({name: urls.split(",")}))
        config = replace(config, apt=replace(config.apt, remaps=merged))
    return config


def dump(config: Config) -> str:
    """The effective configuration as YAML (what `archive-local config` prints)."""
    return yaml.safe_dump(
        {
            "listen": str(config.listen),
            "cache": {"dir": str(config.cache.dir), "max_size": config.cache.max_size},
            "apt": {
                "index_ttl": config.apt.index_ttl,
                "remaps": {k: list(v) for k, v in config.apt.remaps.items()},
                "allow": list(config.apt.allow),
            },
            "upstream": {
                "connect_timeout": config.upstream.connect_timeout,
                "read_timeout": config.upstream.read_timeout,
            },
            "images": {
                "sync_interval": config.images.sync_interval,
                "gnupg_home": str(config.images.gnupg_home),
                "feeds": [
                    {
                        "name": f.name,
                        "url": f.url,
                        "keyring": str(f.keyring),
                        "filters": list(f.filters),
                        "max_items": f.max_items,
                    }
                    for f in config.images.feeds
                ],
            },
        },
        sort_keys=False,
    )
