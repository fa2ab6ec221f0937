"""OmniGen2 folders: official layout in and out, meta / bf16 loading, headers-only checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sgt_models import GenerationSettings, LossWeights, OmniGen2AdapterConfig
from sgt_models.check import CheckError
from sgt_models.omnigen2 import OmniGen2Adapter, OmniGen2CheckpointError
from sgt_models.omnigen2.testing import write_full_size_header_folder, write_tiny_omnigen2_folder
from sgt_models.testing import contract_samples

_SAMPLES = contract_samples(64)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_omnigen2_folder(tmp_path_factory.mktemp("omnigen2") / "official")


@pytest.fixture(scope="module")
def full_size_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_full_size_header_folder(tmp_path_factory.mktemp("omnigen2") / "full")


def _load(folder: Path) -> OmniGen2Adapter:
    return OmniGen2Adapter.from_config(
        OmniGen2AdapterConfig(model_path=str(folder), max_output_pixels=64 * 64)
    )


def _keys(file: Path) -> set[str]:
    with safe_open(str(file), "pt") as f:
        return set(f.keys())


def _seeded_total(adapter: OmniGen2Adapter, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return adapter.loss(adapter.collate(_SAMPLES), LossWeights()).total


def test_official_mllm_layout_loads_into_the_transformers_class(tiny_folder: Path) -> None:
    keys = _keys(tiny_folder / "mllm" / "model.safetensors")
    assert any(k.startswith("model.layers.") for k in keys)
    assert any(k.startswith("visual.") for k in keys)
    assert "lm_head.weight" not in keys  # tied to the embeddings
    assert not any(k.startswith("model.language_model.") for k in keys)
    config = json.loads((tiny_folder / "mllm" / "config.json").read_text())
    assert "text_config" not in config  # the hub's flat form
    adapter = _load(tiny_folder)
    state = adapter.mllm.state_dict()
    with safe_open(str(tiny_folder / "mllm" / "model.safetensors"), "pt") as f:
        assert torch.equal(
            state["model.language_model.norm.weight"], f.get_tensor("model.norm.weight")
        )
        name = "visual.blocks.0.attn.qkv.weight"
        assert torch.equal(state[f"model.{name}"], f.get_tensor(name))
    assert adapter.mllm.lm_head.weight is adapter.mllm.model.language_model.embed_tokens.weight


def test_save_load_round_trip_is_bit_exact(tiny_folder: Path, tmp_path: Path) -> None:
    adapter = _load(tiny_folder)
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.1)
    _seeded_total(adapter, 0).backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    adapter.save_pretrained(tmp_path / "saved")
    saved = tmp_path / "saved"
    for name in (
        "model_index.json",
        "sgt_adapter.json",
        "mllm/config.json",
        "mllm/model.safetensors",
        "processor/tokenizer.json",
        "processor/preprocessor_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ):
        assert (saved / name).is_file(), name
    assert json.loads((saved / "model_index.json").read_text()) == json.loads(
        (tiny_folder / "model_index.json").read_text()
    )
    assert _keys(saved / "mllm/model.safetensors") == _keys(tiny_folder / "mllm/model.safetensors")
    transformer_file = "transformer/diffusion_pytorch_model.safetensors"
    assert _keys(saved / transformer_file) == _keys(tiny_folder / transformer_file)

    state = torch.get_rng_state()
    loaded = OmniGen2Adapter.from_pretrained(saved)
    assert torch.equal(torch.get_rng_state(), state), "loading consumed the global RNG"
    assert loaded.config == adapter.config
    mine, theirs = adapter.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(_seeded_total(adapter, 4), _seeded_total(loaded, 4))
    image = [_SAMPLES[0].image]
    assert image[0] is not None
    assert adapter.answer(image, ["What?"], 6) == loaded.answer(image, ["What?"], 6)  # type: ignore[arg-type]
    settings = GenerationSettings(num_steps=2)
    assert np.array_equal(
        adapter.generate(["Segment."], image, settings)[0],  # type: ignore[arg-type]
        loaded.generate(["Segment."], image, settings)[0],  # type: ignore[arg-type]
    )


def test_saved_components_load_with_the_plain_classes(tiny_folder: Path, tmp_path: Path) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from sgt_models.omnigen2 import OmniGen2Transformer2DModel

    adapter = _load(tiny_folder)
    adapter.save_pretrained(tmp_path)
    mllm = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "mllm"))
    for name, value in adapter.mllm.state_dict().items():
        assert torch.equal(mllm.state_dict()[name], value), name
    transformer = OmniGen2Transformer2DModel.from_pretrained(str(tmp_path / "transformer"))
    assert type(transformer).__name__ == "OmniGen2Transformer2DModel"
    assert json.loads((tmp_path / "transformer/config.json").read_text())["_class_name"] == (
        "OmniGen2Transformer2DModel"
    )
    for name, value in adapter.transformer.state_dict().items():
        assert torch.equal(transformer.state_dict()[name], value), name


def test_meta_and_bf16_loading(tiny_folder: Path) -> None:
    meta = OmniGen2Adapter.from_pretrained(tiny_folder, device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    bf16 = OmniGen2Adapter.from_pretrained(tiny_folder, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    reference = _load(tiny_folder)
    for name, value in reference.transformer.state_dict().items():
        assert torch.equal(bf16.transformer.state_dict()[name], value.to(torch.bfloat16)), name
    batch = bf16.collate(_SAMPLES)
    torch.manual_seed(0)
    assert torch.isfinite(bf16.loss(batch).total)


def test_missing_or_corrupt_files_name_the_file(tiny_folder: Path, tmp_path: Path) -> None:
    for relative in (
        "model_index.json",
        "mllm/model.safetensors",
        "processor/tokenizer.json",
        "transformer/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ):
        broken = tmp_path / relative.replace("/", "_")
        shutil.copytree(tiny_folder, broken)
        (broken / relative).unlink()
        with pytest.raises(OmniGen2CheckpointError) as info:
            OmniGen2Adapter.from_pretrained(broken)
        assert str(broken / relative) in str(info.value)
        assert "\n" not in str(info.value)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_folder, corrupt)
    (corrupt / "transformer/diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(OmniGen2CheckpointError, match=r"diffusion_pytorch_model\.safetensors"):
        OmniGen2Adapter.from_pretrained(corrupt)


def test_a_missing_tensor_is_named_before_loading(tiny_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    file = broken / "transformer/diffusion_pytorch_model.safetensors"
    tensors = load_file(str(file))
    del tensors["layers.1.attn.to_k.weight"]
    save_file(tensors, str(file))
    with pytest.raises(
        OmniGen2CheckpointError, match=r"transformer: layers\.1\.attn\.to_k\.weight"
    ):
        OmniGen2Adapter.from_pretrained(broken)


def test_inspect_full_size_folder(full_size_folder: Path) -> None:
    from sgt_models.omnigen2._family import FAMILY

    assert FAMILY.recognise is not None
    assert FAMILY.inspect is not None
    assert FAMILY.recognise(full_size_folder)
    report = FAMILY.inspect(full_size_folder)
    assert report.ok, (report.missing, report.unexpected, report.mismatched, report.problems)
    assert report.family == "OmniGen2"
    assert report.layout == "official"
    assert list(report.parameter_counts) == ["mllm", "transformer", "vae"]
    counts = report.parameter_counts
    assert 3.70e9 < counts["mllm"] < 3.80e9, counts  # Qwen2.5-VL-3B, tied embeddings once
    assert 3.95e9 < counts["transformer"] < 4.00e9, counts
    assert 83e6 < counts["vae"] < 85e6, counts
    assert report.total_parameters == sum(counts.values())
    assert (full_size_folder / "mllm/model.safetensors.index.json").is_file()
    assert (
        full_size_folder / "transformer/diffusion_pytorch_model.safetensors.index.json"
    ).is_file()


def test_inspect_names_a_planted_missing_tensor_and_a_shape_mismatch(tmp_path: Path) -> None:
    from sgt_models.omnigen2._family import FAMILY

    folder = write_full_size_header_folder(
        tmp_path,
        missing=["transformer/layers.3.attn.to_v.weight"],
        mismatched={"mllm/model.norm.weight": (2049,)},
    )
    assert FAMILY.inspect is not None
    report = FAMILY.inspect(folder)
    assert not report.ok
    assert report.missing == ["transformer: layers.3.attn.to_v.weight"]
    assert report.mismatched == ["mllm: model.norm.weight: expected (2048,), found (2049,)"]
    assert report.unexpected == []


def test_inspect_tiny_official_and_saved_folders(tiny_folder: Path, tmp_path: Path) -> None:
    from sgt_models.omnigen2._family import FAMILY

    assert FAMILY.inspect is not None
    official = FAMILY.inspect(tiny_folder)
    assert official.ok
    assert official.layout == "official"
    _load(tiny_folder).save_pretrained(tmp_path)
    saved = FAMILY.inspect(tmp_path)
    assert saved.ok
    assert saved.layout == "sgt"
    assert saved.parameter_counts == official.parameter_counts
    (tmp_path / "vae/diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckError, match=r"vae/diffusion_pytorch_model\.safetensors"):
        FAMILY.inspect(tmp_path)


def test_the_registry_builds_and_loads_omnigen2(tiny_folder: Path, tmp_path: Path) -> None:
    from sgt_models.registry import build_adapter, family_of, family_of_folder, load_adapter

    assert family_of("omnigen2").kind == "omnigen2"
    assert family_of_folder(tiny_folder).kind == "omnigen2"  # recognised by model_index.json
    built = build_adapter(
        OmniGen2AdapterConfig(model_path=str(tiny_folder), max_output_pixels=64 * 64)
    )
    assert isinstance(built, OmniGen2Adapter)
    assert isinstance(load_adapter(tiny_folder), OmniGen2Adapter)
    built.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path)  # through sgt_adapter.json
    assert isinstance(loaded, OmniGen2Adapter)
    assert loaded.config == built.config
