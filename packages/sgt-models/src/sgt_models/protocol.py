"""The adapter protocol: what every model family offers the trainer and the evaluator.

An adapter is a ``torch.nn.Module`` (so DeepSpeed can wrap it) whose ``forward(batch)`` is its
training loss. Per-step batches are plain dataclasses owned by each adapter, not pydantic models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np
    import torch
    from numpy.typing import NDArray

    from sgt_data import Sample
    from sgt_models.config import AdapterConfig

__all__ = [
    "PARAMETER_GROUPS",
    "GenerationSettings",
    "LossOutput",
    "LossWeights",
    "ModelBatch",
    "UnifiedModelAdapter",
]

#: Names of parameter groups an adapter exposes (a family may leave some empty).
PARAMETER_GROUPS: tuple[str, ...] = ("vision_encoder", "connector", "llm", "generator", "vae")


class LossWeights(BaseModel):
    """Weights of the named loss parts in the total (the BAGEL SGT recipe uses ce 1.5, mse 1.0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ce: float = Field(default=1.0, ge=0)
    mse: float = Field(default=1.0, ge=0)


class GenerationSettings(BaseModel):
    """Sampling settings of ``generate``; ``None`` fields take the adapter's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int | None = Field(default=None, ge=8)
    width: int | None = Field(default=None, ge=8)
    num_steps: int | None = Field(default=None, ge=1)
    cfg_text_scale: float | None = Field(default=None, ge=0)
    cfg_image_scale: float | None = Field(default=None, ge=0)
    shift: float | None = Field(default=None, gt=0)
    seed: int = 0


@dataclass
class LossOutput:
    """A loss and its parts.

    ``parts`` holds the unweighted named losses (``ce``: cross-entropy over answer tokens,
    ``mse``: flow-matching velocity error); ``token_counts`` the number of tokens (text tokens,
    latent tokens) each was normalised by, so that accumulation across ranks can re-weight them.
    ``per_task`` breaks the parts down by task kind for logging: floats, or detached tensors
    left on the device (the trainer reads them back only when it logs, so that a training step
    never waits for the device).
    """

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    token_counts: dict[str, int]
    per_task: Mapping[str, Mapping[str, float | torch.Tensor]] = field(default_factory=dict)


@runtime_checkable
class ModelBatch(Protocol):
    """What the trainer needs to know of an adapter's batch."""

    @property
    def num_samples(self) -> int: ...

    @property
    def tasks(self) -> Sequence[str]: ...

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Self: ...


@runtime_checkable
class UnifiedModelAdapter(Protocol):
    """A unified understanding + generation model, seen through SGT's eyes.

    Implementations subclass ``torch.nn.Module``; ``forward(batch, weights)`` equals ``loss``.

    So that DeepSpeed ZeRO-3 can train it (it gathers a submodule's parameters only around that
    submodule's forward and backward, and leaves them at size 0 elsewhere), an adapter reads
    each parameter only inside the forward of the module that owns it (no ``.weight`` reads,
    no parameters held by the adapter module itself), and gives every trainable parameter a
    gradient in every ``loss`` call, zeros on a path the batch does not take (run the idle
    path's modules on a minimal constant input and add their output times 0), so that every
    rank reduces the same gradients.
    """

    kind: ClassVar[str]
    config: AdapterConfig

    def collate(self, samples: Sequence[Sample]) -> ModelBatch:
        """Turn model-agnostic samples into this model's batch (tokenise, resize, pad or pack)."""
        ...

    def loss(self, batch: Any, weights: LossWeights = ...) -> LossOutput:
        """Training loss of a batch: weighted total plus unweighted named parts."""
        ...

    def answer(
        self,
        images: Sequence[NDArray[np.uint8]],
        questions: Sequence[str],
        max_new_tokens: int = ...,
    ) -> list[str]:
        """Greedy answers to one question per image."""
        ...

    def generate(
        self,
        instructions: Sequence[str],
        images: Sequence[NDArray[np.uint8]] | None = None,
        settings: GenerationSettings = ...,
    ) -> list[NDArray[np.uint8]]:
        """Draw one RGB image (HxWx3 uint8) per instruction, optionally conditioned on an image."""
        ...

    def parameter_groups(self) -> Mapping[str, list[torch.nn.Parameter]]:
        """Parameters by group name (see ``PARAMETER_GROUPS``)."""
        ...

    def apply_freeze_policy(self) -> None:
        """Set ``requires_grad`` from ``config.freeze``; the VAE is always frozen."""
        ...

    def save_pretrained(self, path: str | Path) -> None:
        """Write the weights, tokenizer and config to a folder that ``load_adapter`` reads: the
        family's own layout, with the adapter config (``kind``) in ``config.json`` or, where the
        official layout has a ``config.json`` of its own, in ``sgt_adapter.json``."""
        ...

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Self:
        """Load what ``save_pretrained`` wrote."""
        ...
