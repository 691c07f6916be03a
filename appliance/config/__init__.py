"""Configuration: one YAML document parsed once into frozen dataclasses.

The parsed `Config` is passed down explicitly (never a global), so tests build
their own from inline YAML. Every error names the offending key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from appliance.config.filters import Filter, FilterError


class ConfigError(ValueError):
    """A configuration problem, phrased for the operator: `key: problem`."""


# bootable disks, as sstream-mirror-glance selects by default
DEFAULT_SEED_FILTERS = ("ftype~^(disk1\\.img|disk\\.img)$",)


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
    min_free: int = 64 * 1024**2  # keep this much of the file system free; else pass through
    expire_after: float = 3 * 86400.0  # unreferenced pool/by-hash files are removed after this
    expire_interval: float = 86400.0  # how often the service looks for them


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
    deadline: float = 6 * 3600.0  # longest time for one whole body
    min_rate: float = 1024.0  # bytes/s over rate_window, below which a transfer is cut
    rate_window: float = 60.0


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
class Secret:
    """Where a secret is read from: a file (stripped of surrounding space) or a variable."""

    file: Path | None = None
    env: str | None = None

    def read(self) -> str:
        """The secret's value; the message of an error never contains it."""
        if self.file is not None:
            try:
                value = self.file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{self.file}: cannot read ({exc.strerror})") from None
        else:
            value = os.environ.get(self.env or "", "").strip()
        if not value:
            raise ConfigError(f"{self.file or '$' + str(self.env)}: empty secret")
        return value


@dataclass(frozen=True)
class TargetConfig:
    """What every seed target shares: which images, how many, how they are named."""

    name: str
    type: str
    feeds: tuple[str, ...]
    max_items: int = 2
    filters: tuple[str, ...] = DEFAULT_SEED_FILTERS
    name_prefix: str = "auto-sync/"
    content_id: str = "auto.sync"
    set_latest: bool = False


@dataclass(frozen=True)
class GlanceTargetConfig(TargetConfig):
    """An OpenStack image service, by endpoint + token or through keystone v3."""

    endpoint: str | None = None  # Glance's URL; found in the keystone catalog when unset
    token: Secret | None = None
    keystone: Mapping[str, str] = field(default_factory=dict)  # auth_url, username, ...
    password: Secret | None = None  # password, or the application credential's secret
    region: str = "RegionOne"
    interface: str = "public"
    visibility: str = "public"
    properties: Mapping[str, str] = field(default_factory=dict)
    disk_format: str | None = None  # default: from each item's ftype
    cloud_endpoint: str | None = None  # image-ids `endpoint` (default auth_url or endpoint)


@dataclass(frozen=True)
class Ec2TargetConfig(TargetConfig):
    """A Eucalyptus or other EC2-compatible cloud: S3 upload, then RegisterImage."""

    ec2_endpoint: str = ""
    s3_endpoint: str = ""
    ebs_endpoint: str | None = None  # EBS direct API (method ebs); default ec2_endpoint
    regions: tuple[str, ...] = ("us-east-1",)
    bucket: str = "archive-local-images"
    credentials_file: Path | None = None  # eucarc-style KEY=VALUE; else the environment
    method: str = "bundle"  # bundle (instance-store) or ebs
    virtualization_type: str = "hvm"
    kernel_id: str | None = None
    ramdisk_id: str | None = None


@dataclass(frozen=True)
class SeedConfig:
    after_sync: bool = True
    targets: tuple[TargetConfig, ...] = ()


@dataclass(frozen=True)
class LoggingConfig:
    format: str = "text"  # text | json: the service's own log lines
    access_log: str = "stderr"  # stderr | off | a file path
    access_log_format: str = "common"  # common | json


@dataclass(frozen=True)
class AdminConfig:
    """The admin API: a bearer token from a file only its owner can read, and who may ask."""

    token_file: Path = Path("/var/lib/archive-local/admin-token")
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class DiscoveryConfig:
    """How instances find the appliance (mDNS; the well-known document is always served)."""

    mdns: bool = True
    name: str = "archive.local"
    interfaces: tuple[str, ...] = ()  # interface names or addresses; () = all but loopback


@dataclass(frozen=True)
class LimitsConfig:
    """What one client may hold (a NAT gateway in front of many instances counts as one)."""

    connections_per_client: int = 256


