"""The reference model as a ``ModelFamily`` of the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sgt_models.check import CheckReport, compare_tensors, module_shapes, read_safetensors_header
from sgt_models.config import ReferenceAdapterConfig
from sgt_models.registry import AdapterLoadError, ModelFamily

__all__ = ["FAMILY"]


def _build(config: Any) -> torch.nn.Module:
    from sgt_models.reference.modeling import ReferenceAdapter

    if not isinstance(config, ReferenceAdapterConfig):
        raise AdapterLoadError(f"the reference family cannot build {type(config).__name__}")
    return ReferenceAdapter(config)


def _load(path: Path, device: str | torch.device, dtype: torch.dtype | None) -> torch.nn.Module:
    from sgt_models.reference.modeling import ReferenceAdapter

    config_file = path / "config.json"
    try:
        ReferenceAdapterConfig.model_validate_json(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterLoadError(f"{config_file}: not a valid adapter config: {exc}") from exc
    return ReferenceAdapter.from_pretrained(path, device=device, dtype=dtype)


def _inspect(path: Path) -> CheckReport:
    import json

    from sgt_models.check import CheckError
    from sgt_models.reference.modeling import (
        CONFIG_FILE,
        TOKENIZER_FILE,
        VAE_CONFIG_FILE,
        WEIGHTS_FILE,
        ReferenceAdapter,
    )

    try:
        config = ReferenceAdapterConfig.model_validate_json((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckError(
            f"{path / CONFIG_FILE}: not a valid reference adapter config: {exc}"
        ) from None
    problems: list[str] = []
    if not (path / TOKENIZER_FILE).is_file():
        problems.append(f"tokenizer: {path / TOKENIZER_FILE} is missing")
    vae: torch.nn.Module | None = None
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        if config.latent_source == "vae":
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_config(  # type: ignore[no-untyped-call]
                json.loads((path / VAE_CONFIG_FILE).read_text())
            )
        model = ReferenceAdapter(config, vae=vae)
    counts = {name: sum(p.numel() for p in ps) for name, ps in model.parameter_groups().items()}
    report = CheckReport(
        family="reference",
        layout="sgt",
        path=path,
        parameter_counts=counts,
        total_parameters=sum(p.numel() for p in model.parameters()),
        problems=problems,
    )
    report.add(
        compare_tensors(
            module_shapes(model),
            read_safetensors_header(path / WEIGHTS_FILE),
            WEIGHTS_FILE,
        )
    )
    return report


FAMILY = ModelFamily(
    kind="reference",
    config_type=ReferenceAdapterConfig,
    build=_build,
    load=_load,
    inspect=_inspect,
)
