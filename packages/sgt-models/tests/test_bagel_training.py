"""BAGEL training mechanics: ZeRO-3 idle paths, gradient checkpointing, rank-summed token
counts, reproducible condition dropout, and the FlexAttention path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sgt_data import TaskKind
from sgt_models.bagel.modeling import BagelAdapter
from sgt_models.bagel.testing import tiny_bagel_config, write_tiny_bagel_folder
from sgt_models.testing import contract_samples


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bagel_folder(tmp_path_factory.mktemp("bagel"), seed=5)


@pytest.fixture(scope="module")
def model(folder: Path) -> BagelAdapter:
    return BagelAdapter.from_pretrained(folder, config=tiny_bagel_config(folder))


@pytest.mark.parametrize("kinds", ["understanding", "text_to_image", "segmentation"])
def test_every_trainable_parameter_gets_a_gradient_on_any_batch(
    model: BagelAdapter, kinds: str
) -> None:
    # ZeRO-3 reduces the same gradients on every rank: idle paths must still produce (zero) ones
    samples = [s for s in contract_samples(32) if s.task is TaskKind(kinds)]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    model.loss(model.collate(samples)).total.backward()  # type: ignore[no-untyped-call]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    assert not [n for n, _ in model.named_parameters(recurse=False)], "no parameters on the adapter"


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(folder: Path) -> None:
    plain = BagelAdapter.from_pretrained(folder, config=tiny_bagel_config(folder))
    ckpt = BagelAdapter.from_pretrained(
        folder, config=tiny_bagel_config(folder, gradient_checkpointing=True)
    )
    grads = []
    for m in (plain, ckpt):
        torch.manual_seed(3)
        out = m.loss(m.collate(contract_samples(32)))
        out.total.backward()  # type: ignore[no-untyped-call]
        grads.append((out.total.detach(), {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for name, g in grads[0][1].items():
        other = grads[1][1][name]
        assert (g is None) == (other is None), name
        if g is not None and other is not None:
            torch.testing.assert_close(g, other, rtol=1e-5, atol=1e-7)


def test_token_counts_are_summed_over_ranks(
    model: BagelAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed as dist

    batch = model.collate(contract_samples(32))
    torch.manual_seed(1)
    single = model.loss(batch)
    reduced: list[float] = []

    def all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        reduced.append(float(tensor))
        tensor.mul_(4)  # four ranks with the same counts

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 4)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    torch.manual_seed(1)
    multi = model.loss(batch)
    assert reduced == [batch.num_ce_tokens, batch.num_mse_tokens]
    # world * local_sum / global_count: DeepSpeed's gradient mean is the global token mean
    for part in ("ce", "mse"):
        torch.testing.assert_close(multi.parts[part], single.parts[part])


def test_condition_dropout_follows_the_rng_and_only_in_training(folder: Path) -> None:
    model = BagelAdapter.from_pretrained(
        folder, config=tiny_bagel_config(folder, text_cond_dropout=0.5, vit_cond_dropout=0.5)
    )
    samples = [s for s in contract_samples(32) if s.task is not TaskKind.UNDERSTANDING] * 3
    batch = model.collate(samples)

    def mse(seed: int, training: bool) -> torch.Tensor:
        model.train(training)
        torch.manual_seed(seed)
        return model.loss(batch).parts["mse"].detach()

    # the draws are the same in both modes (times, noise, dropout): only training applies them
    differs = [not torch.equal(mse(seed, True), mse(seed, False)) for seed in range(4)]
    assert any(differs)
    assert all(torch.equal(mse(seed, True), mse(seed, True)) for seed in range(2))
    model.train()


@pytest.mark.slow
def test_flex_attention_matches_sdpa(folder: Path) -> None:
    sdpa = BagelAdapter.from_pretrained(folder, config=tiny_bagel_config(folder)).eval()
    flex = BagelAdapter.from_pretrained(
        folder, config=tiny_bagel_config(folder, attention_backend="flex")
    ).eval()
    batch = sdpa.collate(contract_samples(32), noise_seeds=[1, 2, 3, 4])
    with torch.no_grad():  # FlexAttention has no backward on a CPU
        torch.testing.assert_close(flex.loss(batch).total, sdpa.loss(batch).total)
