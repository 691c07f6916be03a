"""YAML -> `Config`: one parser per section, every default read from the dataclasses.

The parsed `Config` is passed down explicitly (never a global), so tests build their
own from inline YAML. Every error names the offending key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from appliance.config.fields import (
    HOSTPORT,
    REMAP_NAME,
    RESERVED_PATHS,
    check_host_port,
    check_keys,
    choice,
    expect_mapping,
    filter_list,
    flag,
    parse_duration,
    parse_listen,
    parse_size,
    parse_upstream,
    path,
    seconds,
    secret,
    text,
    url,
    valid_name,
    whole,
)
from appliance.config.model import (
    WORKERS_AUTO,
    AdminConfig,
    AptConfig,
    CacheConfig,
    Config,
    ConfigError,
    DiscoveryConfig,
    Ec2TargetConfig,
    FeedConfig,
    GlanceTargetConfig,
    ImagesConfig,
    LimitsConfig,
    LoggingConfig,
    SeedConfig,
    StoreConfig,
    TargetConfig,
    TlsConfig,
    UpstreamConfig,
    cores,
)

SECTIONS = (
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
    "workers",
    "tls",
)
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


def _name(data: Mapping[str, Any], key: str, names: set[str], what: str) -> str:
    name = data.get("name")
    if not isinstance(name, str) or not REMAP_NAME.match(name):
        raise ConfigError(f"{key}.name: letters, digits, '.', '_' or '-' required, got {name!r}")
    if name in names:
        raise ConfigError(f"{key}.name: {what} {name!r} is defined twice")
    names.add(name)
    return name


def _size_or_zero(value: Any, key: str) -> int:
    return 0 if value in (0, "0") else parse_size(value, key)


# --- sections -----------------------------------------------------------------------


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _parse_store(value: Any) -> StoreConfig | None:
    if value is None:
        return None
    key = "cache.store"
    data = expect_mapping(value, key)
    check_keys(
        data,
        (
            "type",
            "endpoint",
            "bucket",
            "region",
            "credentials_file",
            "fleet_key_file",
            "prefix",
            "lease",
            "peer_url",
            "peers",
        ),
        key,
    )
    lease = parse_duration(data.get("lease", StoreConfig.lease), f"{key}.lease")
    if lease < 6:
        raise ConfigError(f"{key}.lease: at least 6s (it is renewed every 2 s), got {lease:g}s")
    choice(data, "type", key, StoreConfig.type, ("s3",))
    endpoint = url(data, "endpoint", key)
    if endpoint is None:
        raise ConfigError(f"{key}.endpoint: required (the S3 API's URL)")
    bucket = data.get("bucket")
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
        raise ConfigError(f"{key}.bucket: a bucket name (3-63 of a-z 0-9 . -), got {bucket!r}")
    prefix = text(data, "prefix", key) if data.get("prefix") else StoreConfig.prefix
    peers = data.get("peers") or []
    if not isinstance(peers, list):
        raise ConfigError(f"{key}.peers: a list of the other units' URLs, got {peers!r}")
    if prefix and (prefix.startswith("/") or ".." in prefix.split("/")):
        raise ConfigError(f"{key}.prefix: a relative name such as units/, got {prefix!r}")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return StoreConfig(
        endpoint=endpoint,
        bucket=bucket,
        credentials_file=path(data, "credentials_file", key, None, "a credentials file"),
        fleet_key_file=(
            path(data, "fleet_key_file", key, None, "a file holding the fleet's key")
            if data.get("fleet_key_file") is not None
            else None
        ),
        region=text(data, "region", key, StoreConfig.region) or StoreConfig.region,
        prefix=prefix or StoreConfig.prefix,
        lease=lease,
        peer_url=_peer_url(data.get("peer_url"), f"{key}.peer_url"),
        peers=tuple(_peer_url(u, f"{key}.peers[{i}]") for i, u in enumerate(peers)),
    )


def _peer_url(value: Any, key: str) -> Any:
    """A unit's base URL, `http://host:port` (normalised without a trailing slash)."""
    if value is None:
        return None
    found = url({"u": value}, "u", key)
    parts = urlsplit(found or "")
    if parts.scheme != "http" or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{key}: expected a unit's http://host:port, got {value!r}")
    return str(found).rstrip("/")


