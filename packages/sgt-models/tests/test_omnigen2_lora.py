"""LoRA on OmniGen2: only adapters train; merge and export reproduce the unmerged model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sgt_models import FreezePolicy, LossWeights, OmniGen2AdapterConfig
from sgt_models.omnigen2 import OmniGen2Adapter, OmniGen2Transformer2DModel
from sgt_models.omnigen2.testing import write_tiny_omnigen2_folder
from sgt_models.testing import contract_samples

pytest.importorskip("peft")

_SAMPLES = contract_samples(64)
# the vision tower frozen; with lora_mllm the LM trains through its adapters only
_FROZEN_VISION = FreezePolicy(vision_encoder=True, connector=True)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_omnigen2_folder(tmp_path_factory.mktemp("omnigen2") / "pipeline")


def _lora(folder: Path, **kwargs: object) -> OmniGen2Adapter:
    config = OmniGen2AdapterConfig(
        model_path=str(folder), max_output_pixels=64 * 64, lora_rank=4, lora_alpha=8.0, **kwargs
    )
    return OmniGen2Adapter.from_config(config)


def _total(adapter: OmniGen2Adapter, seed: int = 3) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return adapter.loss(adapter.collate(_SAMPLES), LossWeights()).total


def _velocity(transformer: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = [
        torch.randn(4, 8, 8, generator=generator),
        torch.randn(4, 8, 12, generator=generator),
    ]
    text = torch.randn(2, 5, 32, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    refs = [[torch.randn(4, 8, 8, generator=generator)], []]
    with torch.no_grad():
        out = transformer(latents, torch.tensor([0.3, 0.7]), text, None, mask, refs)
    return torch.cat([o.flatten() for o in out])


def _train(adapter: OmniGen2Adapter, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=5e-2)
    for step in range(steps):
        torch.manual_seed(step)
        optimizer.zero_grad()
        adapter.loss(adapter.collate(_SAMPLES)).total.backward()
        optimizer.step()


def test_only_lora_weights_train(tiny_folder: Path) -> None:
    adapter = _lora(tiny_folder, lora_mllm=True, freeze=_FROZEN_VISION)
    trainable = {n for n, p in adapter.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".lora_" in n for n in trainable)
    assert any(n.startswith("transformer.") and "to_out.0.lora_B" in n for n in trainable)
    assert any(
        n.startswith("mllm.model.language_model.") and "q_proj.lora_A" in n for n in trainable
    )
    before = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    _train(adapter, steps=1)
    changed = {n for n, p in adapter.named_parameters() if not torch.equal(before[n], p)}
    assert changed
    assert changed <= trainable


def test_merge_export_load_reproduces_the_unmerged_model(tiny_folder: Path, tmp_path: Path) -> None:
    adapter = _lora(tiny_folder, lora_mllm=True)
    _train(adapter)
    assert any(p.abs().sum() > 0 for n, p in adapter.named_parameters() if "lora_B" in n)
    unmerged_total, unmerged_velocity = _total(adapter), _velocity(adapter.transformer)

    adapter.save_pretrained(tmp_path / "export")  # writes the merged weights
    file = tmp_path / "export/transformer/diffusion_pytorch_model.safetensors"
    with safe_open(str(file), "pt") as f:
        keys = set(f.keys())
    official = set(
        OmniGen2Transformer2DModel.from_pretrained(str(tiny_folder / "transformer")).state_dict()
    )
    assert keys == official, "the export must hold the official names only"
    with safe_open(str(tmp_path / "export/mllm/model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert not any("lora" in k or "base_layer" in k for k in names)

    plain = OmniGen2Transformer2DModel.from_pretrained(str(tmp_path / "export/transformer"))
    torch.testing.assert_close(_velocity(plain), unmerged_velocity, rtol=1e-5, atol=1e-5)
    loaded = OmniGen2Adapter.from_pretrained(tmp_path / "export")
    torch.testing.assert_close(_total(loaded), unmerged_total, rtol=1e-5, atol=1e-5)

    adapter.merge_lora()
    assert not any(".lora_" in n or "base_layer" in n for n, _ in adapter.named_parameters())
    torch.testing.assert_close(_total(adapter), unmerged_total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        _velocity(adapter.transformer), unmerged_velocity, rtol=1e-5, atol=1e-5
    )
    merged = adapter.transformer.state_dict()
    assert set(merged) == official
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(merged[name], value, rtol=1e-6, atol=1e-6)


def test_lora_without_peft_names_the_extra(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"sgt-models\[lora\]"):
        _lora(tiny_folder)
