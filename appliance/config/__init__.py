"""Configuration: one YAML document parsed once into frozen dataclasses.

`model` holds the dataclasses and every default, `fields` the shared validators,
`parse` the sections, `dump` the way back to YAML, `filters` the item filter grammar.
"""

from appliance.config.dump import dump, to_data
from appliance.config.fields import (
    RESERVED_PATHS,
    parse_duration,
    parse_listen,
    parse_size,
    parse_upstream,
    redact,
    valid_name,
)
from appliance.config.model import (
    DEFAULT_SEED_FILTERS,
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
    Listen,
    LoggingConfig,
    Secret,
    SeedConfig,
    TargetConfig,
    TlsConfig,
    UpstreamConfig,
)
from appliance.config.parse import default_data, load, parse, restart_needed, with_overrides

__all__ = [
    "DEFAULT_SEED_FILTERS",
    "RESERVED_PATHS",
    "AdminConfig",
    "AptConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "DiscoveryConfig",
    "Ec2TargetConfig",
    "FeedConfig",
    "GlanceTargetConfig",
    "ImagesConfig",
    "LimitsConfig",
    "Listen",
    "LoggingConfig",
    "Secret",
    "SeedConfig",
    "TargetConfig",
    "TlsConfig",
    "UpstreamConfig",
    "default_data",
    "dump",
    "load",
    "parse",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "parse_upstream",
    "redact",
    "restart_needed",
    "to_data",
    "valid_name",
    "with_overrides",
]