def _parse_cache(data: Mapping[str, Any]) -> CacheConfig:
    check_keys(
        data, ("dir", "max_size", "min_free", "expire_after", "expire_interval", "store"), "cache"
    )
    default = CacheConfig  # class attributes hold the field defaults
    return CacheConfig(
        dir=path(data, "dir", "cache", None, "a directory"),
        max_size=parse_size(data.get("max_size"), "cache.max_size"),
        min_free=_size_or_zero(data.get("min_free", default.min_free), "cache.min_free"),
        expire_after=parse_duration(
            data.get("expire_after", default.expire_after), "cache.expire_after"
        ),
        expire_interval=parse_duration(
            data.get("expire_interval", default.expire_interval), "cache.expire_interval"
        ),
        store=_parse_store(data.get("store")),
    )


def parse_remaps(value: Any) -> dict[str, tuple[str, ...]]:
    remaps: dict[str, tuple[str, ...]] = {}
    for name, mirrors in expect_mapping(value, "apt.remaps").items():
        key = f"apt.remaps.{name}"
        if not isinstance(name, str) or not REMAP_NAME.match(name):
            raise ConfigError(f"{key}: a remap name is letters, digits, '.', '_' or '-'")
        if name in RESERVED_PATHS:
            raise ConfigError(f"{key}: /{name}/ is reserved for the image feeds")
        if isinstance(mirrors, str):
            mirrors = [mirrors]
        if not isinstance(mirrors, list) or not mirrors:
            raise ConfigError(f"{key}: expected a non-empty list of upstream URLs")
        remaps[name] = tuple(parse_upstream(u, f"{key}[{i}]") for i, u in enumerate(mirrors))
    return remaps


def parse_mirrors(value: Any) -> dict[str, tuple[str, ...]]:
    """remap -> `file:/path` mirror lists, http(s) mirror URLs and `*` host patterns."""
    out: dict[str, tuple[str, ...]] = {}
    for name, specs in expect_mapping(value or {}, "apt.mirrors").items():
        key = f"apt.mirrors.{name}"
        if not isinstance(specs, list):
            raise ConfigError(f"{key}: expected a list of file:/path or http:// entries")
        for i, spec in enumerate(specs):
            if not isinstance(spec, str):
                raise ConfigError(f"{key}[{i}]: expected file:/path or a URL, got {spec!r}")
            if spec.startswith("file:"):
                if not spec.startswith("file:/"):
                    raise ConfigError(f"{key}[{i}]: a mirror list is file:/absolute/path")
            else:
                parse_upstream(spec.replace("*", "x"), f"{key}[{i}]")
                if "*" in urlsplit(spec).path:
                    raise ConfigError(f"{key}[{i}]: '*' belongs in the host, not the path")
        out[str(name)] = tuple(specs)
    return out


def _parse_apt(data: Mapping[str, Any]) -> AptConfig:
    check_keys(data, ("index_ttl", "remaps", "allow", "mirrors", "sources"), "apt")
    sources = data.get("sources")
    if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
        raise ConfigError(f"apt.sources: expected a list of files or directories, got {sources!r}")
    allow = data.get("allow", list(AptConfig.allow))
    if not isinstance(allow, list):
        raise ConfigError(f"apt.allow: expected a list of host[:port], got {allow!r}")
    for i, item in enumerate(allow):
        if not isinstance(item, str) or not HOSTPORT.match(item):
            raise ConfigError(f"apt.allow[{i}]: expected host[:port], got {item!r}")
        check_host_port(item, f"apt.allow[{i}]")
    return AptConfig(
        index_ttl=seconds(data, "index_ttl", "apt", data.get("index_ttl"), positive=False),
        remaps=parse_remaps(data.get("remaps", {})),
        allow=tuple(item.lower() for item in allow),
        mirrors=parse_mirrors(data.get("mirrors")),
        sources=tuple(sources),
    )


