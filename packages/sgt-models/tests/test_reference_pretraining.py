"""Dense vision pretraining of the reference model (``sgt_models.reference.pretraining``): the
targets and the AUC against direct computations, what it trains and leaves alone, that it learns,
determinism, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from sgt_models import ReferenceAdapterConfig
from sgt_models.reference import (
    ReferenceAdapter,
    VisionPretrainConfig,
    dense_class_targets,
    presence_auc,
    pretrain_vision_encoder,
)

SIZE = 32  # tiny preset, 4x4 patches of 8 px


def _model(**fields: object) -> ReferenceAdapter:
    torch.manual_seed(0)
    return ReferenceAdapter(ReferenceAdapterConfig(size="tiny", image_size=SIZE, **fields))


def _squares(count: int, seed: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Black images with one red (class 1) or blue (class 2) square of 8-16 px; the label maps."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, SIZE, SIZE, 3), np.uint8)
    labels = np.zeros((count, SIZE, SIZE), np.uint8)
    for i in range(count):
        side = int(rng.integers(8, 17))
        y, x = rng.integers(0, SIZE - side + 1, size=2)
        cls = 1 + int(rng.integers(2))
        images[i, y : y + side, x : x + side] = (220, 30, 30) if cls == 1 else (30, 30, 220)
        labels[i, y : y + side, x : x + side] = cls
    return images, labels


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    grid=st.sampled_from([1, 2, 4]),
    patch=st.integers(1, 4),
    classes=st.integers(2, 5),
    seed=st.integers(0, 2**16),
)
def test_targets_are_per_patch_class_fractions(
    batch: int, grid: int, patch: int, classes: int, seed: int
) -> None:
    size = grid * patch
    labels = np.random.default_rng(seed).integers(0, classes, size=(batch, size, size))
    got = dense_class_targets(torch.from_numpy(labels), classes, grid).numpy()
    assert got.shape == (batch, grid * grid, classes)
    for b in range(batch):
        for r in range(grid):
            for c in range(grid):
                cell = labels[b, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
                want = np.bincount(cell.ravel(), minlength=classes) / cell.size
                np.testing.assert_allclose(got[b, r * grid + c], want, rtol=0, atol=1e-6)


def test_targets_reject_maps_off_the_grid() -> None:
    with pytest.raises(ValueError, match="do not split into a 4x4 grid"):
        dense_class_targets(torch.zeros(1, 30, 32, dtype=torch.long), 3, 4)
    with pytest.raises(ValueError, match=r"must be \(B, H, W\)"):
        dense_class_targets(torch.zeros(32, 32, dtype=torch.long), 3, 4)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    flags=st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_presence_auc_is_the_pairwise_win_rate(scores: list[int], flags: list[bool]) -> None:
    s = np.array(scores, float) / 3.0  # ties on purpose
    p = np.array(flags[: len(scores)])
    got = presence_auc(s, p)
    if p.all() or not p.any():
        assert np.isnan(got)
        return
    pos, neg = s[p][:, None], s[~p][None, :]
    want = 100 * ((pos > neg).mean() + 0.5 * (pos == neg).mean())
    assert got == pytest.approx(want, abs=1e-9)


def test_pretraining_learns_and_touches_only_the_vision_side() -> None:
    model = _model(question_film=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = _squares(256, seed=0)
    eval_images, eval_labels = _squares(64, seed=1)
    seen: list[int] = []
    result = pretrain_vision_encoder(
        model, images, labels, 3, VisionPretrainConfig(steps=60, batch_size=16, lr=2e-3),
        eval_images=eval_images, eval_labels=eval_labels,
        progress=lambda step, loss: seen.append(step),
    )  # fmt: skip
    assert seen == list(range(1, 61))
    assert len(result.losses) == 60
    assert np.mean(result.losses[-10:]) < 0.6 * result.losses[0]
    # red vs blue squares: each class's presence is read off the tokens (background always present)
    assert set(result.presence_auc) == {1, 2}
    assert min(result.presence_auc.values()) > 90, result.presence_auc
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    vision = {k for k in after if k.startswith(("vision_encoder.", "connector."))}
    assert changed
    assert changed <= vision
    assert len(changed) > 0.5 * len(vision)
    assert model.training  # modes restored


def test_pretraining_trains_a_frozen_encoder_and_restores_its_flags() -> None:
    model = _model(freeze={"vision_encoder": True})
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())
    before = model.vision_encoder.embeddings.patch_embedding.weight.clone()
    model.eval()
    images, labels = _squares(32, seed=0)
    pretrain_vision_encoder(model, images, labels, 3, VisionPretrainConfig(steps=2, batch_size=4))
    assert not torch.equal(model.vision_encoder.embeddings.patch_embedding.weight, before)
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())
    assert all(p.requires_grad for p in model.connector.parameters())
    assert not model.vision_encoder.training
    assert not model.connector.training


def test_pretraining_is_deterministic_per_seed() -> None:
    images, labels = _squares(64, seed=0)
    runs = []
    for seed in (0, 0, 1):
        model = _model()
        config = VisionPretrainConfig(steps=4, batch_size=8, seed=seed)
        result = pretrain_vision_encoder(model, images, labels, 3, config)
        runs.append((result.losses, model.connector.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert runs[0][0] != runs[2][0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("label", r"training label map 3 holds class 7 \(or a negative one\); classes must lie "
         r"in \[0, 3\)"),
        ("shape", r"training label maps have shape \(8, 32, 16\), the images \(8, 32, 32\)"),
        ("size", r"training images are 16x16, the model's image_size is 32x32"),
        ("eval", "give both eval_images and eval_labels, or neither"),
        ("classes", "num_classes must be at least 2, got 1"),
        ("empty", "no training images"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error(change: str, message: str) -> None:
    model = _model()
    images, labels = _squares(8, seed=0)
    classes, kwargs = 3, {}
    if change == "label":
        labels[3, 0, 0] = 7
    elif change == "shape":
        labels = labels[:, :, :16]
    elif change == "size":
        images, labels = images[:, :16, :16], labels[:, :16, :16]
    elif change == "eval":
        kwargs = {"eval_images": images}
    elif change == "classes":
        classes = 1
    elif change == "empty":
        images, labels = images[:0], labels[:0]
    before = model.connector[1].weight.clone()
    with pytest.raises(ValueError, match=message):
        pretrain_vision_encoder(
            model, images, labels, classes, VisionPretrainConfig(steps=1), **kwargs
        )
    assert torch.equal(model.connector[1].weight, before)  # nothing trained
