"""Dense pretraining of the reference model's understanding encoder (its stand-in for SigLIP's).

BAGEL and OmniGen2 start post-training from a vision encoder that already sees (SigLIP, Qwen2.5-VL's
ViT). The reference model's encoder starts random, and on the scene world neither VQA nor a
generative proxy teaches it to see within a CPU budget (docs/dev/sgt-mini-findings.md, findings
10-12). This module gives it a pretrained encoder the same way, before any post-training:

* **target**: for every image token, the soft class histogram of the label map's pixels under that
  token's patch (``dense_class_targets``; class 0 is usually the background);
* **model**: the vision encoder and the connector (whose output is what the LM reads), plus a
  temporary linear head per token that is discarded afterwards; the LM, the generator and the
  prompt FiLM are untouched;
* **loss**: cross-entropy between the head's per-token softmax and the histogram.

``pretrain_vision_encoder`` trains in place and returns the training curve and, when held-out label
maps are given, the per-class *presence AUC* of the head (the max over tokens of a class's
probability, scored against whether the class occurs in the image; chance 50) measured before the
head is dropped. Save the model with ``save_pretrained`` and start post-training from it
(``init_from``). A model pretrained this way has seen dense class labels: say so wherever its
results are reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional

from sgt_models.reference.processor import images_to_tensor

if TYPE_CHECKING:
    from sgt_models.reference.modeling import ReferenceAdapter

__all__ = [
    "VisionPretrainConfig",
    "VisionPretrainResult",
    "dense_class_targets",
    "presence_auc",
    "pretrain_vision_encoder",
]


class VisionPretrainConfig(BaseModel):
    """Settings of ``pretrain_vision_encoder`` (AdamW at a constant learning rate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(ge=1, description="optimizer steps")
    lr: float = Field(default=2e-3, gt=0, description="AdamW learning rate (constant)")
    weight_decay: float = Field(default=0.01, ge=0)
    batch_size: int = Field(default=32, ge=1)
    seed: int = Field(default=0, ge=0, description="batch order and the temporary head's init")
    eval_batch_size: int = Field(default=64, ge=1)


@dataclass
class VisionPretrainResult:
    """What ``pretrain_vision_encoder`` did: the loss per step and the held-out presence AUC."""

    steps: int
    losses: list[float]
    seconds: float
    #: class index -> presence AUC in percent on the held-out maps (classes that occur in some but
    #: not all held-out images); empty without held-out maps
    presence_auc: dict[int, float] = field(default_factory=dict)

    @property
    def mean_presence_auc(self) -> float:
        """Mean of ``presence_auc`` over its classes (NaN when there is none)."""
        values = list(self.presence_auc.values())
        return float(np.mean(values)) if values else float("nan")


def dense_class_targets(labels: torch.Tensor, num_classes: int, grid: int) -> torch.Tensor:
    """``(B, H, W)`` integer class maps -> ``(B, grid * grid, num_classes)`` per-token histograms.

    Token ``r * grid + c`` (row-major, as the encoder's patch order) holds the fraction of each
    class among the pixels of patch ``(r, c)``; H and W must be multiples of ``grid``.
    """
    if labels.ndim != 3:
        raise ValueError(f"label maps must be (B, H, W), got shape {tuple(labels.shape)}")
    height, width = labels.shape[1:]
    if height % grid or width % grid:
        raise ValueError(f"label maps of {height}x{width} do not split into a {grid}x{grid} grid")
    onehot = functional.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()
    pooled = functional.avg_pool2d(onehot, (height // grid, width // grid))
    return pooled.flatten(2).transpose(1, 2)


def presence_auc(scores: NDArray[np.floating], present: NDArray[np.bool_]) -> float:
    """Area under the ROC curve in percent (ties count one half): the probability that an image
    holding the class scores above one without it. NaN when either group is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    n_pos, n_neg = int(present.sum()), int((~present).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first element
    ranks = (starts + (counts + 1) / 2.0)[inverse]  # average 1-based ranks
    u = ranks[present].sum() - n_pos * (n_pos + 1) / 2.0
    return float(100.0 * u / (n_pos * n_neg))


class _DenseHead(torch.nn.Module):
    def __init__(self, model: ReferenceAdapter, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.head = torch.nn.Linear(model.arch.lm_hidden, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model.vision_encoder(pixel_values=pixels).last_hidden_state
        logits: torch.Tensor = self.head(self.model.connector(features))
        return logits  # (B, tokens, classes)


def _check_inputs(
    images: NDArray[np.uint8], labels: NDArray[np.integer], num_classes: int, size: int, what: str
) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what} images must be (N, H, W, 3) uint8, got shape {images.shape}")
    if labels.shape != images.shape[:3]:
        raise ValueError(
            f"{what} label maps have shape {labels.shape}, the images {images.shape[:3]}"
        )
    if images.shape[1:3] != (size, size):
        raise ValueError(
            f"{what} images are {images.shape[1]}x{images.shape[2]}, the model's image_size is "
            f"{size}x{size}"
        )
    if len(images) == 0:
        raise ValueError(f"no {what} images")
    bad = np.flatnonzero(((labels < 0) | (labels >= num_classes)).reshape(len(labels), -1).any(1))
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{what} label map {i} holds class {int(labels[i].max())} (or a negative one); "
            f"classes must lie in [0, {num_classes})"
        )


@torch.no_grad()
def _held_out_auc(
    net: _DenseHead,
    images: NDArray[np.uint8],
    labels: NDArray[np.integer],
    num_classes: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[int, float]:
    size = net.model.config.image_size
    best = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start : start + batch_size])
        pixels = images_to_tensor(chunk, (size, size)).to(device=device, dtype=dtype)
        best.append(functional.softmax(net(pixels).float(), dim=-1).amax(dim=1).cpu().numpy())
    scores = np.concatenate(best)
    flat = labels.reshape(len(labels), -1)
    out = {}
    for k in range(num_classes):
        auc = presence_auc(scores[:, k], (flat == k).any(axis=1))
        if not np.isnan(auc):
            out[k] = round(auc, 2)
    return out


def pretrain_vision_encoder(
    model: ReferenceAdapter,
    images: NDArray[np.uint8],
    labels: NDArray[np.integer],
    num_classes: int,
    config: VisionPretrainConfig,
    *,
    eval_images: NDArray[np.uint8] | None = None,
    eval_labels: NDArray[np.integer] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> VisionPretrainResult:
    """Train ``model``'s vision encoder and connector in place on dense class labels.

    ``images``: ``(N, S, S, 3)`` uint8 at the model's ``image_size`` S; ``labels``: ``(N, S, S)``
    class ids in ``[0, num_classes)``. Each step draws ``batch_size`` images with replacement
    (``numpy`` generator seeded by ``config.seed``). Only the vision encoder and the connector
    change (trained even where the model's freeze policy freezes them; their ``requires_grad``
    flags are restored afterwards); the temporary head is discarded. ``progress(step, loss)`` is
    called after every step. Deterministic for a given model state, data and config on one device.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    size = model.config.image_size
    _check_inputs(images, labels, num_classes, size, "training")
    if (eval_images is None) != (eval_labels is None):
        raise ValueError("give both eval_images and eval_labels, or neither")
    if eval_images is not None and eval_labels is not None:
        _check_inputs(eval_images, eval_labels, num_classes, size, "held-out")
    device, dtype = model._device, model._dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = _DenseHead(model, num_classes)
    net.head.to(device=device, dtype=dtype)
    trained: Sequence[torch.nn.Module] = (model.vision_encoder, model.connector)
    params = [p for m in trained for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    modes = [m.training for m in trained]
    for p in params:
        p.requires_grad_(True)
    for m in trained:
        m.train()
    optimizer = torch.optim.AdamW(
        [*params, *net.head.parameters()], lr=config.lr, weight_decay=config.weight_decay
    )
    rng = np.random.default_rng(config.seed)
    grid = model.token_grid
    losses: list[float] = []
    t0 = time.perf_counter()
    try:
        for step in range(config.steps):
            pick = rng.integers(len(images), size=config.batch_size)
            pixels = images_to_tensor(list(images[pick]), (size, size)).to(device, dtype)
            target = dense_class_targets(
                torch.from_numpy(labels[pick].astype(np.int64)), num_classes, grid
            ).to(device)
            logits = net(pixels).float()
            loss = -(target * functional.log_softmax(logits, dim=-1)).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            value = float(loss.detach())
            losses.append(value)
            if progress is not None:
                progress(step + 1, value)
        auc: dict[int, float] = {}
        if eval_images is not None and eval_labels is not None:
            for m in trained:
                m.eval()
            auc = _held_out_auc(
                net, eval_images, eval_labels, num_classes, config.eval_batch_size, device, dtype
            )
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        for m, mode in zip(trained, modes, strict=True):
            m.train(mode)
    return VisionPretrainResult(config.steps, losses, time.perf_counter() - t0, auc)