@dataclass(frozen=True)
class Config:
    listen: Listen
    cache: CacheConfig
    apt: AptConfig
    images: ImagesConfig = ImagesConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    seed: SeedConfig = SeedConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: bool = True
    admin: AdminConfig = AdminConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    limits: LimitsConfig = LimitsConfig()
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
    keys = ("connect_timeout", "read_timeout", "deadline", "min_rate", "rate_window")
    _check_keys(data, keys, "upstream")
    default = UpstreamConfig()
    out: dict[str, float] = {}
    for key in ("connect_timeout", "read_timeout"):
        seconds = data.get(key, getattr(default, key))
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            raise ConfigError(f"upstream.{key}: expected seconds > 0, got {seconds!r}")
        out[key] = float(seconds)
    for key in ("deadline", "rate_window"):
        out[key] = parse_duration(data.get(key, getattr(default, key)), f"upstream.{key}")
        if out[key] <= 0:
            raise ConfigError(f"upstream.{key}: must be more than 0 seconds")
    rate = data.get("min_rate", default.min_rate)
    out["min_rate"] = 0.0 if rate in (0, "0") else float(parse_size(rate, "upstream.min_rate"))
    return UpstreamConfig(**out)


_SECRET_KEYS = ("token", "password", "secret", "secret_key", "application_credential_secret")
_KEYSTONE_KEYS = (
    "auth_url",
    "username",
    "user_id",
    "project_name",
    "project_id",
    "user_domain_name",
    "project_domain_name",
    "region_name",
    "application_credential_id",
    "application_credential_name",
    "password_file",
    "password_env",
    "application_credential_secret_file",
    "application_credential_secret_env",
)
_COMMON_TARGET_KEYS = (
    "name",
    "type",
    "feeds",
    "max_items",
    "filters",
    "name_prefix",
    "content_id",
    "set_latest",
)
_GLANCE_KEYS = (
    "auth",
    "region",
    "interface",
    "visibility",
    "properties",
    "disk_format",
    "cloud_endpoint",
)
_EC2_KEYS = (
    "ec2_endpoint",
    "s3_endpoint",
    "ebs_endpoint",
    "regions",
    "bucket",
    "credentials_file",
    "method",
    "virtualization_type",
    "kernel_id",
    "ramdisk_id",
)
_VISIBILITIES = ("public", "private", "shared", "community")


