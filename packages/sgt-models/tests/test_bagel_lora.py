"""LoRA on BAGEL: only adapters train, on the chosen expert; merged weights are official."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sgt_models.bagel.modeling import BagelAdapter
from sgt_models.bagel.testing import tiny_bagel_config, write_tiny_bagel_folder
from sgt_models.testing import contract_samples

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bagel_folder(tmp_path_factory.mktemp("bagel"), seed=4)


def _lora(folder: Path, target: str) -> BagelAdapter:
    config = tiny_bagel_config(folder, lora_rank=4, lora_alpha=8.0, lora_target=target)
    return BagelAdapter.from_pretrained(folder, config=config)


def _step(model: BagelAdapter, seed: int = 0) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    torch.manual_seed(seed)
    model.loss(model.collate(contract_samples(32))).total.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("target", ["generation", "understanding", "both"])
def test_only_lora_weights_train_on_the_chosen_expert(folder: Path, target: str) -> None:
    model = _lora(folder, target)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all(".lora_" in n for n in trainable)
    gen = [n for n in trainable if "_moe_gen" in n]
    und = [n for n in trainable if "_moe_gen" not in n]
    assert bool(gen) == (target in ("generation", "both"))
    assert bool(und) == (target in ("understanding", "both"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _step(model)
    for name, p in model.named_parameters():
        if ".lora_B." in name:
            assert not torch.equal(before[name], p), f"{name} did not train"
        elif ".lora_" not in name:
            assert torch.equal(before[name], p), f"base weight {name} changed"


def test_merged_lora_saves_an_official_folder_with_the_same_outputs(
    folder: Path, tmp_path: Path
) -> None:
    model = _lora(folder, "both")
    _step(model, 1)
    _step(model, 2)  # lora_A trains from the second step on (lora_B starts at zero)
    samples = contract_samples(32, seed=9)
    image = samples[0].image
    assert image is not None

    def outputs(m: BagelAdapter) -> tuple[torch.Tensor, list[str]]:
        torch.manual_seed(7)
        with torch.no_grad():
            loss = m.loss(m.collate(samples)).total
        return loss, m.answer([image], ["What is in the image?"], 6)

    unmerged = outputs(model)
    model.save_pretrained(tmp_path / "saved")
    official = set(load_file(str(folder / "ema.safetensors")))
    assert set(load_file(str(tmp_path / "saved" / "ema.safetensors"))) == official
    loaded = BagelAdapter.from_pretrained(tmp_path / "saved")
    assert loaded.config.lora_rank is None
    from_folder = outputs(loaded)
    torch.testing.assert_close(from_folder[0], unmerged[0], rtol=1e-5, atol=1e-6)
    assert from_folder[1] == unmerged[1]
    merged = model.merge_lora()
    assert set(merged.official_state_dict()) == official
    torch.testing.assert_close(outputs(merged)[0], unmerged[0], rtol=1e-5, atol=1e-6)
    saved_state, merged_state = loaded.state_dict(), merged.state_dict()
    for key, value in merged_state.items():
        torch.testing.assert_close(saved_state[key], value, rtol=0, atol=0)