def _parse_feed(i: int, value: Any, names: set[str]) -> FeedConfig:
    key = f"images.feeds[{i}]"
    data = expect_mapping(value, key)
    check_keys(data, ("name", "url", "keyring", "filters", "max_items"), key)
    name = _name(data, key, names, "feed")
    feed_url = parse_upstream(data.get("url"), f"{key}.url")
    keyring = data.get("keyring")
    if not isinstance(keyring, str) or not keyring:
        raise ConfigError(f"{key}.keyring: the keyring that verifies this feed is required")
    return FeedConfig(
        name,
        feed_url + "/",
        Path(keyring),
        filter_list(data, "filters", key, FeedConfig.filters),
        whole(data, "max_items", key, FeedConfig.max_items),
    )


def _parse_images(value: Any) -> ImagesConfig:
    data = expect_mapping(value, "images")
    check_keys(data, ("sync_interval", "gnupg_home", "feeds"), "images")
    feeds = data.get("feeds") or []
    if not isinstance(feeds, list):
        raise ConfigError("images.feeds: expected a list of feeds")
    names: set[str] = set()
    return ImagesConfig(
        sync_interval=parse_duration(
            data.get("sync_interval", ImagesConfig.sync_interval), "images.sync_interval"
        ),
        gnupg_home=path(data, "gnupg_home", "images", ImagesConfig.gnupg_home, "a directory"),
        feeds=tuple(_parse_feed(i, f, names) for i, f in enumerate(feeds)),
    )


def _parse_upstream(value: Any) -> UpstreamConfig:
    data = expect_mapping(value, "upstream")
    keys = ("connect_timeout", "read_timeout", "deadline", "min_rate", "rate_window")
    check_keys(data, keys, "upstream")
    d = UpstreamConfig
    out: dict[str, float] = {
        k: seconds(data, k, "upstream", getattr(d, k), positive=True)
        for k in ("connect_timeout", "read_timeout")
    }
    for k in ("deadline", "rate_window"):
        out[k] = parse_duration(data.get(k, getattr(d, k)), f"upstream.{k}")
        if out[k] <= 0:
            raise ConfigError(f"upstream.{k}: must be more than 0 seconds")
    out["min_rate"] = float(_size_or_zero(data.get("min_rate", d.min_rate), "upstream.min_rate"))
    return UpstreamConfig(**out)


def _common_target(data: Mapping[str, Any], key: str, names: set[str]) -> dict[str, Any]:
    name = _name(data, key, names, "target")
    feeds = data.get("feeds")
    if isinstance(feeds, str):
        feeds = [feeds]
    if not isinstance(feeds, list) or not feeds or not all(valid_name(f) for f in feeds):
        raise ConfigError(f"{key}.feeds: expected a list of feed names, got {feeds!r}")
    prefix = data.get("name_prefix", TargetConfig.name_prefix)
    if not isinstance(prefix, str):
        raise ConfigError(f"{key}.name_prefix: expected text, got {prefix!r}")
    return {
        "name": name,
        "feeds": tuple(feeds),
        "max_items": whole(data, "max_items", key, TargetConfig.max_items),
        "filters": filter_list(data, "filters", key, TargetConfig.filters),
        "name_prefix": prefix,
        "content_id": text(data, "content_id", key, TargetConfig.content_id),
        "set_latest": flag(data, "set_latest", key, TargetConfig.set_latest),
    }