def _text(data: Mapping[str, Any], name: str, key: str, default: str | None = None) -> str | None:
    value = data.get(name, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{key}.{name}: expected text, got {value!r}")
    return value


def _secret(data: Mapping[str, Any], stem: str, key: str) -> Secret | None:
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


def _url(data: Mapping[str, Any], name: str, key: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}.{name}: expected an http(s) URL, got {value!r}")
    return value


def _common_target(data: Mapping[str, Any], key: str, names: set[str]) -> dict[str, Any]:
    name = data.get("name")
    if not isinstance(name, str) or not _REMAP_NAME.match(name):
        raise ConfigError(f"{key}.name: letters, digits, '.', '_' or '-' required, got {name!r}")
    if name in names:
        raise ConfigError(f"{key}.name: target {name!r} is defined twice")
    names.add(name)
    feeds = data.get("feeds")
    if isinstance(feeds, str):
        feeds = [feeds]
    if not isinstance(feeds, list) or not feeds or not all(valid_name(f) for f in feeds):
        raise ConfigError(f"{key}.feeds: expected a list of feed names, got {feeds!r}")
    max_items = data.get("max_items", TargetConfig.max_items)
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise ConfigError(f"{key}.max_items: expected a whole number >= 1, got {max_items!r}")
    filters = data.get("filters", list(DEFAULT_SEED_FILTERS))
    if not isinstance(filters, list):
        raise ConfigError(f"{key}.filters: expected a list such as ['ftype=disk1.img']")
    for j, text in enumerate(filters):
        try:
            Filter.parse(str(text))
        except FilterError as exc:
            raise ConfigError(f"{key}.filters[{j}]: {exc}") from None
    set_latest = data.get("set_latest", False)
    if not isinstance(set_latest, bool):
        raise ConfigError(f"{key}.set_latest: expected true or false, got {set_latest!r}")
    prefix = data.get("name_prefix", TargetConfig.name_prefix)
    if not isinstance(prefix, str):
        raise ConfigError(f"{key}.name_prefix: expected text, got {prefix!r}")
    return {
        "name": name,
        "feeds": tuple(feeds),
        "max_items": max_items,
        "filters": tuple(map(str, filters)),
        "name_prefix": prefix,
        "content_id": _text(data, "content_id", key, TargetConfig.content_id),
        "set_latest": set_latest,
    }


def _parse_glance_target(data: Mapping[str, Any], key: str, common: dict[str, Any]) -> Any:
    _check_keys(data, _COMMON_TARGET_KEYS + _GLANCE_KEYS, key)
    auth = _expect_mapping(data.get("auth"), f"{key}.auth")
    _check_keys(auth, ("endpoint", "token", "token_file", "token_env", "keystone"), f"{key}.auth")
    endpoint = _url(auth, "endpoint", f"{key}.auth")
    token = _secret(auth, "token", f"{key}.auth")
    keystone: dict[str, str] = {}
    password = None
    if "keystone" in auth:
        ks_key = f"{key}.auth.keystone"
        ks = _expect_mapping(auth["keystone"], ks_key)
        for secret in ("password", "application_credential_secret"):
            if secret in ks:
                _secret(ks, secret, ks_key)  # raises: not in clear
        _check_keys(ks, _KEYSTONE_KEYS, ks_key)
        if not _url(ks, "auth_url", ks_key):
            raise ConfigError(f"{ks_key}.auth_url: required")
        password = _secret(ks, "password", ks_key) or _secret(
            ks, "application_credential_secret", ks_key
        )
        if password is None:
            raise ConfigError(
                f"{ks_key}: needs password_file/_env or application_credential_secret_file/_env"
            )
        keystone = {k: str(v) for k, v in ks.items() if not k.endswith(("_file", "_env"))}
        if token is not None:
            raise ConfigError(f"{key}.auth: give a token or keystone credentials, not both")
    elif token is None or endpoint is None:
        raise ConfigError(f"{key}.auth: needs endpoint + token_file (or token_env), or keystone")
    visibility = data.get("visibility", "public")
    if visibility not in _VISIBILITIES:
        raise ConfigError(f"{key}.visibility: one of {', '.join(_VISIBILITIES)}")
    properties = _expect_mapping(data.get("properties", {}), f"{key}.properties")
    return GlanceTargetConfig(
        type="glance",
        endpoint=endpoint,
        token=token,
        keystone=keystone,
        password=password,
        region=_text(data, "region", key, keystone.get("region_name", "RegionOne")) or "",
        interface=_text(data, "interface", key, "public") or "public",
        visibility=visibility,
        properties={str(k): str(v) for k, v in properties.items()},
        disk_format=_text(data, "disk_format", key),
        cloud_endpoint=_url(data, "cloud_endpoint", key),
        **common,
    )


def _parse_ec2_target(data: Mapping[str, Any], key: str, common: dict[str, Any]) -> Any:
    for secret in (*_SECRET_KEYS, "access_key", "aws_secret_access_key"):
        if secret in data:
            raise ConfigError(f"{key}.{secret}: secrets belong in credentials_file")
    _check_keys(data, _COMMON_TARGET_KEYS + _EC2_KEYS, key)
    ec2, s3 = _url(data, "ec2_endpoint", key), _url(data, "s3_endpoint", key)
    if not ec2 or not s3:
        raise ConfigError(f"{key}: ec2_endpoint and s3_endpoint are required")
    regions = data.get("regions", ["us-east-1"])
    if isinstance(regions, str):
        regions = [regions]
    if (
        not isinstance(regions, list)
        or not regions
        or not all(isinstance(r, str) and re.fullmatch(r"[a-z0-9-]+", r) for r in regions)
    ):
        raise ConfigError(f"{key}.regions: expected a list of region names, got {regions!r}")
    bucket = _text(data, "bucket", key, Ec2TargetConfig.bucket) or ""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ConfigError(f"{key}.bucket: not a valid bucket name: {bucket!r}")
    method = data.get("method", "bundle")
    if method not in ("bundle", "ebs"):
        raise ConfigError(f"{key}.method: bundle or ebs, got {method!r}")
    creds = _text(data, "credentials_file", key)
    return Ec2TargetConfig(
        type="ec2",
        ec2_endpoint=ec2,
        s3_endpoint=s3,
        ebs_endpoint=_url(data, "ebs_endpoint", key),
        regions=tuple(regions),
        bucket=bucket,
        credentials_file=Path(creds) if creds else None,
        method=method,
        virtualization_type=_text(data, "virtualization_type", key, "hvm") or "hvm",
        kernel_id=_text(data, "kernel_id", key),
        ramdisk_id=_text(data, "ramdisk_id", key),
        **common,
    )


def _parse_logging(value: Any) -> LoggingConfig:
    data = _expect_mapping(value, "logging")
    _check_keys(data, ("format", "access_log", "access_log_format"), "logging")
    fmt = data.get("format", "text")
    if fmt not in ("text", "json"):
        raise ConfigError(f"logging.format: text or json, got {fmt!r}")
    access = data.get("access_log", "stderr")
    if access is False:  # YAML reads a bare `off` as false
        access = "off"
    if not isinstance(access, str) or not access:
        raise ConfigError(f"logging.access_log: stderr, off or a file path, got {access!r}")
    access_fmt = data.get("access_log_format", "json" if fmt == "json" else "common")
    if access_fmt not in ("common", "json"):
        raise ConfigError(f"logging.access_log_format: common or json, got {access_fmt!r}")
    return LoggingConfig(fmt, access, access_fmt)


def _parse_metrics(value: Any) -> bool:
    data = _expect_mapping(value or {}, "metrics")
    _check_keys(data, ("enabled",), "metrics")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"metrics.enabled: expected true or false, got {enabled!r}")
    return enabled


