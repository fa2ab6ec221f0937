"""Test folders for BAGEL: a tiny random model in the official layout, and full-size headers.

``write_tiny_bagel_folder`` writes what an official BAGEL folder holds (``llm_config.json``,
``vit_config.json``, ``config.json``, ``ema.safetensors``, ``ae.safetensors`` under FLUX names,
Qwen2-style tokenizer files built locally) for a model with the same module structure and key
names but tiny sizes: a forward and backward of a 4-sample pack takes a fraction of a second on a
CPU. Load it with :func:`tiny_bagel_config` (small image sizes) or any ``BagelAdapterConfig``.

``write_full_size_header_folder`` writes the published configs and safetensors files whose
headers declare every full-size tensor (29 GB of bf16 in ``ema.safetensors``) but which hold no
tensor data: only the 8-byte header length and the JSON header. That is all ``sgt-models check``
reads, so the full-size check is tested without the 29 GB; loading such a folder fails (clearly).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from sgt_models.bagel.configuration import (
    AE_FILE,
    BAGEL_CONFIG_FILE,
    EMA_FILE,
    LLM_CONFIG_FILE,
    PUBLISHED_LLM_CONFIG,
    PUBLISHED_VIT_CONFIG,
    VIT_CONFIG_FILE,
    VaeShape,
    architecture_from_dicts,
    diffusers_to_flux_key,
    is_attention_projection,
)
from sgt_models.config import BagelAdapterConfig

__all__ = [
    "TINY_ADAPTER_SETTINGS",
    "TINY_LLM_CONFIG",
    "TINY_VAE",
    "TINY_VIT_CONFIG",
    "tiny_bagel_config",
    "write_full_size_header_folder",
    "write_tiny_bagel_folder",
    "write_tokenizer",
]

#: ``llm_config.json`` of the tiny model (Qwen2 fields, as the published one).
TINY_LLM_CONFIG: dict[str, Any] = {
    **PUBLISHED_LLM_CONFIG,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "max_window_layers": 2,
    "rope_theta": 10000.0,
    "torch_dtype": "float32",
    "vocab_size": 320,
}
#: ``vit_config.json`` of the tiny model (2 layers on disk: BAGEL runs 1).
TINY_VIT_CONFIG: dict[str, Any] = {
    **PUBLISHED_VIT_CONFIG,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "image_size": 224,  # a 16x16 patch grid: the default vit_image_size=224 fits
    "torch_dtype": "float32",
}
#: The tiny FLUX-style autoencoder (32 channels: GroupNorm(32) needs multiples of 32).
TINY_VAE = VaeShape(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=16)

#: Adapter settings that suit the tiny model: 28 px ViT inputs, 32 px VAE images (2x2 tokens).
TINY_ADAPTER_SETTINGS: dict[str, Any] = {
    "vit_image_size": 28,
    "vit_min_size": 28,
    "vae_min_size": 32,
    "vae_max_size": 32,
    "max_num_tokens": 4096,
    "expected_num_tokens": 512,
}

_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")
_CORPUS = (
    "What is in the image? How many objects are there? Where is it? What is it?",
    "a red cube on a table, a blue sphere, two cats and one dog, yes no",
    "Segment instances with different colors. Segment the image semantically. Segment.",
    "Draw the edges of the image. Predict the depth map. Reconstruct the image. Draw a cat.",
    "Generate an image of a blue sphere. Draw. left right top bottom zero one two three",
)


def tiny_bagel_config(path: str | Path, **overrides: Any) -> BagelAdapterConfig:
    """A ``BagelAdapterConfig`` for a tiny folder (``TINY_ADAPTER_SETTINGS`` + ``overrides``)."""
    return BagelAdapterConfig(model_path=str(path), **{**TINY_ADAPTER_SETTINGS, **overrides})


def write_tokenizer(folder: Path, vocab_size: int = 300) -> None:
    """A byte-level BPE Qwen2-style tokenizer folder (tokenizer.json, vocab.json, merges.txt,
    tokenizer_config.json) with Qwen2's special tokens, trained deterministically on a corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(_SPECIALS),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 4, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in _SPECIALS
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": list(_SPECIALS[1:]),
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "errors": "replace",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_tiny_bagel_folder(path: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random BAGEL in the official layout to ``path`` and return the path.

    ``overrides`` replace ``llm_config.json`` fields (``hidden_size=...``), ``vit_config.json``
    fields prefixed ``vit_`` (``vit_num_hidden_layers=3``) and ``max_latent_size``. Weights are
    drawn from a generator seeded with ``seed`` (the global RNG is left untouched); norms are
    perturbed around 1 and ``llm2vae`` is random (upstream zero-initialises it) so that every
    path of the tiny model is exercised.
    """
    from transformers import Qwen2Tokenizer

    from sgt_models.bagel._checkpoint import save_bagel
    from sgt_models.bagel.modeling import BagelAdapter

    folder = Path(path)
    llm = dict(TINY_LLM_CONFIG)
    vit = dict(TINY_VIT_CONFIG)
    max_latent_size = int(overrides.pop("max_latent_size", 64))
    for key, value in overrides.items():
        if key.startswith("vit_"):
            vit[key[len("vit_") :]] = value
        else:
            llm[key] = value
    write_tokenizer(folder)
    tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
    arch = architecture_from_dicts(llm, vit, TINY_VAE, max_latent_size=max_latent_size)
    config = BagelAdapterConfig(model_path=str(folder), max_latent_size=max_latent_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BagelAdapter(config, arch, tokenizer)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 1 and name.endswith("weight"):  # RMSNorm / LayerNorm / GroupNorm
                    p.add_(0.1 * torch.randn_like(p))
    model.passthrough = {}
    save_bagel(model, folder, sgt_config=False)
    (folder / "model.safetensors").unlink()  # an official folder ships ema.safetensors only
    for name in ("special_tokens_map.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)  # keep the folder as a Qwen2 folder has it
    write_tokenizer(folder)  # save_pretrained may rewrite the config; keep ours
    return folder


def _dtype_size(dtype: str) -> int:
    return {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8}[dtype]


def write_header_only_safetensors(
    path: Path, shapes: Mapping[str, Iterable[int]], dtype: str
) -> None:
    """A safetensors file that declares ``shapes`` (offsets of the real sizes) but has no data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(shapes):
        shape = [int(d) for d in shapes[name]]
        size = _dtype_size(dtype)
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def full_size_shapes() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Shapes of the published BAGEL-7B-MoT: ``ema.safetensors`` and ``ae.safetensors`` (FLUX)."""
    from sgt_models.bagel._checkpoint import build_on_meta
    from sgt_models.bagel.modeling import BagelAdapter

    arch = architecture_from_dicts(
        PUBLISHED_LLM_CONFIG, PUBLISHED_VIT_CONFIG, VaeShape(), max_latent_size=64
    )
    model = build_on_meta(BagelAdapter, BagelAdapterConfig(model_path="."), arch, None, {})
    ema = {k: tuple(v.shape) for k, v in model.official_state_dict().items()}
    levels = len(arch.vae.ch_mult)
    ae = {}
    for key, value in model.vae.state_dict().items():
        shape = tuple(value.shape)
        if is_attention_projection(key):
            shape = (*shape, 1, 1)
        ae[diffusers_to_flux_key(key, levels)] = shape
    return ema, ae


def write_full_size_header_folder(
    path: str | Path,
    *,
    drop: Iterable[str] = (),
    reshape: Mapping[str, tuple[int, ...]] | None = None,
) -> Path:
    """Write the published configs, a tokenizer and header-only full-size safetensors files.

    ``drop`` removes tensors from ``ema.safetensors``'s header, ``reshape`` changes their shapes
    (to plant a missing tensor or a shape mismatch for ``sgt-models check``).
    """
    from sgt_models.bagel._checkpoint import bagel_config_json

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LLM_CONFIG_FILE).write_text(json.dumps(PUBLISHED_LLM_CONFIG, indent=2) + "\n")
    (folder / VIT_CONFIG_FILE).write_text(json.dumps(PUBLISHED_VIT_CONFIG, indent=2) + "\n")
    arch = architecture_from_dicts(
        PUBLISHED_LLM_CONFIG, PUBLISHED_VIT_CONFIG, VaeShape(), max_latent_size=64
    )
    (folder / BAGEL_CONFIG_FILE).write_text(json.dumps(bagel_config_json(arch), indent=2) + "\n")
    write_tokenizer(folder)
    ema, ae = full_size_shapes()
    for name in drop:
        ema.pop(name)
    for name, shape in (reshape or {}).items():
        ema[name] = shape
    write_header_only_safetensors(folder / EMA_FILE, ema, "BF16")
    write_header_only_safetensors(folder / AE_FILE, ae, "F32")
    return folder
