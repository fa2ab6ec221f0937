"""sgt-train: the DeepSpeed trainer, run configs and the ``sgt-train`` CLI.

Importing this package does not import torch or DeepSpeed.
"""

from importlib.metadata import version as _version

from sgt_train.config import (
    RUN_CONFIG_SCHEMA_VERSION,
    CheckpointConfig,
    ConfigError,
    EMAConfig,
    LoggingConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    ZeroConfig,
    apply_overrides,
    load_run_config,
    validate_run_config,
)

__version__ = _version("sgt-train")

__all__ = [
    "RUN_CONFIG_SCHEMA_VERSION",
    "CheckpointConfig",
    "ConfigError",
    "EMAConfig",
    "LoggingConfig",
    "OptimizerConfig",
    "RunConfig",
    "ScheduleConfig",
    "ZeroConfig",
    "__version__",
    "apply_overrides",
    "load_run_config",
    "validate_run_config",
]