def _parse_admin(value: Any) -> AdminConfig:
    import ipaddress

    data = _expect_mapping(value, "admin")
    _check_keys(data, ("token_file", "allow"), "admin")
    default = AdminConfig()
    token_file = data.get("token_file", str(default.token_file))
    if not isinstance(token_file, str) or not token_file:
        raise ConfigError(f"admin.token_file: expected a file path, got {token_file!r}")
    allow = data.get("allow", list(default.allow))
    if not isinstance(allow, list) or not allow:
        raise ConfigError(f"admin.allow: expected a list of networks, got {allow!r}")
    for i, net in enumerate(allow):
        try:
            ipaddress.ip_network(str(net), strict=False)
        except ValueError:
            raise ConfigError(f"admin.allow[{i}]: not a network: {net!r}") from None
    return AdminConfig(Path(token_file), tuple(str(n) for n in allow))


def _parse_discovery(value: Any) -> DiscoveryConfig:
    data = _expect_mapping(value, "discovery")
    _check_keys(data, ("mdns", "name", "interfaces"), "discovery")
    mdns = data.get("mdns", True)
    if not isinstance(mdns, bool):
        raise ConfigError(f"discovery.mdns: expected true or false, got {mdns!r}")
    name = data.get("name", "archive.local")
    if not isinstance(name, str) or not re.fullmatch(
        r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.local\.?", name
    ):
        raise ConfigError(f"discovery.name: a host name ending in .local, got {name!r}")
    interfaces = data.get("interfaces", [])
    if not isinstance(interfaces, list) or not all(isinstance(i, str) for i in interfaces):
        raise ConfigError("discovery.interfaces: a list of interface names or addresses")
    return DiscoveryConfig(mdns, name.rstrip("."), tuple(interfaces))


def _parse_limits(value: Any) -> LimitsConfig:
    data = _expect_mapping(value, "limits")
    _check_keys(data, ("connections_per_client",), "limits")
    cap = data.get("connections_per_client", LimitsConfig.connections_per_client)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"limits.connections_per_client: a whole number >= 1, got {cap!r}")
    return LimitsConfig(cap)


def _parse_seed(value: Any) -> SeedConfig:
    data = _expect_mapping(value, "seed")
    _check_keys(data, ("after_sync", "targets"), "seed")
    after_sync = data.get("after_sync", True)
    if not isinstance(after_sync, bool):
        raise ConfigError(f"seed.after_sync: expected true or false, got {after_sync!r}")
    targets = data.get("targets") or []
    if not isinstance(targets, list):
        raise ConfigError("seed.targets: expected a list of targets")
    names: set[str] = set()
    parsed: list[TargetConfig] = []
    for i, item in enumerate(targets):
        key = f"seed.targets[{i}]"
        item = _expect_mapping(item, key)
        kind = item.get("type")
        parsers = {"glance": _parse_glance_target, "ec2": _parse_ec2_target}
        if kind not in parsers:
            raise ConfigError(f"{key}.type: glance or ec2, got {kind!r}")
        parsed.append(parsers[kind](item, key, _common_target(item, key, names)))
    return SeedConfig(after_sync=after_sync, targets=tuple(parsed))


