"""Reading and writing OmniGen2 pipeline folders by the official file and tensor names.

The MLLM goes through transformers' ``Qwen2_5_VLForConditionalGeneration`` (whose load-time key
mapping reads the hub layout ``model.*`` / ``visual.*`` into ``model.language_model.*`` /
``model.visual.*``, and whose ``save_pretrained`` writes the hub layout back), the DiT through our
``OmniGen2Transformer2DModel`` (diffusers' ``ModelMixin`` machinery), the VAE through diffusers'
``AutoencoderKL``. Nothing needs ``trust_remote_code``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sgt_models.omnigen2.configuration import (
    MODEL_INDEX,
    MODEL_INDEX_FILE,
    OmniGen2CheckpointError,
)
from sgt_models.omnigen2.scheduler import SCHEDULER_CONFIG_FILE, OmniGen2Scheduler

__all__ = [
    "OmniGen2Components",
    "is_omnigen2_folder",
    "load_components",
    "mllm_disk_name",
    "read_model_index",
    "weight_files",
]

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
_PREPROCESSOR_FILE = "preprocessor_config.json"
_MLLM_WEIGHTS = "model.safetensors"
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass
class OmniGen2Components:
    """The loaded parts of a pipeline folder (not yet an adapter)."""

    mllm: Any
    transformer: Any
    vae: Any
    tokenizer: Any
    image_processor: Any
    scheduler: OmniGen2Scheduler
    model_index: dict[str, Any]
    mllm_config: dict[str, Any]


def read_model_index(folder: Path) -> dict[str, Any]:
    """``model_index.json`` of a pipeline folder (``OmniGen2CheckpointError`` naming it)."""
    file = folder / MODEL_INDEX_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OmniGen2CheckpointError(
            f"{file} is missing: not an OmniGen2 pipeline folder"
        ) from None
    except (OSError, ValueError) as exc:
        raise OmniGen2CheckpointError(f"{file}: not a valid model index ({exc})") from None
    if not isinstance(raw, dict):
        raise OmniGen2CheckpointError(f"{file}: not a valid model index (not a JSON object)")
    return raw


def is_omnigen2_folder(folder: Path) -> bool:
    """True when ``folder/model_index.json`` declares an ``OmniGen2Pipeline``."""
    try:
        return bool(read_model_index(folder).get("_class_name") == MODEL_INDEX["_class_name"])
    except OmniGen2CheckpointError:
        return False


def weight_files(folder: Path, single: str) -> list[Path]:
    """The safetensors files of a component: ``single`` or the shards its index lists."""
    if (folder / single).is_file():
        return [folder / single]
    index = folder / f"{single}.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OmniGen2CheckpointError(f"{index}: not a valid shard index ({exc})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise OmniGen2CheckpointError(f"{file} is missing (listed in {index})")
        return files
    raise OmniGen2CheckpointError(f"{folder / single} is missing (and no {index.name})")


def _json(file: Path) -> dict[str, Any]:
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OmniGen2CheckpointError(f"{file} is missing") from None
    except (OSError, ValueError) as exc:
        raise OmniGen2CheckpointError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise OmniGen2CheckpointError(f"{file}: not a JSON object")
    return raw


def mllm_disk_name(name: str) -> str | None:
    """The hub (on-disk) name of an in-memory Qwen2.5-VL tensor name (``None``: not stored)."""
    if name == "lm_head.weight":
        return name
    name = re.sub(r"^model\.language_model\.", "model.", name)
    return re.sub(r"^model\.visual\.", "visual.", name)


def _check_files(folder: Path) -> None:
    """Raise ``OmniGen2CheckpointError`` naming the first file a pipeline folder lacks."""
    read_model_index(folder)
    for component in ("mllm", "transformer", "vae"):
        _json(folder / component / "config.json")
    weight_files(folder / "mllm", _MLLM_WEIGHTS)
    weight_files(folder / "transformer", _DIFFUSERS_WEIGHTS)
    weight_files(folder / "vae", _DIFFUSERS_WEIGHTS)
    processor = folder / "processor"
    if not any((processor / name).is_file() for name in _TOKENIZER_FILES):
        raise OmniGen2CheckpointError(f"{processor / _TOKENIZER_FILES[0]} is missing")
    _json(processor / _PREPROCESSOR_FILE)
    _json(folder / "scheduler" / SCHEDULER_CONFIG_FILE)


def load_image_processor(folder: Path) -> Any:
    """The Qwen2-VL image processor of ``processor/`` (PIL backend: no torchvision needed)."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as ImageProcessor,
        )
    except ImportError:  # older transformers: the class falls back to PIL by itself
        from transformers import (  # type: ignore[assignment]
            Qwen2VLImageProcessor as ImageProcessor,
        )
    file = folder / _PREPROCESSOR_FILE
    try:
        return ImageProcessor.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise OmniGen2CheckpointError(f"{file}: cannot build the image processor ({exc})") from None