def _parse_glance_target(data: Mapping[str, Any], key: str, common: dict[str, Any]) -> Any:
    check_keys(data, _COMMON_TARGET_KEYS + _GLANCE_KEYS, key)
    auth = expect_mapping(data.get("auth"), f"{key}.auth")
    check_keys(auth, ("endpoint", "token", "token_file", "token_env", "keystone"), f"{key}.auth")
    endpoint = url(auth, "endpoint", f"{key}.auth")
    token = secret(auth, "token", f"{key}.auth")
    keystone: dict[str, str] = {}
    password = None
    if "keystone" in auth:
        ks_key = f"{key}.auth.keystone"
        ks = expect_mapping(auth["keystone"], ks_key)
        for name in ("password", "application_credential_secret"):
            if name in ks:
                secret(ks, name, ks_key)  # raises: not in clear
        check_keys(ks, _KEYSTONE_KEYS, ks_key)
        if not url(ks, "auth_url", ks_key):
            raise ConfigError(f"{ks_key}.auth_url: required")
        password = secret(ks, "password", ks_key) or secret(
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
    visibility = data.get("visibility", GlanceTargetConfig.visibility)
    if visibility not in _VISIBILITIES:
        raise ConfigError(f"{key}.visibility: one of {', '.join(_VISIBILITIES)}")
    properties = expect_mapping(data.get("properties", {}), f"{key}.properties")
    g = GlanceTargetConfig
    return GlanceTargetConfig(
        type="glance",
        endpoint=endpoint,
        token=token,
        keystone=keystone,
        password=password,
        region=text(data, "region", key, keystone.get("region_name", g.region)) or "",
        interface=text(data, "interface", key, g.interface) or g.interface,
        visibility=visibility,
        properties={str(k): str(v) for k, v in properties.items()},
        disk_format=text(data, "disk_format", key),
        cloud_endpoint=url(data, "cloud_endpoint", key),
        **common,
    )


def _parse_ec2_target(data: Mapping[str, Any], key: str, common: dict[str, Any]) -> Any:
    for name in (*_SECRET_KEYS, "access_key", "aws_secret_access_key"):
        if name in data:
            raise ConfigError(f"{key}.{name}: secrets belong in credentials_file")
    check_keys(data, _COMMON_TARGET_KEYS + _EC2_KEYS, key)
    ec2, s3 = url(data, "ec2_endpoint", key), url(data, "s3_endpoint", key)
    if not ec2 or not s3:
        raise ConfigError(f"{key}: ec2_endpoint and s3_endpoint are required")
    e = Ec2TargetConfig
    regions = data.get("regions", list(e.regions))
    if isinstance(regions, str):
        regions = [regions]
    if (
        not isinstance(regions, list)
        or not regions
        or not all(isinstance(r, str) and re.fullmatch(r"[a-z0-9-]+", r) for r in regions)
    ):
        raise ConfigError(f"{key}.regions: expected a list of region names, got {regions!r}")
    bucket = text(data, "bucket", key, e.bucket) or ""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ConfigError(f"{key}.bucket: not a valid bucket name: {bucket!r}")
    creds = text(data, "credentials_file", key)
    return Ec2TargetConfig(
        type="ec2",
        ec2_endpoint=ec2,
        s3_endpoint=s3,
        ebs_endpoint=url(data, "ebs_endpoint", key),
        regions=tuple(regions),
        bucket=bucket,
        credentials_file=Path(creds) if creds else None,
        method=choice(data, "method", key, e.method, ("bundle", "ebs")),
        virtualization_type=text(data, "virtualization_type", key, e.virtualization_type)
        or e.virtualization_type,
        kernel_id=text(data, "kernel_id", key),
        ramdisk_id=text(data, "ramdisk_id", key),
        **common,
    )


def _parse_seed(value: Any) -> SeedConfig:
    data = expect_mapping(value, "seed")
    check_keys(data, ("after_sync", "targets"), "seed")
    targets = data.get("targets") or []
    if not isinstance(targets, list):
        raise ConfigError("seed.targets: expected a list of targets")
    names: set[str] = set()
    parsed: list[TargetConfig] = []
    parsers = {"glance": _parse_glance_target, "ec2": _parse_ec2_target}
    for i, item in enumerate(targets):
        key = f"seed.targets[{i}]"
        item = expect_mapping(item, key)
        kind = item.get("type")
        if kind not in parsers:
            raise ConfigError(f"{key}.type: glance or ec2, got {kind!r}")
        parsed.append(parsers[kind](item, key, _common_target(item, key, names)))
    return SeedConfig(
        after_sync=flag(data, "after_sync", "seed", SeedConfig.after_sync),
        targets=tuple(parsed),
    )


def _parse_logging(value: Any) -> LoggingConfig:
    data = expect_mapping(value, "logging")
    check_keys(data, ("format", "access_log", "access_log_format"), "logging")
    fmt = choice(data, "format", "logging", LoggingConfig.format, ("text", "json"))
    access = data.get("access_log", LoggingConfig.access_log)
    if access is False:  # YAML reads a bare `off` as false
        access = "off"
    if not isinstance(access, str) or not access:
        raise ConfigError(f"logging.access_log: stderr, off or a file path, got {access!r}")
    default_fmt = "json" if fmt == "json" else LoggingConfig.access_log_format
    access_fmt = choice(data, "access_log_format", "logging", default_fmt, ("common", "json"))
    return LoggingConfig(fmt, access, access_fmt)


def _parse_metrics(value: Any) -> bool:
    data = expect_mapping(value or {}, "metrics")
    check_keys(data, ("enabled",), "metrics")
    return flag(data, "enabled", "metrics", Config.metrics)


def _parse_admin(value: Any) -> AdminConfig:
    data = expect_mapping(value, "admin")
    check_keys(data, ("token_file", "allow"), "admin")
    allow = data.get("allow", list(AdminConfig.allow))
    if not isinstance(allow, list) or not allow:
        raise ConfigError(f"admin.allow: expected a list of networks, got {allow!r}")
    for i, net in enumerate(allow):
        try:
            ipaddress.ip_network(str(net), strict=False)
        except ValueError:
            raise ConfigError(f"admin.allow[{i}]: not a network: {net!r}") from None
    token_file = path(data, "token_file", "admin", AdminConfig.token_file, "a file")
    return AdminConfig(token_file, tuple(str(n) for n in allow))


def _parse_discovery(value: Any) -> DiscoveryConfig:
    data = expect_mapping(value, "discovery")
    check_keys(data, ("mdns", "name", "interfaces"), "discovery")
    name = data.get("name", DiscoveryConfig.name)
    if not isinstance(name, str) or not re.fullmatch(
        r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.local\.?", name
    ):
        raise ConfigError(f"discovery.name: a host name ending in .local, got {name!r}")
    interfaces = data.get("interfaces", list(DiscoveryConfig.interfaces))
    if not isinstance(interfaces, list) or not all(isinstance(i, str) for i in interfaces):
        raise ConfigError("discovery.interfaces: a list of interface names or addresses")
    mdns = flag(data, "mdns", "discovery", DiscoveryConfig.mdns)
    return DiscoveryConfig(mdns, name.rstrip("."), tuple(interfaces))


def _parse_limits(value: Any) -> LimitsConfig:
    data = expect_mapping(value, "limits")
    check_keys(data, ("connections_per_client", "drain_timeout"), "limits")
    cap = data.get("connections_per_client", LimitsConfig.connections_per_client)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"limits.connections_per_client: a whole number >= 1, got {cap!r}")
    drain = parse_duration(
        data.get("drain_timeout", LimitsConfig.drain_timeout), "limits.drain_timeout"
    )
    return LimitsConfig(cap, drain)