def _expect_mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
    for k in data:
        if k not in allowed:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{where}: unknown key (expected one of: {', '.join(allowed)})")


def _parse_cache(cache: Mapping[str, Any]) -> CacheConfig:
    if not isinstance(cache["dir"], str) or not cache["dir"]:
        raise ConfigError(f"cache.dir: expected a directory path, got {cache['dir']!r}")
    default = CacheConfig(Path("/"), 1)
    min_free = cache.get("min_free", default.min_free)
    expire = {}
    for key in ("expire_after", "expire_interval"):
        expire[key] = parse_duration(cache.get(key, getattr(default, key)), f"cache.{key}")
    return CacheConfig(
        Path(cache["dir"]),
        parse_size(cache["max_size"], "cache.max_size"),
        min_free=0 if min_free in (0, "0") else parse_size(min_free, "cache.min_free"),
        **expire,
    )


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
    _check_keys(
        data,
        (
            "listen",
            "cache",
            "apt",
            "images",
            "upstream",
            "seed",
            "logging",
            "metrics",
            "admin",
            "discovery",
            "limits",
        ),
        "",
    )
    cache = {**base["cache"], **_expect_mapping(data.get("cache", {}), "cache")}
    _check_keys(cache, ("dir", "max_size", "min_free", "expire_after", "expire_interval"), "cache")
    apt = {**base["apt"], **_expect_mapping(data.get("apt", {}), "apt")}
    _check_keys(apt, ("index_ttl", "remaps", "allow"), "apt")

    ttl = apt["index_ttl"]
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 0:
        raise ConfigError(f"apt.index_ttl: expected seconds >= 0, got {ttl!r}")
    return Config(
        listen=parse_listen(data.get("listen", base["listen"])),
        cache=_parse_cache(cache),
        apt=AptConfig(
            index_ttl=float(ttl),
            remaps=_parse_remaps(apt["remaps"]),
            allow=_parse_allow(apt["allow"]),
        ),
        images=_parse_images(data.get("images") or {}),
        upstream=_parse_upstream_section(data.get("upstream") or {}),
        seed=_parse_seed(data.get("seed") or {}),
        logging=_parse_logging(data.get("logging") or {}),
        metrics=_parse_metrics(data.get("metrics", {})),
        admin=_parse_admin(data.get("admin") or {}),
        discovery=_parse_discovery(data.get("discovery") or {}),
        limits=_parse_limits(data.get("limits") or {}),
        source=source,
    )


def _default_data() -> dict[str, Any]:
    text = resources.files("appliance.config").joinpath("default.yaml").read_text()
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
            "cache": {
                "dir": str(config.cache.dir),
                "max_size": config.cache.max_size,
                "min_free": config.cache.min_free,
                "expire_after": config.cache.expire_after,
                "expire_interval": config.cache.expire_interval,
            },
            "apt": {
                "index_ttl": config.apt.index_ttl,
                "remaps": {k: list(v) for k, v in config.apt.remaps.items()},
                "allow": list(config.apt.allow),
            },
            "upstream": {
                "connect_timeout": config.upstream.connect_timeout,
                "read_timeout": config.upstream.read_timeout,
                "deadline": config.upstream.deadline,
                "min_rate": config.upstream.min_rate,
                "rate_window": config.upstream.rate_window,
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
            "seed": {
                "after_sync": config.seed.after_sync,
                "targets": [_dump_target(t) for t in config.seed.targets],
            },
            "logging": {
                "format": config.logging.format,
                "access_log": config.logging.access_log,
                "access_log_format": config.logging.access_log_format,
            },
            "metrics": {"enabled": config.metrics},
            "admin": {
                "token_file": str(config.admin.token_file),
                "allow": list(config.admin.allow),
            },
            "discovery": {
                "mdns": config.discovery.mdns,
                "name": config.discovery.name,
                "interfaces": list(config.discovery.interfaces),
            },
            "limits": {"connections_per_client": config.limits.connections_per_client},
        },
        sort_keys=False,
    )


def _dump_target(target: TargetConfig) -> dict[str, Any]:
    """A target for `archive-local config`: where secrets come from, never their values."""
    out: dict[str, Any] = {}
    for f in fields(target):
        value = getattr(target, f.name)
        if isinstance(value, Secret):
            value = str(value.file) if value.file else f"${value.env}"
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out