def load_tokenizer(folder: Path) -> Any:
    """The Qwen2 tokenizer of ``processor/``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise OmniGen2CheckpointError(f"{folder}: cannot load the tokenizer ({exc})") from None


def build_mllm(config: dict[str, Any] | Any, dtype: torch.dtype | None = None) -> Any:
    """A randomly initialised (or, under ``torch.device('meta')``, empty) Qwen2.5-VL."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(**config) if isinstance(config, dict) else config
    model: Any = Qwen2_5_VLForConditionalGeneration(cfg)
    return model.to(dtype) if dtype is not None else model


def build_transformer(config: dict[str, Any]) -> Any:
    """The DiT of a ``transformer/config.json`` dict (random or meta weights)."""
    from sgt_models.omnigen2.transformer import OmniGen2Transformer2DModel

    return OmniGen2Transformer2DModel.from_config(config)


def build_vae(config: dict[str, Any]) -> Any:
    """The ``AutoencoderKL`` of a ``vae/config.json`` dict (random or meta weights)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(config)  # type: ignore[no-untyped-call]


def load_components(
    folder: Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    mllm_path: Path | None = None,
) -> OmniGen2Components:
    """Load every part of a pipeline folder; ``device="meta"`` builds them without weights.

    Weights load straight into ``dtype`` (both libraries build on the meta device and then
    assign the stored tensors, so no float32 copy exists in between).
    """
    from diffusers import AutoencoderKL
    from transformers import Qwen2_5_VLForConditionalGeneration

    from sgt_models.omnigen2.transformer import OmniGen2Transformer2DModel

    _check_files(folder)
    model_index = read_model_index(folder)
    mllm_dir = mllm_path if mllm_path is not None else folder / "mllm"
    mllm_config = _json(mllm_dir / "config.json")
    tokenizer = load_tokenizer(folder / "processor")
    image_processor = load_image_processor(folder / "processor")
    scheduler = OmniGen2Scheduler.from_folder(folder / "scheduler")
    if str(device) == "meta":
        from transformers import Qwen2_5_VLConfig

        with torch.device("meta"):
            mllm = build_mllm(Qwen2_5_VLConfig.from_pretrained(str(mllm_dir)), dtype)
            transformer = build_transformer(_json(folder / "transformer" / "config.json"))
            vae = build_vae(_json(folder / "vae" / "config.json"))
        if dtype is not None:
            transformer, vae = transformer.to(dtype), vae.to(dtype)
    else:
        # transformers and diffusers only warn about missing tensors (and initialise them at
        # random): name them here, from the headers, before anything loads
        check_tensors(folder)
        mllm = _load(Qwen2_5_VLForConditionalGeneration.from_pretrained, mllm_dir, dtype=dtype)
        transformer = _load(
            OmniGen2Transformer2DModel.from_pretrained, folder / "transformer", torch_dtype=dtype
        )
        vae = _load(AutoencoderKL.from_pretrained, folder / "vae", torch_dtype=dtype)
        mllm, transformer, vae = (m.to(device) for m in (mllm, transformer, vae))
    return OmniGen2Components(
        mllm=mllm,
        transformer=transformer,
        vae=vae,
        tokenizer=tokenizer,
        image_processor=image_processor,
        scheduler=scheduler,
        model_index=model_index,
        mllm_config=mllm_config,
    )


def _load(loader: Any, folder: Path, **kwargs: Any) -> Any:
    try:
        return loader(str(folder), **{k: v for k, v in kwargs.items() if v is not None})
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OmniGen2CheckpointError(f"{folder}: cannot load ({first})") from None


# -- headers-only checks (``sgt-models check`` and a guard before loading) -------------------------


@dataclass
class _Expected:
    """Meta-built components of a folder and the tensor shapes their files should hold."""

    counts: dict[str, int]
    shapes: dict[str, dict[str, tuple[int, ...]]]


def _expected(folder: Path) -> _Expected:
    from transformers import Qwen2_5_VLConfig

    from sgt_models.check import module_shapes

    mllm_config = Qwen2_5_VLConfig.from_pretrained(str(folder / "mllm"))
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        mllm = build_mllm(mllm_config)
        transformer = build_transformer(_json(folder / "transformer" / "config.json"))
        vae = build_vae(_json(folder / "vae" / "config.json"))
    tied = bool(getattr(mllm_config, "tie_word_embeddings", False)) or bool(
        getattr(mllm_config.get_text_config(), "tie_word_embeddings", False)
    )
    mllm_shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in module_shapes(mllm).items():
        disk = mllm_disk_name(name)
        if disk is None or (tied and disk == "lm_head.weight"):
            continue
        mllm_shapes[disk] = shape
    return _Expected(
        counts={
            "mllm": sum(p.numel() for p in mllm.parameters()),
            "transformer": sum(p.numel() for p in transformer.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
        },
        shapes={
            "mllm": mllm_shapes,
            "transformer": module_shapes(transformer),
            "vae": module_shapes(vae),
        },
    )


def _found(component: Path, single: str) -> tuple[dict[str, Any], list[str]]:
    """Tensor infos of a component's files (headers only) and problems with its shard index."""
    from sgt_models.check import CheckError, read_safetensors_header

    found: dict[str, Any] = {}
    problems: list[str] = []
    for file in weight_files(component, single):
        try:
            found.update(read_safetensors_header(file))
        except CheckError as exc:
            raise OmniGen2CheckpointError(str(exc)) from None
    index = component / f"{single}.index.json"
    if index.is_file() and not (component / single).is_file():
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        for name, file_name in sorted(weight_map.items()):
            if name not in found:
                problems.append(f"{index}: {name} is listed in {file_name} but not stored there")
    return found, problems


