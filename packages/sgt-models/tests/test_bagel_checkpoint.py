"""BAGEL checkpoints: official layout in and out, meta/bf16 loading, the FLUX VAE key mapping,
``sgt-models check`` from headers only, and clear errors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sgt_models import GenerationSettings
from sgt_models.bagel import _checkpoint
from sgt_models.bagel._family import CHECK_GROUPS, inspect, recognise
from sgt_models.bagel.configuration import (
    PUBLISHED_LLM_CONFIG,
    PUBLISHED_VIT_CONFIG,
    BagelCheckpointError,
    VaeShape,
    diffusers_to_flux_key,
    flux_to_diffusers_key,
)
from sgt_models.bagel.modeling import BagelAdapter
from sgt_models.bagel.testing import (
    tiny_bagel_config,
    write_full_size_header_folder,
    write_tiny_bagel_folder,
)
from sgt_models.check import CheckError
from sgt_models.registry import family_of, load_adapter
from sgt_models.testing import contract_samples


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bagel_folder(tmp_path_factory.mktemp("official"), seed=3)


def _load(folder: Path, **overrides: Any) -> BagelAdapter:
    return BagelAdapter.from_pretrained(folder, config=tiny_bagel_config(folder, **overrides))


def _outputs(model: BagelAdapter) -> tuple[torch.Tensor, list[str], np.ndarray[Any, Any]]:
    samples = contract_samples(32, seed=5)
    torch.manual_seed(0)
    loss = model.loss(model.collate(samples)).total.detach()
    image = samples[0].image
    assert image is not None
    answer = model.answer([image], ["What is in the image?"], 6)
    drawn = model.generate(["Segment."], [image], GenerationSettings(num_steps=2, seed=3))[0]
    return loss, answer, drawn


def test_official_folder_has_the_official_files(official: Path) -> None:
    names = {p.name for p in official.iterdir()}
    assert {"llm_config.json", "vit_config.json", "ema.safetensors", "ae.safetensors"} <= names
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= names
    assert "sgt_adapter.json" not in names
    assert recognise(official)
    keys = set(load_file(str(official / "ema.safetensors")))
    for key in (
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.model.layers.0.self_attn.q_proj.bias",
        "language_model.model.layers.0.self_attn.q_proj_moe_gen.weight",
        "language_model.model.layers.0.self_attn.q_norm.weight",
        "language_model.model.layers.0.self_attn.k_norm_moe_gen.weight",
        "language_model.model.layers.1.mlp.gate_proj.weight",
        "language_model.model.layers.1.mlp_moe_gen.down_proj.weight",
        "language_model.model.layers.1.input_layernorm_moe_gen.weight",
        "language_model.model.layers.1.post_attention_layernorm.weight",
        "language_model.model.norm.weight",
        "language_model.model.norm_moe_gen.weight",
        "language_model.lm_head.weight",
        "vit_model.vision_model.embeddings.patch_embedding.weight",
        "vit_model.vision_model.embeddings.position_embedding.weight",
        "vit_model.vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "vit_model.vision_model.encoder.layers.0.mlp.fc1.weight",
        "vit_model.vision_model.post_layernorm.weight",
        "connector.fc1.weight",
        "connector.fc2.bias",
        "time_embedder.mlp.0.weight",
        "time_embedder.mlp.2.bias",
        "vae2llm.weight",
        "llm2vae.bias",
        "latent_pos_embed.pos_embed",
        "vit_pos_embed.pos_embed",
    ):
        assert key in keys, key
    assert not any(k.startswith("vae.") or "rotary" in k for k in keys)
    # one layer fewer than vit_config.json: BAGEL reads SigLIP's penultimate layer
    assert "vit_model.vision_model.encoder.layers.1.mlp.fc1.weight" not in keys
    vit = json.loads((official / "vit_config.json").read_text())
    assert vit["num_hidden_layers"] == 2
    ae = set(load_file(str(official / "ae.safetensors")))
    for key in (
        "encoder.down.0.block.0.norm1.weight",
        "encoder.mid.attn_1.q.weight",
        "decoder.up.3.upsample.conv.weight",
        "decoder.mid.block_2.conv2.bias",
    ):
        assert key in ae, key
    patch = load_file(str(official / "ema.safetensors"))[
        "vit_model.vision_model.embeddings.patch_embedding.weight"
    ]
    assert patch.shape == (32, 14 * 14 * 3)  # the Linear layout upstream converts to


def test_load_save_reload_is_bit_exact(official: Path, tmp_path: Path) -> None:
    first = _load(official)
    first.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"ema.safetensors", "model.safetensors", "ae.safetensors", "sgt_adapter.json"} <= names
    assert {"llm_config.json", "vit_config.json", "config.json", "tokenizer.json"} <= names
    for name in ("llm_config.json", "vit_config.json", "tokenizer.json", "vocab.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads(
            (official / name).read_text()
        )
    original = load_file(str(official / "ema.safetensors"))
    saved = load_file(str(tmp_path / "ema.safetensors"))
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in original)
    assert (tmp_path / "model.safetensors").read_bytes() == (
        tmp_path / "ema.safetensors"
    ).read_bytes()
    ae_in, ae_out = (
        load_file(str(official / "ae.safetensors")),
        load_file(str(tmp_path / "ae.safetensors")),
    )
    assert ae_in.keys() == ae_out.keys()
    assert all(torch.equal(ae_in[k], ae_out[k]) for k in ae_in)
    again = BagelAdapter.from_pretrained(tmp_path)
    assert again.config == first.config
    mine, theirs = first.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    a, b = _outputs(first), _outputs(again)
    assert torch.equal(a[0], b[0])
    assert a[1] == b[1]
    assert np.array_equal(a[2], b[2])
    # the registry reads both layouts
    assert isinstance(load_adapter(tmp_path), BagelAdapter)
    assert isinstance(load_adapter(official), BagelAdapter)


def test_building_happens_on_the_meta_device(
    official: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    original = _checkpoint.build_on_meta

    def spy(*args: Any, **kwargs: Any) -> Any:
        model = original(*args, **kwargs)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(_checkpoint, "build_on_meta", spy)
    state = torch.get_rng_state()
    model = _load(official)
    assert built == ["meta"]
    assert torch.equal(torch.get_rng_state(), state)
    assert not any(t.is_meta for t in model.state_dict().values())


def test_bf16_load_assigns_the_file_tensors_without_an_fp32_copy(
    official: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for item in official.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    ema = {k: v.to(torch.bfloat16) for k, v in load_file(str(official / "ema.safetensors")).items()}
    save_file(ema, str(tmp_path / "ema.safetensors"))
    read: dict[str, dict[str, torch.Tensor]] = {}
    original = _checkpoint._read_tensors

    def spy(path: Path, device: Any) -> dict[str, torch.Tensor]:
        tensors = original(path, device)
        read[path.name] = dict(tensors)
        return tensors

    monkeypatch.setattr(_checkpoint, "_read_tensors", spy)
    model = _load(tmp_path, dtype="bfloat16")
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    file = read["ema.safetensors"]
    for name, p in params.items():
        if name in file:  # the very storage safetensors read: no copy, let alone an fp32 one
            assert p.data_ptr() == file[name].data_ptr(), name
    assert model.loss(model.collate(contract_samples(32))).total.dtype == torch.float32


def _flux_state(shape: VaeShape) -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae: Any = AutoencoderKL(**shape.diffusers_kwargs())  # type: ignore[no-untyped-call]
    return _checkpoint.diffusers_to_flux_state(vae.state_dict(), len(shape.ch_mult))


def test_flux_and_diffusers_vae_names_round_trip() -> None:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae: Any = AutoencoderKL(**VaeShape().diffusers_kwargs())  # type: ignore[no-untyped-call]
    keys = list(vae.state_dict())
    flux = [diffusers_to_flux_key(k, 4) for k in keys]
    assert len(set(flux)) == len(keys)
    assert [flux_to_diffusers_key(k, 4) for k in flux] == keys
    assert "encoder.down.2.block.1.nin_shortcut.weight" not in flux  # 512 -> 512: no shortcut
    assert "encoder.down.1.block.0.nin_shortcut.weight" in flux
    assert "decoder.up.0.block.2.conv1.weight" in flux  # FLUX: 3 decoder blocks per level
    with pytest.raises(KeyError):
        flux_to_diffusers_key("encoder.unknown.weight", 4)


def test_vae_mapping_matches_diffusers_own_converter(official: Path) -> None:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    model = _load(official)
    shape = model.arch.vae
    flux = load_file(str(official / "ae.safetensors"))
    mine = _checkpoint.flux_to_diffusers_state(flux, len(shape.ch_mult))
    kwargs = shape.diffusers_kwargs()
    theirs = convert_ldm_vae_checkpoint(flux, kwargs)  # type: ignore[no-untyped-call]
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    vae: Any = AutoencoderKL(**kwargs)  # type: ignore[no-untyped-call]
    vae.load_state_dict(mine, strict=True)
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(
        vae.encode(pixels).latent_dist.mode(), model.vae.encode(pixels).latent_dist.mode()
    )


def test_check_of_a_full_size_folder_reads_headers_only(tmp_path: Path) -> None:
    folder = write_full_size_header_folder(tmp_path / "full")
    assert (folder / "ema.safetensors").stat().st_size < 1_000_000  # headers, no 29 GB
    start = time.perf_counter()
    report = inspect(folder)
    elapsed = time.perf_counter() - start
    assert report.ok, (report.missing, report.unexpected, report.mismatched, report.problems)
    assert list(report.parameter_counts) == list(CHECK_GROUPS)
    und = report.parameter_counts[CHECK_GROUPS[0]]
    assert 7.5e9 < und < 7.7e9  # Qwen2.5-7B with an untied lm_head: ~7.6B
    assert 14.5e9 < report.total_parameters < 14.8e9
    assert report.family == "BAGEL"
    assert report.layout == "official"
    assert elapsed < 60, elapsed  # generous: seconds in practice
    assert family_of("bagel").inspect is inspect


def test_check_names_a_missing_tensor_and_a_shape_mismatch(tmp_path: Path) -> None:
    q = "language_model.model.layers.3.self_attn.q_proj_moe_gen.weight"
    folder = write_full_size_header_folder(
        tmp_path / "bad",
        drop=["language_model.model.layers.7.mlp.down_proj.weight"],
        reshape={q: (3584, 3585)},
    )
    report = inspect(folder)
    assert not report.ok
    assert report.missing == ["ema.safetensors: language_model.model.layers.7.mlp.down_proj.weight"]
    assert report.mismatched == [f"ema.safetensors: {q}: expected (3584, 3584), found (3584, 3585)"]


def test_check_of_a_corrupt_header_names_the_file(official: Path, tmp_path: Path) -> None:
    for name in official.iterdir():
        (tmp_path / name.name).write_bytes(name.read_bytes())
    (tmp_path / "ema.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckError, match=r"ema\.safetensors"):
        inspect(tmp_path)
    with pytest.raises(BagelCheckpointError, match=r"ema\.safetensors"):
        _load(tmp_path)


def test_check_of_the_tiny_and_a_saved_folder(official: Path, tmp_path: Path) -> None:
    report = inspect(official)
    assert report.ok, report.problems
    _load(official).save_pretrained(tmp_path)
    saved = inspect(tmp_path)
    assert saved.ok
    assert saved.layout == "sgt"
    assert saved.parameter_counts == report.parameter_counts
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.json").unlink()
    assert any(p.startswith("tokenizer:") for p in inspect(tmp_path).problems)


def _copy(official: Path, target: Path) -> Path:
    target.mkdir()
    for name in official.iterdir():
        (target / name.name).write_bytes(name.read_bytes())
    return target


def test_load_errors_name_the_file_and_tensor(official: Path, tmp_path: Path) -> None:
    missing = _copy(official, tmp_path / "missing")
    (missing / "ema.safetensors").unlink()
    with pytest.raises(BagelCheckpointError, match=r"ema\.safetensors is missing"):
        _load(missing)
    short = _copy(official, tmp_path / "short")
    state = load_file(str(short / "ema.safetensors"))
    del state["connector.fc1.weight"]
    save_file(state, str(short / "ema.safetensors"))
    with pytest.raises(
        BagelCheckpointError, match=r"ema\.safetensors: missing tensor 'connector\.fc1\.weight'"
    ):
        _load(short)
    wrong = _copy(official, tmp_path / "wrong")
    state = load_file(str(wrong / "ema.safetensors"))
    state["vae2llm.weight"] = torch.zeros(64, 65)
    save_file(state, str(wrong / "ema.safetensors"))
    with pytest.raises(
        BagelCheckpointError, match=r"'vae2llm\.weight' has shape \(64, 65\).*\(64, 64\)"
    ):
        _load(wrong)
    no_llm = _copy(official, tmp_path / "nollm")
    (no_llm / "llm_config.json").unlink()
    with pytest.raises(BagelCheckpointError, match=r"llm_config\.json is missing"):
        _load(no_llm)


def test_published_configs_give_the_published_architecture() -> None:
    from sgt_models.bagel.configuration import architecture_from_dicts

    arch = architecture_from_dicts(
        PUBLISHED_LLM_CONFIG, PUBLISHED_VIT_CONFIG, VaeShape(), max_latent_size=64
    )
    assert (arch.hidden_size, arch.num_layers, arch.num_heads, arch.num_kv_heads) == (
        3584,
        28,
        28,
        4,
    )
    assert (arch.intermediate_size, arch.vocab_size) == (18944, 152064)
    assert (arch.vit_hidden_size, arch.vit_layers, arch.vit_heads) == (1152, 26, 16)
    assert arch.vit_intermediate_size == 4304
    assert arch.vit_max_num_patch_per_side == 70
    assert arch.latent_channels == 64
    assert arch.latent_downsample == 16
