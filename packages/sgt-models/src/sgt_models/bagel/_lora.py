"""LoRA for BAGEL through ``peft`` (optional: ``pip install 'sgt-models[lora]'``).

``add_lora`` wraps the attention projections and MLP projections of the generation expert
(``*_moe_gen``), the understanding expert, or both (``config.lora_target``) with peft LoRA
layers; ``merge_lora`` folds them back into plain ``nn.Linear`` modules, so the model has the
official key names again; ``merged_state_dict`` gives the merged weights without touching the
model (what ``save_pretrained`` writes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from sgt_models.bagel.modeling import BagelAdapter

__all__ = ["add_lora", "lora_target_pattern", "merge_lora", "merged_state_dict"]

_UND = r"self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj"
_GEN = r"self_attn\.(q|k|v|o)_proj_moe_gen|mlp_moe_gen\.(gate|up|down)_proj"


def lora_target_pattern(target: str) -> str:
    """peft ``target_modules`` regex for ``generation``, ``understanding`` or ``both``."""
    parts = {"generation": [_GEN], "understanding": [_UND], "both": [_UND, _GEN]}[target]
    return r".*layers\.\d+\.(" + "|".join(parts) + r")"


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - exercised where peft is absent
        raise ImportError(
            "LoRA for BAGEL needs peft: install the extra with pip install 'sgt-models[lora]'"
        ) from exc
    return peft


def add_lora(model: BagelAdapter) -> None:
    """Wrap the target projections of ``model.language_model`` with LoRA (rank from config)."""
    peft = _peft()
    cfg = model.config
    assert cfg.lora_rank is not None
    config = peft.LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        target_modules=lora_target_pattern(cfg.lora_target),
        lora_dropout=0.0,
        bias="none",
    )
    peft.inject_adapter_in_model(config, model.language_model)
    model.apply_freeze_policy()


def _lora_layers(model: nn.Module) -> list[tuple[nn.Module, str, Any]]:
    from peft.tuners.lora import LoraLayer

    out = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            parent_name, _, child = name.rpartition(".")
            out.append((model.get_submodule(parent_name), child, module))
    return out


def merge_lora(model: BagelAdapter) -> None:
    """Fold every LoRA adapter into its base ``nn.Linear`` and put the plain layer back."""
    try:
        layers = _lora_layers(model)
    except ImportError:
        return  # no peft: no LoRA layers either
    for parent, child, layer in layers:
        layer.merge(safe_merge=False)
        setattr(parent, child, layer.get_base_layer())
    model.config = model.config.model_copy(update={"lora_rank": None})
    model.apply_freeze_policy()


@torch.no_grad()
def merged_state_dict(model: BagelAdapter) -> dict[str, torch.Tensor]:
    """``state_dict()`` with LoRA folded in under the official names (the model is unchanged)."""
    state = model.state_dict()
    if not any(".lora_" in k for k in state):
        return state
    out = {k: v for k, v in state.items() if ".lora_" not in k and ".base_layer." not in k}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            base = module.base_layer
            weight = base.weight
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            out[f"{name}.weight"] = weight
            if base.bias is not None:
                out[f"{name}.bias"] = base.bias
    return out
