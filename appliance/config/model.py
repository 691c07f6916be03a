"""The configuration as frozen dataclasses: the one place for every default.

A field's default is the default: parsers read it from here, never from a literal of
their own (`workers`, whose default is the word `auto`, takes the word and what it means
from here too: `WORKERS_AUTO`, `cores()`). Fields whose unit users write (`50GiB`, `6h`)
say so in their metadata, so `dump` prints them the way they were written. Only the site
defaults a new machine needs (listen address, cache directory and size, remaps) are in the
embedded `default.yaml`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIZE = {"unit": "size"}  # dumped as 50GiB, 64MiB
DURATION = {"unit": "duration"}  # dumped as 6h, 3d, 45s
WORKERS_AUTO = "auto"  # `workers` when not written: one process per core (`cores()`)


def cores() -> int:
    """The number of processes `workers: auto` means on this machine."""
    return max(1, os.cpu_count() or 1)


def size(default: int) -> Any:
    return field(default=default, metadata=SIZE)


def duration(default: float) -> Any:
    return field(default=default, metadata=DURATION)


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
class StoreConfig:
    """A shared object store (S3 API) behind the local cache; None: the local disk alone."""

    endpoint: str
    bucket: str
    credentials_file: Path  # AWS-style: [default] aws_access_key_id / aws_secret_access_key
    # a secret the units share (not the bucket's credential): their HMAC on each object lets
    # another unit copy in what it cannot check against upstream itself (see security.md)
    fleet_key_file: Path | None = None
    region: str = "us-east-1"
    prefix: str = ""  # object names start with this ("" or ending in "/")
    lease: float = duration(30.0)  # a unit's fetch lease, renewed while it downloads
    type: str = "s3"
    # how the other units reach this one (named in its leases), and theirs: a unit waiting
    # for another's download streams it from that unit, only from a URL listed in `peers`
    peer_url: str | None = None
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class CacheConfig:
    dir: Path
    max_size: int = field(metadata=SIZE)
    min_free: int = size(64 * 1024**2)  # keep this much of the file system free, else pass
    expire_after: float = duration(3 * 86400.0)  # unreferenced pool/by-hash files go after
    expire_interval: float = duration(86400.0)  # how often the service looks for them
    store: StoreConfig | None = None  # shared by several units; `max_size` bounds the disk


@dataclass(frozen=True)
class AptConfig:
    index_ttl: float
    remaps: Mapping[str, tuple[str, ...]]
    # remap -> official mirrors of its archive: `file:` mirror lists the distributions
    # ship, URLs, `*` host patterns (proxy-form requests to them share the remap's entries)
    mirrors: Mapping[str, tuple[str, ...]]
    sources: tuple[str, ...]  # apt sources files whose http hosts are accepted
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpstreamConfig:
    """Timeouts for every upstream transfer (apt files, feeds, images)."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # longest silence between two reads of a body
    deadline: float = duration(6 * 3600.0)  # longest time for one whole body
    min_rate: float = size(1024)  # bytes/s over rate_window, below which a transfer is cut
    rate_window: float = duration(60.0)


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
    sync_interval: float = duration(6 * 3600.0)
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
class TlsConfig:
    """The optional HTTPS listener (the same routes as the plain port, without the forward
    proxy): LXD and Incus read simplestreams only over HTTPS. Without `cert`/`key` the
    appliance makes a self-signed certificate once and keeps it with its state."""

    listen: Listen
    cert: Path | None = None  # PEM, the chain after the certificate; reloaded on `reload`
    key: Path | None = None
    names: tuple[str, ...] = ()  # more names/addresses for the self-signed subjectAltName


@dataclass(frozen=True)
class LimitsConfig:
    """What one client may hold (a NAT gateway in front of many instances counts as one)."""

    connections_per_client: int = 256
    # on SIGTERM: stop listening, let transfers in progress finish for this long, exit 0
    drain_timeout: float = duration(30.0)


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
    tls: TlsConfig | None = None
    # processes sharing the port and the cache; by default (WORKERS_AUTO) one per core
    workers: int = field(default_factory=cores)
    workers_auto: bool = field(default=False, compare=False)  # written `auto`: dumped so
    source: str = field(default="<embedded default>", compare=False)