def _diffs(folder: Path, expected: _Expected) -> tuple[list[Any], list[str]]:
    from sgt_models.check import compare_tensors

    diffs, problems = [], []
    for component, single in (
        ("mllm", _MLLM_WEIGHTS),
        ("transformer", _DIFFUSERS_WEIGHTS),
        ("vae", _DIFFUSERS_WEIGHTS),
    ):
        found, extra = _found(folder / component, single)
        diffs.append(compare_tensors(expected.shapes[component], found, component))
        problems += extra
    return diffs, problems


def check_tensors(folder: Path) -> None:
    """Raise ``OmniGen2CheckpointError`` naming the first missing or mis-shaped tensor (headers)."""
    diffs, problems = _diffs(folder, _expected(folder))
    for diff in diffs:
        for kind, names in (("missing", diff.missing), ("mismatched", diff.mismatched)):
            if names:
                more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
                raise OmniGen2CheckpointError(f"{folder}: {kind} tensor {names[0]}{more}")
    if problems:
        raise OmniGen2CheckpointError(problems[0])


def inspect_folder(folder: Path) -> Any:
    """``sgt-models check`` of an official or SGT-saved OmniGen2 folder (headers only)."""
    from sgt_models.check import CheckError, CheckReport
    from sgt_models.omnigen2.configuration import SGT_ADAPTER_FILE

    problems: list[str] = []
    try:
        index = read_model_index(folder)
        if index.get("_class_name") != MODEL_INDEX["_class_name"]:
            problems.append(
                f"{folder / MODEL_INDEX_FILE}: _class_name is {index.get('_class_name')!r}, "
                f"expected {MODEL_INDEX['_class_name']!r}"
            )
        for component in ("mllm", "transformer", "vae"):
            _json(folder / component / "config.json")
        expected = _expected(folder)
        diffs, shard_problems = _diffs(folder, expected)
    except (OmniGen2CheckpointError, OSError, ValueError) as exc:
        raise CheckError(str(exc).splitlines()[0]) from None
    processor = folder / "processor"
    if not any((processor / name).is_file() for name in _TOKENIZER_FILES):
        problems.append(f"tokenizer: {processor / _TOKENIZER_FILES[0]} is missing")
    if not (processor / _PREPROCESSOR_FILE).is_file():
        problems.append(f"image processor: {processor / _PREPROCESSOR_FILE} is missing")
    if not (folder / "scheduler" / SCHEDULER_CONFIG_FILE).is_file():
        problems.append(f"scheduler: {folder / 'scheduler' / SCHEDULER_CONFIG_FILE} is missing")
    sgt = folder / SGT_ADAPTER_FILE
    if sgt.is_file():
        from sgt_models.config import OmniGen2AdapterConfig

        try:
            OmniGen2AdapterConfig.model_validate_json(sgt.read_text(encoding="utf-8"))
        except ValueError as exc:
            problems.append(f"{sgt}: not a valid OmniGen2 adapter config ({exc})".splitlines()[0])
    report = CheckReport(
        family="OmniGen2",
        layout="sgt" if sgt.is_file() else "official",
        path=folder,
        parameter_counts=dict(expected.counts),
        total_parameters=sum(expected.counts.values()),
        problems=problems + shard_problems,
    )
    for diff in diffs:
        report.add(diff)
    return report
