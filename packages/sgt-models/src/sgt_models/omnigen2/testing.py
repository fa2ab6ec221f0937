"""OmniGen2 folders for tests: a tiny working pipeline and a full-size one with headers only.

``write_tiny_omnigen2_folder`` writes the official layout (same files, same tensor names) with
random weights small enough that a forward and backward on a few samples takes well under a
second on a CPU; the tokenizer (byte-level BPE carrying Qwen2.5-VL's special tokens) and the image
processor config are built locally, so nothing is downloaded. ``write_full_size_header_folder``
writes the published configs and safetensors files whose headers declare the full-size tensors
but that contain no data: only ``sgt-models check`` (which reads headers) can use it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sgt_models.omnigen2.configuration import (
    MODEL_INDEX,
    MODEL_INDEX_FILE,
    PUBLISHED_MLLM_CONFIG,
    PUBLISHED_SCHEDULER_CONFIG,
    PUBLISHED_TRANSFORMER_CONFIG,
    PUBLISHED_VAE_CONFIG,
    QWEN_SPECIAL_TOKENS,
)

__all__ = [
    "TINY_IMAGE_PIXELS",
    "build_tiny_tokenizer",
    "tiny_configs",
    "write_full_size_header_folder",
    "write_tiny_omnigen2_folder",
]

#: The tiny image processor resizes every MLLM input to this many pixels (4 merged tokens).
TINY_IMAGE_PIXELS = 56 * 56

_CORPUS: tuple[str, ...] = (
    "You are a helpful assistant that generates high-quality images based on user instructions.",
    "You are a helpful assistant.",
    "system user assistant",
    "Segment instances with different colors. Segment the image semantically.",
    "Draw the edges of the image. Predict the depth map of the image. Reconstruct the image.",
    "Generate an image of a red cube on the left of a blue sphere. Draw a cat.",
    "What is in the image? How many objects are there? a red cube on a table, two",
    "Is there a person in the image? Yes. No. What colour is the car? Where is the cup?",
    "zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
)

_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_tokenizer(vocab_size: int = 384) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` with Qwen2.5-VL's special tokens (ids 0..13)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer)
    return tokenizer


def _write_processor(folder: Path, max_pixels: int) -> dict[str, int]:
    """Tokenizer files and ``preprocessor_config.json`` as the hub's ``processor/`` holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    ids = {token: int(tokenizer.token_to_id(token)) for token in QWEN_SPECIAL_TOKENS}
    added = {
        str(i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token, i in ids.items()
    }
    tokenizer_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in QWEN_SPECIAL_TOKENS if t != "<|endoftext|>"],
        "bos_token": None,
        "chat_template": _QWEN_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "processor_class": "Qwen2_5_VLProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    preprocessor = {
        "min_pixels": min(3136, max_pixels),
        "max_pixels": max_pixels,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": _IMAGE_MEAN,
        "image_std": _IMAGE_STD,
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return ids


def tiny_configs(token_ids: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Configs of the tiny pipeline: ``mllm`` (flat hub form), ``transformer`` and ``vae``."""
    mllm = {
        **PUBLISHED_MLLM_CONFIG,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_token_id": token_ids["<|vision_pad|>"],
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "hidden_size": 32,
        "intermediate_size": 64,
        "max_position_embeddings": 4096,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 1,
        "torch_dtype": "float32",
        "vision_config": {
            **PUBLISHED_MLLM_CONFIG["vision_config"],
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [1],
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": 384,
    }
    transformer = {
        **PUBLISHED_TRANSFORMER_CONFIG,
        "in_channels": 4,
        "hidden_size": 48,
        "num_layers": 2,
        "num_refiner_layers": 1,
        "num_attention_heads": 2,
        "num_kv_heads": 1,
        "multiple_of": 16,
        "axes_dim_rope": [8, 8, 8],
        "axes_lens": [1024, 1024, 1024],
        "text_feat_dim": 32,
    }
    vae = {
        **PUBLISHED_VAE_CONFIG,
        "block_out_channels": [8, 8, 8, 8],
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 64,
    }
    return {"mllm": mllm, "transformer": transformer, "vae": vae}


def _randomise_transformer(model: torch.nn.Module, generator: torch.Generator) -> None:
    # upstream zero-initialises the modulations and the output projection; a tiny test model
    # needs every path live so that gradients reach the MLLM
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.ndim == 1 and "norm" in name and not name.endswith("bias"):
                p.copy_(1.0 + 0.05 * noise)
            elif p.ndim == 1:
                p.copy_(0.02 * noise)
            else:
                p.copy_(noise / max(1.0, float(p.shape[-1])) ** 0.5)


def write_tiny_omnigen2_folder(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny OmniGen2 pipeline folder in the official layout; returns the folder.

    Same structure, file names and tensor names as the hub's ``OmniGen2/OmniGen2``; weights are
    random (from ``seed``; the global torch RNG is left untouched).
    """
    from diffusers import AutoencoderKL
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from sgt_models.omnigen2.transformer import OmniGen2Transformer2DModel

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_INDEX_FILE).write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    ids = _write_processor(folder / "processor", TINY_IMAGE_PIXELS)
    configs = tiny_configs(ids)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mllm = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**configs["mllm"]))
        transformer = OmniGen2Transformer2DModel.from_config(configs["transformer"])
        vae = AutoencoderKL.from_config(configs["vae"])  # type: ignore[no-untyped-call]
    _randomise_transformer(transformer, generator)
    mllm_dir = folder / "mllm"
    mllm.save_pretrained(mllm_dir)
    (mllm_dir / "config.json").write_text(json.dumps(configs["mllm"], indent=2) + "\n")
    GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    ).save_pretrained(mllm_dir)
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(PUBLISHED_SCHEDULER_CONFIG, indent=2) + "\n"
    )
    return folder