# --- the document ---------------------------------------------------------------------


def parse(data: Any, source: str = "<config>") -> Config:
    """Validate a loaded YAML document; defaults fill in what it leaves out."""
    base = default_data()
    data = expect_mapping({} if data is None else data, "<top level>")
    check_keys(data, SECTIONS, "")
    cache = {**base["cache"], **expect_mapping(data.get("cache", {}), "cache")}
    apt = {**base["apt"], **expect_mapping(data.get("apt", {}), "apt")}
    workers = data.get("workers", WORKERS_AUTO)
    return Config(
        listen=parse_listen(data.get("listen", base["listen"])),
        cache=_parse_cache(cache),
        apt=_parse_apt(apt),
        images=_parse_images(data.get("images") or {}),
        upstream=_parse_upstream(data.get("upstream") or {}),
        seed=_parse_seed(data.get("seed") or {}),
        logging=_parse_logging(data.get("logging") or {}),
        metrics=_parse_metrics(data.get("metrics", {})),
        admin=_parse_admin(data.get("admin") or {}),
        discovery=_parse_discovery(data.get("discovery") or {}),
        limits=_parse_limits(data.get("limits") or {}),
        workers=_parse_workers(workers),
        workers_auto=workers == WORKERS_AUTO,
        tls=_parse_tls(data.get("tls")),
        source=source,
    )


_SAN = re.compile(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})|[0-9A-Fa-f:.]+")


def _parse_tls(value: Any) -> TlsConfig | None:
    if value is None:
        return None
    data = expect_mapping(value, "tls")
    check_keys(data, ("listen", "cert", "key", "names"), "tls")
    if "listen" not in data:
        raise ConfigError("tls.listen: required (HOST:PORT, such as 0.0.0.0:8443)")
    cert = path(data, "cert", "tls", None, "a PEM certificate (chain)") if "cert" in data else None
    key = path(data, "key", "tls", None, "a PEM private key") if "key" in data else None
    if (cert is None) != (key is None):
        raise ConfigError("tls: give cert and key together (or neither: a self-signed one)")
    names = data.get("names") or []
    if not isinstance(names, list) or not all(
        isinstance(n, str) and _SAN.fullmatch(n) for n in names
    ):
        raise ConfigError(f"tls.names: a list of host names or addresses, got {names!r}")
    return TlsConfig(
        listen=parse_listen(data["listen"], "tls.listen"), cert=cert, key=key, names=tuple(names)
    )


