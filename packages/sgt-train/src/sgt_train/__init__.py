"""sgt-train: the DeepSpeed trainer, run configs and the ``sgt-train`` CLI.

Importing this package does not import torch or DeepSpeed (``fit`` and ``export_run`` load them
on first use).
"""

from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from sgt_train.export import export_run
    from sgt_train.loop import FitResult, Hooks, MicroBatchSource, StepMetrics, fit

__version__ = _version("sgt-train")

_LAZY = {
    "FitResult": "sgt_train.loop",
    "Hooks": "sgt_train.loop",
    "MicroBatchSource": "sgt_train.loop",
    "StepMetrics": "sgt_train.loop",
    "export_run": "sgt_train.export",
    "fit": "sgt_train.loop",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sgt_train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "RUN_CONFIG_SCHEMA_VERSION",
    "CheckpointConfig",
    "ConfigError",
    "EMAConfig",
    "FitResult",
    "Hooks",
    "LoggingConfig",
    "MicroBatchSource",
    "OptimizerConfig",
    "RunConfig",
    "ScheduleConfig",
    "StepMetrics",
    "ZeroConfig",
    "__version__",
    "apply_overrides",
    "export_run",
    "fit",
    "load_run_config",
    "validate_run_config",
]
