"""Configuration: the typed schema and the loader that checks it.

``load_config(path)`` is the one entry point the server needs; everything it
returns has passed the checks documented in :mod:`gateway.config.load`.
"""

from .load import (
    ConfigError,
    ConfigWarning,
    config_warnings,
    effective_classes,
    is_loopback,
    load_config,
    parse_config,
    parse_hostport,
    parse_upstream,
)
from .schema import (
    Admission,
    Config,
    Limits,
    Log,
    Match,
    Pool,
    Redis,
    School,
    Server,
    Timeouts,
    TrafficClass,
    Window,
    default_classes,
)

__all__ = [
    "Admission", "Config", "ConfigError", "ConfigWarning", "Limits", "Log", "Match", "Pool",
    "Redis", "School", "Server", "Timeouts", "TrafficClass", "Window", "config_warnings",
    "default_classes", "effective_classes", "is_loopback", "load_config", "parse_config",
    "parse_hostport", "parse_upstream",
]
