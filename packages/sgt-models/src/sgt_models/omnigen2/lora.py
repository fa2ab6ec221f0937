"""LoRA on OmniGen2 through ``peft`` (the optional extra ``sgt-models[lora]``).

Adapters are injected in place (``peft.inject_adapter_in_model``), so parameter names stay the
official ones plus peft's ``.base_layer`` / ``.lora_A.default`` / ``.lora_B.default`` infixes.
``merged_state_dict`` folds the adapters into the base weights *without* changing the module and
returns the official names: that is what a save writes, so that upstream tools (and
``from_pretrained``) read a plain model and never meet LoRA keys.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "MLLM_LORA_TARGETS",
    "TRANSFORMER_LORA_TARGETS",
    "add_lora",
    "has_lora",
    "lora_parameters",
    "merge_lora",
    "merged_state_dict",
    "require_peft",
]

#: upstream's ``train.py`` LoRA targets: the DiT's attention projections
TRANSFORMER_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
#: the language model's attention projections (the vision tower's are named qkv / proj)
MLLM_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

_ADAPTER = "default"


def require_peft() -> Any:
    """The ``peft`` module, or an ``ImportError`` that names the extra to install."""
    try:
        import peft
    except ImportError as exc:
        raise ImportError(
            "LoRA (lora_rank) needs peft: install the extra with pip install 'sgt-models[lora]'"
        ) from exc
    return peft


def add_lora(
    module: torch.nn.Module, rank: int, alpha: float, targets: tuple[str, ...]
) -> torch.nn.Module:
    """Inject LoRA adapters of ``rank`` into ``module``'s ``targets`` (B = 0: same function)."""
    peft = require_peft()
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",
        target_modules=list(targets),
    )
    injected: torch.nn.Module = peft.inject_adapter_in_model(config, module, adapter_name=_ADAPTER)
    return injected


def _lora_layers(module: torch.nn.Module) -> list[tuple[str, Any]]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]


def has_lora(module: torch.nn.Module) -> bool:
    """True when ``module`` holds LoRA layers."""
    return bool(_lora_layers(module))


def lora_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The LoRA A/B parameters of ``module``."""
    return [p for name, p in module.named_parameters() if ".lora_" in name]


def merged_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict with every LoRA adapter folded in, under the official names."""
    layers = dict(_lora_layers(module))
    state = module.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." not in key:
            out[key] = value
            continue
        prefix, leaf = key.split(".base_layer.", 1)
        if leaf == "weight" and prefix in layers:
            layer = layers[prefix]
            delta = layer.get_delta_weight(_ADAPTER) if _ADAPTER in layer.lora_A else 0.0
            out[f"{prefix}.weight"] = (value + delta).to(value.dtype)
        else:
            out[f"{prefix}.{leaf}"] = value
    return out


def merge_lora(module: torch.nn.Module) -> torch.nn.Module:
    """Fold the adapters into the base layers and remove them (the official module layout)."""
    for name, layer in _lora_layers(module):
        layer.merge(adapter_names=[_ADAPTER])
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return module
