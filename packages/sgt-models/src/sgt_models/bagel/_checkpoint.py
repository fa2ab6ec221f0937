"""Loading and saving BAGEL folders in the official layout.

Loading (official or SGT-saved folder): the architecture comes from ``llm_config.json``,
``vit_config.json`` and ``ae.safetensors``'s header; the model is built on the meta device (no
memory, no RNG use) and the tensors of ``ema.safetensors`` (``finetune_from_ema``) or
``model.safetensors`` are assigned to it directly (``load_state_dict(assign=True)``), so a bf16
file never passes through an fp32 copy; they are cast only when the requested dtype differs.
The fixed sin-cos tables (``latent_pos_embed.pos_embed``, ``vit_pos_embed.pos_embed``) are
rebuilt, not read, as upstream pops them. ``ae.safetensors`` is read under FLUX's key names and
mapped to diffusers ``AutoencoderKL`` names.

Saving writes the same layout back, so upstream BAGEL tools read what SGT trained:
``llm_config.json`` / ``vit_config.json`` (the raw configs as loaded, without the load-time
overrides), ``config.json`` (the official one when the source folder had it), ``ema.safetensors``
(the trained weights under official names), ``model.safetensors`` (the same file, hard-linked, or
copied where links are unsupported: SGT trains one set of weights, and upstream reads
``ema.safetensors`` with ``--finetune_from_ema True`` and ``model.safetensors`` otherwise),
``ae.safetensors`` (FLUX names), the tokenizer files, and SGT's adapter config in
``sgt_adapter.json``. A model with LoRA adapters saves its merged weights (the saved config has
``lora_rank`` unset, since the adapters are folded in).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from sgt_models.bagel.configuration import (
    AE_FILE,
    BAGEL_CONFIG_FILE,
    EMA_FILE,
    LLM_CONFIG_FILE,
    MODEL_FILE,
    VIT_CONFIG_FILE,
    BagelArchitecture,
    BagelCheckpointError,
    diffusers_to_flux_key,
    flux_to_diffusers_key,
    is_attention_projection,
    read_architecture,
)
from sgt_models.config import BagelAdapterConfig
from sgt_models.registry import SGT_ADAPTER_FILE

if TYPE_CHECKING:
    from sgt_models.bagel.modeling import BagelAdapter

__all__ = [
    "TOKENIZER_FILES",
    "diffusers_to_flux_state",
    "flux_to_diffusers_state",
    "load_bagel",
    "read_adapter_config",
    "save_bagel",
    "weights_file",
]

logger = logging.getLogger(__name__)

#: Files of a Qwen2 tokenizer folder (copied through unchanged when present).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
)
#: Fixed tables rebuilt at load (upstream pops them from the checkpoint).
REBUILT = ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed")

_A = TypeVar("_A", bound="BagelAdapter")


def read_adapter_config(folder: Path) -> BagelAdapterConfig | None:
    """The ``sgt_adapter.json`` of an SGT-saved folder (``None`` for an official folder)."""
    path = folder / SGT_ADAPTER_FILE
    if not path.is_file():
        return None
    try:
        return BagelAdapterConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BagelCheckpointError(f"{path}: not a valid BAGEL adapter config: {exc}") from None


def weights_file(folder: Path, config: BagelAdapterConfig) -> Path:
    """``ema.safetensors`` (``finetune_from_ema``) or ``model.safetensors`` of a folder."""
    return folder / (EMA_FILE if config.finetune_from_ema else MODEL_FILE)


def flux_to_diffusers_state(
    state: dict[str, torch.Tensor], num_levels: int, where: Path | str = AE_FILE
) -> dict[str, torch.Tensor]:
    """``ae.safetensors`` tensors (FLUX names) as a diffusers ``AutoencoderKL`` state dict."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        try:
            name = flux_to_diffusers_key(key, num_levels)
        except KeyError:
            raise BagelCheckpointError(f"{where}: unexpected tensor {key!r}") from None
        if is_attention_projection(name) and value.ndim == 4:
            value = value[:, :, 0, 0]  # FLUX's 1x1 convolutions are diffusers' linears
        out[name] = value
    return out