def _parse_workers(value: Any) -> int:
    if value == WORKERS_AUTO:
        return cores()
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise ConfigError(f"workers: a number of processes from 1 to 64, or auto, got {value!r}")
    return value


def default_data() -> dict[str, Any]:
    """The embedded `default.yaml`: the site defaults (listen, cache, apt remaps)."""
    return yaml.safe_load(resources.files("appliance.config").joinpath("default.yaml").read_text())


def load(path: Path | None = None) -> Config:
    """The file at `path`, or the embedded default when there is none."""
    if path is None:
        return parse(default_data(), "<embedded default>")
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
            f"(line {line})"
        ) from None
    data = read_yaml(content, str(path))
    try:
        return parse(data, str(path))
    except ConfigError as exc:  # `FILE: key: problem`: which file, when several are about
        raise ConfigError(f"{path}: {exc}") from None


def read_yaml(content: str, source: str) -> Any:
    """One YAML document (safe types only). An error is one line, `SOURCE:LINE:COL: what`
    (1-based, as editors count); a key given twice in a mapping is an error (YAML says
    so, PyYAML would keep the last one silently)."""
    try:
        loader = yaml.SafeLoader(content)  # checks the characters at once
    except yaml.reader.ReaderError as exc:  # one YAML does not allow (a NUL, ...)
        line = content.count("\n", 0, exc.position) + 1
        column = exc.position - (content.rfind("\n", 0, exc.position) + 1) + 1
        raise ConfigError(
            f"{source}:{line}:{column}: unacceptable character #x{exc.character:04x}: {exc.reason}"
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_error(exc, source)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.MarkedYAMLError, source: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or exc.context or "not valid YAML"
    if exc.context and exc.problem and exc.context_mark is not None:
        what += f" ({exc.context} on line {exc.context_mark.line + 1})"
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    return f"{where}: {' '.join(what.split())}"


def _refuse_duplicate_keys(root: yaml.Node, source: str) -> None:
    """Walk the composed document (each node once: aliases share them) and refuse a
    mapping key given twice, naming it as a dotted path (`cache.dir`)."""
    seen: set[int] = set()
    todo: list[tuple[yaml.Node, str]] = [(root, "")]
    while todo:
        node, where = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo += [(item, f"{where}[{i}]") for i, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag.endswith(":merge"):
                    todo.append((value, where))  # `<<: *base`: explicit keys override it
                    continue
                name = f"{where}.{key.value}" if where else key.value
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    raise ConfigError(
                        f"{source}:{line}:{key.start_mark.column + 1}: {name}: given twice "
                        f"(first on line {first[key.tag, key.value]})"
                    )
                first[key.tag, key.value] = line
                todo.append((value, name))


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
            merged.update(parse_remaps({name: urls.split(",")}))
        config = replace(config, apt=replace(config.apt, remaps=merged))
    return config


RESTART_FIELDS = ("listen", "cache", "upstream", "logging", "metrics", "workers", "tls")


def restart_needed(old: Config, new: Config) -> list[str]:
    """What a reload cannot apply: these differ, so only a restart uses the new values."""
    out = []
    for name in RESTART_FIELDS:
        a, b = getattr(old, name), getattr(new, name)
        if name == "cache":
            out += [f"cache.{f}" for f in ("dir", "store") if _fixed(a, f) != _fixed(b, f)]
        elif name == "tls":  # a new certificate is taken on reload; a new port is not
            if (a and a.listen) != (b and b.listen):
                out.append("tls.listen")
        elif a != b:
            out.append(name)
    return out


def _fixed(cache: CacheConfig, name: str) -> Any:
    """What of `cache.<name>` a reload cannot change (the store's peers it can)."""
    value = getattr(cache, name)
    return replace(value, peers=()) if name == "store" and value is not None else value
