"""Config declarations and loading: the base class, one-of groups, YAML and overrides."""

from tml.core.config.base_config import BaseConfig, ConfigValueError, Field
from tml.core.config.loading import (
    ConfigError,
    apply_override,
    load_config_from_yaml,
    validate_config,
)

__all__ = [
    "BaseConfig",
    "ConfigError",
    "ConfigValueError",
    "Field",
    "apply_override",
    "load_config_from_yaml",
    "validate_config",
]