def diffusers_to_flux_state(
    state: dict[str, torch.Tensor], num_levels: int
) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict under FLUX ``ae.safetensors`` names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = diffusers_to_flux_key(key, num_levels)
        if is_attention_projection(key) and value.ndim == 2:
            value = value[:, :, None, None]
        out[name] = value.contiguous()
    return out


def _read_passthrough(folder: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name in (*TOKENIZER_FILES, BAGEL_CONFIG_FILE):
        path = folder / name
        if path.is_file():
            out[name] = path.read_bytes()
    return out


def _load_tokenizer(folder: Path) -> Any:
    from transformers import Qwen2Tokenizer

    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise BagelCheckpointError(f"{folder}: no tokenizer files (tokenizer.json or vocab.json)")
    try:
        return Qwen2Tokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise BagelCheckpointError(f"{folder}: cannot load the tokenizer: {exc}") from None


def _read_tensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise BagelCheckpointError(f"{path} is missing")
    try:
        tensors: dict[str, torch.Tensor] = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BagelCheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors


def _check_against(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, Any],
    path: Path,
    ignore: tuple[str, ...] = (),
    *,
    strict: bool = True,
) -> None:
    """Raise on the first missing, unexpected or shape-mismatched tensor (naming the file)."""
    missing = sorted(k for k in expected.keys() - found.keys() if k not in ignore)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise BagelCheckpointError(f"{path}: missing tensor {missing[0]!r}{more}")
    unexpected = sorted(k for k in found.keys() - expected.keys() if k not in ignore)
    if unexpected and strict:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise BagelCheckpointError(f"{path}: unexpected tensor {unexpected[0]!r}{more}")
    if unexpected:  # upstream loads with strict=False; sgt-models check lists them
        logger.warning(
            "%s: ignoring %d unexpected tensors, e.g. %s", path, len(unexpected), unexpected[:3]
        )
    for key in sorted(expected.keys() & found.keys()):
        shape = tuple(found[key].shape)
        if key not in ignore and shape != tuple(expected[key]):
            raise BagelCheckpointError(
                f"{path}: tensor {key!r} has shape {shape}, the architecture expects "
                f"{tuple(expected[key])}"
            )


