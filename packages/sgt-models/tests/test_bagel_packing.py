"""BAGEL packing: a packed loss is the token-weighted mix of per-sample losses, samples are
isolated, condition dropout equals removal, answer's KV cache is exact, errors are clear."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sgt_data import Sample, TaskKind, Turn
from sgt_models.bagel.modeling import BagelAdapter
from sgt_models.bagel.processor import attention_mask
from sgt_models.bagel.testing import tiny_bagel_config, write_tiny_bagel_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bagel_folder(tmp_path_factory.mktemp("bagel"), seed=1)


@pytest.fixture(scope="module")
def model(folder: Path) -> BagelAdapter:
    return BagelAdapter.from_pretrained(folder, config=tiny_bagel_config(folder))


@pytest.fixture(scope="module")
def edit_model(folder: Path) -> BagelAdapter:
    config = tiny_bagel_config(folder, vae_reference_input=True)
    return BagelAdapter.from_pretrained(folder, config=config)


def _image(rng: np.random.Generator, h: int = 32, w: int = 32) -> np.ndarray[Any, Any]:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _samples(seed: int = 0) -> dict[str, Sample]:
    rng = np.random.default_rng(seed)
    return {
        "und": Sample(
            sample_id="und",
            source="t",
            task=TaskKind.UNDERSTANDING,
            instruction="What is in the image?",
            image=_image(rng, 28, 42),
            answer="a red cube",
        ),
        "und_text": Sample(
            sample_id="und-text",
            source="t",
            task=TaskKind.UNDERSTANDING,
            instruction="How many objects are there?",
            answer="two",
            history=(Turn(role="user", text="Where is it?"), Turn(role="assistant", text="left")),
        ),
        "seg": Sample(
            sample_id="seg",
            source="t",
            task=TaskKind.SEGMENTATION,
            instruction="Segment instances with different colors.",
            image=_image(rng),
            target_image=_image(rng),
        ),
        "edge": Sample(
            sample_id="edge",
            source="t",
            task=TaskKind.EDGE,
            instruction="Draw the edges of the image.",
            image=_image(rng, 48, 32),
            target_image=_image(rng, 48, 32),
        ),
        "depth": Sample(
            sample_id="depth",
            source="t",
            task=TaskKind.DEPTH,
            instruction="Predict the depth map.",
            image=_image(rng),
            target_image=_image(rng),
        ),
        "recon": Sample(
            sample_id="recon",
            source="t",
            task=TaskKind.RECONSTRUCTION,
            instruction="Reconstruct the image.",
            image=_image(rng),
            target_image=_image(rng),
        ),
        "t2i": Sample(
            sample_id="t2i",
            source="t",
            task=TaskKind.TEXT_TO_IMAGE,
            instruction="Generate an image of a blue sphere.",
            target_image=_image(rng, 32, 48),
        ),
    }


def _alone_and_packed(
    model: BagelAdapter, samples: Sequence[Sample], seeds: Sequence[int]
) -> tuple[dict[str, float], dict[str, float]]:
    expected: dict[str, float] = {}
    for part in ("ce", "mse"):
        num = den = 0.0
        for sample, seed in zip(samples, seeds, strict=True):
            out = model.loss(model.collate([sample], noise_seeds=[seed]))
            n = out.token_counts[part]
            num += float(out.parts[part].detach()) * n
            den += n
        expected[part] = num / den if den else 0.0
    packed = model.loss(model.collate(samples, noise_seeds=seeds))
    got = {part: float(packed.parts[part].detach()) for part in ("ce", "mse")}
    return expected, got


MIXES = {
    "understanding": ["und", "und_text"],
    "segmentation": ["seg", "seg"],
    "proxy_tasks": ["edge", "depth", "recon"],
    "text_to_image": ["t2i", "t2i"],
    "everything": ["und", "seg", "und_text", "t2i", "edge", "depth", "recon"],
}


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_packed_loss_is_the_token_weighted_mix_of_single_sample_losses(
    model: BagelAdapter, mix: str
) -> None:
    table = _samples()
    samples = [table[k] for k in MIXES[mix]]
    seeds = [100 + i for i in range(len(samples))]
    model.train()  # condition dropout on, drawn per sample from its seed
    expected, got = _alone_and_packed(model, samples, seeds)
    for part in ("ce", "mse"):
        assert got[part] == pytest.approx(expected[part], rel=1e-5, abs=1e-7), part


def test_editing_layout_packs_exactly_too(edit_model: BagelAdapter) -> None:
    table = _samples(1)
    samples = [table["seg"], table["und"], table["edge"], table["t2i"]]
    batch = edit_model.collate(samples)
    assert len(batch.vae_images) == 2 * 2 + 1  # a clean reference + a target per proxy sample
    expected, got = _alone_and_packed(edit_model, samples, [7, 8, 9, 10])
    for part in ("ce", "mse"):
        assert got[part] == pytest.approx(expected[part], rel=1e-5, abs=1e-7), part


def test_perturbing_one_target_changes_no_other_samples_loss(model: BagelAdapter) -> None:
    table = _samples(2)
    samples = [table["und"], table["seg"], table["t2i"], table["edge"]]
    seeds = [1, 2, 3, 4]
    model.eval()

    def figures(batch_samples: list[Sample]) -> dict[tuple[str, str], float]:
        out = model.loss(model.collate(batch_samples, noise_seeds=seeds)).per_task
        return {(t, p): float(v) for t, d in out.items() for p, v in d.items() if p != "samples"}

    before = figures(samples)
    seg = table["seg"]
    assert seg.target_image is not None
    changed = seg.model_copy(update={"target_image": 255 - seg.target_image})
    after = figures([samples[0], changed, *samples[2:]])
    model.train()
    assert after["segmentation", "mse"] != before["segmentation", "mse"]
    for key in (("understanding", "ce"), ("text_to_image", "mse"), ("edge", "mse")):
        assert after[key] == pytest.approx(before[key], rel=1e-6), key


def test_a_dropped_instruction_equals_an_absent_one(folder: Path) -> None:
    config = tiny_bagel_config(
        folder, text_cond_dropout=1.0, vit_cond_dropout=0.0, vae_cond_dropout=0.0
    )
    model = BagelAdapter.from_pretrained(folder, config=config).train()
    sample = _samples(3)["seg"]
    plan = model.processor.plan(sample)
    assert [s.kind for s in plan] == ["vit", "text", "vae"]
    dropped = model.loss(model.processor.pack([plan], ["segmentation"], [5]))
    absent = model.loss(model.processor.pack([[plan[0], plan[2]]], ["segmentation"], [5]))
    torch.testing.assert_close(dropped.parts["mse"], absent.parts["mse"], rtol=1e-5, atol=1e-7)
    kept = model.eval().loss(model.processor.pack([plan], ["segmentation"], [5]))
    assert not torch.allclose(kept.parts["mse"], absent.parts["mse"])


def test_sequence_layout_follows_upstream(model: BagelAdapter) -> None:
    sample = _samples()["seg"]
    batch = model.collate([sample])
    tk = model.tokens
    vit = batch.vit_seqlens[0]
    n_text = len(model.processor.encode(sample.instruction)) + 2
    target = batch.vae_latent_hw[0][0] * batch.vae_latent_hw[0][1]
    assert batch.sequence_length == vit + 2 + n_text + target + 2
    # one RoPE position per image; text continues after the image; the target shares one
    expected = [0] * (vit + 2) + list(range(1, 1 + n_text)) + [1 + n_text] * (target + 2)
    assert batch.position_ids.tolist() == expected
    ids = batch.text_ids.tolist()
    assert ids[:2] == [tk.vision_start, tk.vision_end]
    assert ids[2] == tk.bos
    assert ids[1 + n_text] == tk.eos
    assert ids[-2:] == [tk.vision_start, tk.vision_end]
    mask = attention_mask(batch.split_ids, batch.split_full, batch.split_noise)
    text0, target0 = vit + 2, vit + 2 + n_text
    assert mask[: vit + 2, : vit + 2].all()  # ViT split: full
    assert not mask[text0, text0 + 1]  # text: causal
    assert mask[target0:, :target0].all()  # the target sees its conditions
    assert mask[target0:, target0:].all()  # and itself in full
    assert not mask[:target0, target0:].any()
    und = set(batch.und_indexes.tolist())
    assert set(batch.gen_indexes.tolist()) == set(range(target0 + 1, target0 + 1 + target))
    assert und.isdisjoint(batch.gen_indexes.tolist())


def test_understanding_labels_are_shifted_as_upstream(model: BagelAdapter) -> None:
    sample = _samples()["und_text"]
    batch = model.collate([sample])
    answer = model.processor.encode("two")
    history = model.processor.encode("left")
    assert batch.ce_labels.tolist() == [*history, model.tokens.eos, *answer, model.tokens.eos]
    ids = dict(zip(batch.text_indexes.tolist(), batch.text_ids.tolist(), strict=True))
    # the hidden state at a bos predicts the first answer token
    assert [ids[int(i)] for i in batch.ce_indexes][-len(answer) - 1] == model.tokens.bos


def test_estimate_num_tokens_is_exact(model: BagelAdapter, edit_model: BagelAdapter) -> None:
    for adapter in (model, edit_model):
        for sample in _samples().values():
            batch = adapter.collate([sample])
            assert adapter.estimate_num_tokens(sample) == batch.sequence_length


def test_answer_with_the_kv_cache_equals_answer_without(model: BagelAdapter) -> None:
    table = _samples(4)
    images = [s.image for s in (table["seg"], table["und"], table["edge"]) if s.image is not None]
    questions = ["What is in the image?", "Where?", "How many objects are there?"]
    cached = model.answer(images, questions, max_new_tokens=8)
    uncached = model.answer(images, questions, max_new_tokens=8, use_cache=False)
    assert cached == uncached
    assert all(len(model.processor.encode(a)) > 0 for a in cached)


def test_packing_errors_are_clear(folder: Path, model: BagelAdapter) -> None:
    with pytest.raises(ValueError, match="empty"):
        model.collate([])
    small = BagelAdapter.from_pretrained(
        folder, config=tiny_bagel_config(folder, max_num_tokens=40)
    )
    with pytest.raises(ValueError, match="max_num_tokens=40"):
        small.collate(list(_samples().values()))
    with pytest.raises(ValueError, match="2 noise seeds for 1 samples"):
        model.collate([_samples()["seg"]], noise_seeds=[1, 2])
    tight = BagelAdapter.from_pretrained(
        folder, config=tiny_bagel_config(folder, max_latent_size=1)
    )
    with pytest.raises(ValueError, match="max_latent_size=1"):
        tight.collate([_samples()["t2i"]])


@contextmanager
def _no_host_reads() -> Iterator[None]:
    """Make every device-to-host read of a tensor value raise."""
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def forbid(name: str) -> Any:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"host read Tensor.{name} during the forward")

        return method

    try:
        for name in names:
            setattr(torch.Tensor, name, forbid(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def test_the_loss_never_reads_a_tensor_back_to_the_host(model: BagelAdapter) -> None:
    table = _samples()
    batch = model.collate([table["und"], table["seg"], table["t2i"]])
    model.train()
    with _no_host_reads():
        out = model.loss(batch)
        out.total.backward()  # type: ignore[no-untyped-call]
    assert set(out.per_task) == {"understanding", "segmentation", "text_to_image"}


def test_batch_fields_are_cpu_side_until_moved(model: BagelAdapter) -> None:
    batch = model.collate(list(_samples().values()))
    moved = batch.to("cpu", torch.float64)
    assert all(t.dtype == torch.float64 for t in moved.vae_images)
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        assert not (isinstance(value, torch.Tensor) and value.device.type != "cpu")