# -- full-size folders with headers only --------------------------------------------------------


def _write_header_only(file: Path, tensors: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
    """A safetensors file whose header declares ``tensors`` (name -> (shape, dtype)); no data."""
    sizes = {"BF16": 2, "F16": 2, "F32": 4}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (shape, dtype) in sorted(tensors.items()):
        numel = 1
        for d in shape:
            numel *= d
        end = offset + numel * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(struct.pack("<Q", len(raw)) + raw)


def _write_component(
    folder: Path,
    single: str,
    shapes: Mapping[str, tuple[int, ...]],
    dtype: str,
    shards: int,
) -> None:
    names = sorted(shapes)
    if shards <= 1:
        _write_header_only(folder / single, {n: (shapes[n], dtype) for n in names})
        return
    stem, ext = single.rsplit(".", 1)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    for k in range(shards):
        file_name = f"{stem}-{k + 1:05d}-of-{shards:05d}.{ext}"
        part = names[k * per : (k + 1) * per]
        _write_header_only(folder / file_name, {n: (shapes[n], dtype) for n in part})
        weight_map.update(dict.fromkeys(part, file_name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / f"{single}.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_full_size_header_folder(
    path: str | Path,
    *,
    missing: Sequence[str] = (),
    mismatched: Mapping[str, tuple[int, ...]] | None = None,
) -> Path:
    """The published OmniGen2 folder with header-only weight files (for ``sgt-models check``).

    ``missing`` names tensors to leave out and ``mismatched`` tensors to declare with another
    shape, each as ``"component/tensor name"`` (e.g. ``"transformer/x_embedder.weight"``).
    The MLLM and the DiT are written as two shards with an index, the VAE as one file.
    """
    from sgt_models.check import module_shapes
    from sgt_models.omnigen2.checkpoint import (
        build_mllm,
        build_transformer,
        build_vae,
        mllm_disk_name,
    )

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_INDEX_FILE).write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    _write_processor(folder / "processor", 12845056)
    configs = {
        "mllm": PUBLISHED_MLLM_CONFIG,
        "transformer": PUBLISHED_TRANSFORMER_CONFIG,
        "vae": PUBLISHED_VAE_CONFIG,
    }
    for name, config in configs.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(PUBLISHED_SCHEDULER_CONFIG, indent=2) + "\n"
    )
    from transformers import Qwen2_5_VLConfig

    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        mllm = build_mllm(Qwen2_5_VLConfig(**PUBLISHED_MLLM_CONFIG))
        transformer = build_transformer(PUBLISHED_TRANSFORMER_CONFIG)
        vae = build_vae(PUBLISHED_VAE_CONFIG)
    shapes: dict[str, dict[str, tuple[int, ...]]] = {
        "mllm": {
            disk: shape
            for name, shape in module_shapes(mllm).items()
            if (disk := mllm_disk_name(name)) is not None and disk != "lm_head.weight"
        },
        "transformer": module_shapes(transformer),
        "vae": module_shapes(vae),
    }
    for entry in missing:
        component, name = entry.split("/", 1)
        del shapes[component][name]
    for entry, shape in (mismatched or {}).items():
        component, name = entry.split("/", 1)
        shapes[component][name] = tuple(shape)
    _write_component(folder / "mllm", "model.safetensors", shapes["mllm"], "BF16", 2)
    _write_component(
        folder / "transformer",
        "diffusion_pytorch_model.safetensors",
        shapes["transformer"],
        "BF16",
        2,
    )
    _write_component(folder / "vae", "diffusion_pytorch_model.safetensors", shapes["vae"], "F32", 1)
    return folder