def build_on_meta(
    cls: type[_A],
    config: BagelAdapterConfig,
    arch: BagelArchitecture,
    tokenizer: Any,
    passthrough: dict[str, bytes],
) -> _A:
    """An adapter whose parameters live on the meta device (no memory, no RNG draws)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return cls(config, arch, tokenizer, passthrough=passthrough)


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # same dtype: the very tensors read from the file (no copy)
    return {k: v if v.dtype == dtype else v.to(dtype) for k, v in state.items()}


def load_bagel(
    cls: type[_A],
    folder: Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: BagelAdapterConfig | None = None,
) -> _A:
    """Load an official or SGT-saved BAGEL folder into ``cls`` (see the module docstring)."""
    if not folder.is_dir():
        raise BagelCheckpointError(f"{folder} is not a folder")
    saved = read_adapter_config(folder)
    if config is None:
        config = saved if saved is not None else BagelAdapterConfig(model_path=str(folder))
    target = (
        dtype
        if dtype is not None
        else (torch.bfloat16 if config.dtype == "bfloat16" else torch.float32)
    )
    arch = read_architecture(folder, max_latent_size=config.max_latent_size)
    tokenizer = _load_tokenizer(folder)
    passthrough = _read_passthrough(folder)
    model = build_on_meta(cls, config, arch, tokenizer, passthrough)

    weights = weights_file(folder, config)
    from sgt_models.check import CheckError, read_safetensors_header

    try:
        header = read_safetensors_header(weights)
    except CheckError as exc:
        raise BagelCheckpointError(str(exc)) from None
    expected = {k: tuple(v.shape) for k, v in model.official_state_dict().items()}
    _check_against(expected, header, weights, ignore=REBUILT, strict=False)
    state = _read_tensors(weights, device)
    for key in [*REBUILT, *(state.keys() - expected.keys())]:
        state.pop(key, None)
    model.load_state_dict(_cast(state, target), strict=False, assign=True)
    del state

    ae_path = folder / AE_FILE
    levels = len(arch.vae.ch_mult)
    ae_state = flux_to_diffusers_state(_read_tensors(ae_path, device), levels, ae_path)
    vae_expected = {k: tuple(v.shape) for k, v in model.vae.state_dict().items()}
    _check_against(vae_expected, ae_state, ae_path)
    model.vae.load_state_dict(_cast(ae_state, target), strict=True, assign=True)

    _materialise(model, torch.device(device), target)
    if config.lora_rank is not None:
        from sgt_models.bagel._lora import add_lora

        add_lora(model)
    model.apply_freeze_policy()
    return model


def _materialise(model: BagelAdapter, device: torch.device, dtype: torch.dtype) -> None:
    """Rebuild what the checkpoint does not hold (RoPE, sin-cos tables) on the real device."""
    model.language_model.model.rebuild_rotary(device)
    for table in (model.latent_pos_embed, model.vit_pos_embed):
        table.pos_embed = torch.zeros(0, dtype=dtype)  # a real (empty) tensor of the target dtype
        table.rebuild(device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise BagelCheckpointError(f"tensors left without weights after loading: {left[:5]}")


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_bagel(model: BagelAdapter, folder: Path, *, sgt_config: bool = True) -> None:
    """Write ``model`` as an official-layout BAGEL folder (``sgt_config``: plus ``sgt_adapter.json``)."""
    from sgt_models.bagel._lora import merged_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    arch = model.arch
    (folder / LLM_CONFIG_FILE).write_text(json.dumps(dict(arch.llm_raw), indent=2) + "\n")
    (folder / VIT_CONFIG_FILE).write_text(json.dumps(dict(arch.vit_raw), indent=2) + "\n")
    state = merged_state_dict(model)
    official = {k: v for k, v in state.items() if not k.startswith("vae.")}
    vae = {k[len("vae.") :]: v for k, v in state.items() if k.startswith("vae.")}
    meta = {"format": "pt"}
    _atomic_save(official, folder / EMA_FILE, meta)
    _link_or_copy(folder / EMA_FILE, folder / MODEL_FILE)
    _atomic_save(diffusers_to_flux_state(vae, len(arch.vae.ch_mult)), folder / AE_FILE, meta)
    written = set()
    for name, data in model.passthrough.items():
        (folder / name).write_bytes(data)
        written.add(name)
    if "tokenizer.json" not in written:
        model.tokenizer.save_pretrained(str(folder))
    if BAGEL_CONFIG_FILE not in written:
        (folder / BAGEL_CONFIG_FILE).write_text(
            json.dumps(bagel_config_json(arch), indent=2) + "\n"
        )
    config = model.config
    if config.lora_rank is not None:
        config = config.model_copy(update={"lora_rank": None})
    if sgt_config:
        (folder / SGT_ADAPTER_FILE).write_text(config.model_dump_json(indent=2) + "\n")
    logger.info("saved BAGEL to %s", folder)


def bagel_config_json(arch: BagelArchitecture) -> dict[str, Any]:
    """A ``config.json`` with upstream ``BagelConfig``'s own fields (for folders that lack one)."""
    return {
        "model_type": "bagel",
        "visual_gen": True,
        "visual_und": True,
        "latent_patch_size": arch.latent_patch_size,
        "max_latent_size": arch.max_latent_size,
        "vit_max_num_patch_per_side": arch.vit_max_num_patch_per_side,
        "connector_act": arch.connector_act,
        "interpolate_pos": False,
        "timestep_shift": 1.0,
    }
