"""OmniGen2 as a ``ModelFamily`` of the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sgt_models.check import CheckReport
from sgt_models.config import OmniGen2AdapterConfig
from sgt_models.registry import AdapterLoadError, ModelFamily

__all__ = ["FAMILY"]


def _build(config: Any) -> torch.nn.Module:
    from sgt_models.omnigen2.modeling import OmniGen2Adapter

    if not isinstance(config, OmniGen2AdapterConfig):
        raise AdapterLoadError(f"the omnigen2 family cannot build {type(config).__name__}")
    return OmniGen2Adapter.from_config(config)


def _load(path: Path, device: str | torch.device, dtype: torch.dtype | None) -> torch.nn.Module:
    from sgt_models.omnigen2.modeling import OmniGen2Adapter

    return OmniGen2Adapter.from_pretrained(path, device=device, dtype=dtype)


def _recognise(path: Path) -> bool:
    from sgt_models.omnigen2.checkpoint import is_omnigen2_folder

    return is_omnigen2_folder(Path(path))


def _inspect(path: Path) -> CheckReport:
    from sgt_models.omnigen2.checkpoint import inspect_folder

    report: CheckReport = inspect_folder(Path(path))
    return report


FAMILY = ModelFamily(
    kind="omnigen2",
    config_type=OmniGen2AdapterConfig,
    build=_build,
    load=_load,
    recognise=_recognise,
    inspect=_inspect,
)
