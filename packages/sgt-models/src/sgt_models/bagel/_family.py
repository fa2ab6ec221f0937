"""BAGEL as a ``ModelFamily`` of the registry: build, load, recognise and ``sgt-models check``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from sgt_models.bagel.configuration import (
    AE_FILE,
    EMA_FILE,
    LLM_CONFIG_FILE,
    MODEL_FILE,
    VIT_CONFIG_FILE,
    BagelCheckpointError,
    VaeShape,
    architecture_from_dicts,
    diffusers_to_flux_key,
    is_attention_projection,
    read_json_object,
    vae_shape_from_header,
)
from sgt_models.check import (
    CheckError,
    CheckReport,
    TensorInfo,
    compare_tensors,
    read_safetensors_header,
)
from sgt_models.config import BagelAdapterConfig
from sgt_models.registry import AdapterLoadError, ModelFamily

__all__ = ["FAMILY", "inspect", "recognise"]

#: Parameter groups reported by ``sgt-models check``, in order.
CHECK_GROUPS = (
    "understanding (LLM und expert + embeddings + lm_head)",
    "generation expert (MoT *_moe_gen + norm_moe_gen)",
    "vision encoder (SigLIP NaViT)",
    "connector",
    "vae bridge + time embedder",
    "vae (FLUX autoencoder)",
)


def _check_group(name: str) -> str:
    if name.startswith("vit_model."):
        return CHECK_GROUPS[2]
    if name.startswith("connector."):
        return CHECK_GROUPS[3]
    if name.startswith(("time_embedder.", "vae2llm.", "llm2vae.")):
        return CHECK_GROUPS[4]
    if name.startswith("vae."):
        return CHECK_GROUPS[5]
    if "_moe_gen" in name:
        return CHECK_GROUPS[1]
    return CHECK_GROUPS[0]


def _build(config: Any) -> torch.nn.Module:
    from sgt_models.bagel.modeling import BagelAdapter

    if not isinstance(config, BagelAdapterConfig):
        raise AdapterLoadError(f"the bagel family cannot build {type(config).__name__}")
    return BagelAdapter.from_pretrained(config.model_path, config=config)


def _load(path: Path, device: str | torch.device, dtype: torch.dtype | None) -> torch.nn.Module:
    from sgt_models.bagel.modeling import BagelAdapter

    return BagelAdapter.from_pretrained(path, device=device, dtype=dtype)


def recognise(path: Path) -> bool:
    """Whether ``path`` is a BAGEL folder (official or SGT-saved): both configs and weights."""
    path = Path(path)
    return (
        (path / LLM_CONFIG_FILE).is_file()
        and (path / VIT_CONFIG_FILE).is_file()
        and ((path / EMA_FILE).is_file() or (path / MODEL_FILE).is_file())
    )


def _tokenizer_problems(path: Path, vocab_size: int) -> list[str]:
    from sgt_models.bagel.processor import prepare_tokenizer

    if not (path / "tokenizer.json").is_file() and not (path / "vocab.json").is_file():
        return [f"tokenizer: no tokenizer.json or vocab.json in {path}"]
    try:
        from transformers import Qwen2Tokenizer

        tokenizer = Qwen2Tokenizer.from_pretrained(str(path))
        prepare_tokenizer(tokenizer, vocab_size)
    except (OSError, ValueError, TypeError) as exc:
        return [f"tokenizer: {exc}"]
    return []


def inspect(path: Path) -> CheckReport:
    """``sgt-models check`` of a BAGEL folder, from its configs and safetensors headers only."""
    from sgt_models.bagel._checkpoint import REBUILT, build_on_meta, read_adapter_config
    from sgt_models.bagel.modeling import BagelAdapter

    path = Path(path)
    problems: list[str] = []
    try:
        saved = read_adapter_config(path)
    except BagelCheckpointError as exc:
        raise CheckError(str(exc)) from None
    layout = "sgt" if saved is not None else "official"
    config = saved if saved is not None else BagelAdapterConfig(model_path=str(path))
    llm = read_json_object(path / LLM_CONFIG_FILE, CheckError)
    vit = read_json_object(path / VIT_CONFIG_FILE, CheckError)
    weights = path / (EMA_FILE if config.finetune_from_ema else MODEL_FILE)
    found = read_safetensors_header(weights)
    if (
        layout == "sgt"
        and not (path / (MODEL_FILE if config.finetune_from_ema else EMA_FILE)).is_file()
    ):
        problems.append(f"layout: {path / MODEL_FILE} or {path / EMA_FILE} is missing")
    ae_path = path / AE_FILE
    try:
        vae = vae_shape_from_header(ae_path)
        ae_found: dict[str, TensorInfo] | None = read_safetensors_header(ae_path)
    except BagelCheckpointError as exc:
        if not ae_path.is_file():
            problems.append(f"vae: {ae_path} is missing")
            vae, ae_found = VaeShape(), None
        else:
            raise CheckError(str(exc)) from None
    # the latent position table's grid as the file has it (upstream fine-tunes with 64)
    table = found.get("latent_pos_embed.pos_embed")
    side = (
        math.isqrt(table.shape[0]) if table is not None and table.shape else config.max_latent_size
    )
    try:
        arch = architecture_from_dicts(llm, vit, vae, max_latent_size=max(side, 1), where=path)
    except BagelCheckpointError as exc:
        raise CheckError(str(exc)) from None
    problems += _tokenizer_problems(path, arch.vocab_size)
    model = build_on_meta(BagelAdapter, config, arch, None, {})
    counts = dict.fromkeys(CHECK_GROUPS, 0)
    for name, p in model.named_parameters():
        counts[_check_group(name)] += p.numel()
    report = CheckReport(
        family="BAGEL",
        layout=layout,
        path=path,
        parameter_counts=counts,
        total_parameters=sum(counts.values()),
        problems=problems,
    )
    expected = {k: tuple(v.shape) for k, v in model.official_state_dict().items()}
    for name in REBUILT:  # rebuilt at load, whatever the file holds
        expected.pop(name, None)
        found.pop(name, None)
    report.add(compare_tensors(expected, found, weights.name))
    if ae_found is not None:
        levels = len(arch.vae.ch_mult)
        ae_expected = {}
        for key, value in model.vae.state_dict().items():
            shape = tuple(value.shape)
            ae_expected[diffusers_to_flux_key(key, levels)] = (
                (*shape, 1, 1) if is_attention_projection(key) else shape
            )
        report.add(compare_tensors(ae_expected, ae_found, AE_FILE))
    return report


FAMILY = ModelFamily(
    kind="bagel",
    config_type=BagelAdapterConfig,
    build=_build,
    load=_load,
    recognise=recognise,
    inspect=inspect,
)
