"""A small adapter implementing the UnifiedModelAdapter protocol and a resumable sample source.

The trainer is tested against the protocol with these; they run in milliseconds on a CPU.
The adapter has a CE part (answer tokens from an image) and a flow-matching MSE part (draw a
target image from an image), and its noise comes from the global torch RNG like a real adapter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import nn

from sgt_data import MixtureConfig, Sample, TaskKind
from sgt_models import LossOutput, LossWeights, ReferenceAdapterConfig

SIDE = 6
PIX = SIDE * SIDE * 3
VOCAB = 16
ANSWER_LEN = 4


@dataclass
class ToyBatch:
    images: torch.Tensor
    targets: torch.Tensor | None
    answers: torch.Tensor | None
    tasks: list[str]

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ToyBatch:
        def move(t: torch.Tensor | None, floating: bool) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if floating and dtype is not None else t.dtype)

        return ToyBatch(
            move(self.images, True), move(self.targets, True), move(self.answers, False), self.tasks
        )  # type: ignore[arg-type]


class ToyAdapter(nn.Module):
    kind: ClassVar[str] = "reference"

    def __init__(self, config: ReferenceAdapterConfig | None = None, width: int = 32) -> None:
        super().__init__()
        self.config = config or ReferenceAdapterConfig(size="tiny")
        self.width = width
        self.vision = nn.Linear(PIX, width)
        self.llm = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.lm_head = nn.Linear(width, VOCAB * ANSWER_LEN)
        self.generator = nn.Sequential(
            nn.Linear(PIX + width + 1, width), nn.GELU(), nn.Linear(width, PIX)
        )

    def collate(self, samples: Sequence[Sample]) -> ToyBatch:
        images = (
            torch.from_numpy(np.stack([s.image for s in samples]))
            .float()
            .div(255)
            .reshape(len(samples), -1)
        )
        targets = answers = None
        if all(s.target_image is not None for s in samples):
            targets = (
                torch.from_numpy(np.stack([s.target_image for s in samples]))
                .float()
                .div(255)
                .reshape(len(samples), -1)
            )
        if all(s.answer is not None for s in samples):
            answers = torch.tensor(
                [
                    [ord(c) % VOCAB for c in (s.answer or "")[:ANSWER_LEN].ljust(ANSWER_LEN)]
                    for s in samples
                ]
            )
        return ToyBatch(images, targets, answers, [s.task.value for s in samples])

    def forward(self, batch: ToyBatch, weights: LossWeights = LossWeights()) -> LossOutput:  # noqa: B008
        return self.loss(batch, weights)

    def loss(self, batch: ToyBatch, weights: LossWeights = LossWeights()) -> LossOutput:  # noqa: B008
        h = self.llm(self.vision(batch.images))
        parts: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        if batch.answers is not None:
            logits = self.lm_head(h).reshape(-1, VOCAB)
            parts["ce"] = nn.functional.cross_entropy(logits.float(), batch.answers.reshape(-1))
            counts["ce"] = batch.answers.numel()
        if batch.targets is not None:
            x0 = batch.targets
            noise = torch.randn(x0.shape, dtype=torch.float32).to(x0)
            t = torch.sigmoid(torch.randn(x0.shape[0], 1, dtype=torch.float32)).to(x0)
            xt = (1 - t) * x0 + t * noise
            v = self.generator(torch.cat([xt, h, t], dim=1))
            parts["mse"] = nn.functional.mse_loss(v.float(), (noise - x0).float())
            counts["mse"] = x0.numel()
        total = sum((getattr(weights, k) * v for k, v in parts.items()), torch.zeros(()))
        per_task: dict[str, dict[str, float]] = {}
        if len(set(batch.tasks)) == 1:
            per_task[batch.tasks[0]] = {k: float(v.detach()) for k, v in parts.items()}
        return LossOutput(total=total, parts=parts, token_counts=counts, per_task=per_task)

    def parameter_groups(self) -> Mapping[str, list[nn.Parameter]]:
        return {
            "vision_encoder": list(self.vision.parameters()),
            "connector": [],
            "llm": [*self.llm.parameters(), *self.lm_head.parameters()],
            "generator": list(self.generator.parameters()),
            "vae": [],
        }

    def apply_freeze_policy(self) -> None:
        freeze = self.config.freeze
        for name, params in self.parameter_groups().items():
            flag = getattr(freeze, name, False)
            for p in params:
                p.requires_grad_(not flag)

    def save_pretrained(self, path: str | Path) -> None:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(
            json.dumps({"adapter": self.config.model_dump(mode="json"), "width": self.width})
        )
        torch.save(self.state_dict(), folder / "model.pt")

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Self:
        folder = Path(path)
        meta = json.loads((folder / "config.json").read_text())
        model = cls(ReferenceAdapterConfig.model_validate(meta["adapter"]), width=meta["width"])
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu"))
        return model.to(device=device, dtype=dtype)


def toy_sample(index: int, task: TaskKind, seed: int = 0) -> Sample:
    rng = np.random.default_rng([seed, index])
    image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    if task is TaskKind.UNDERSTANDING:
        answer = "".join("abcdefgh"[int(v) % 8] for v in image[0, :ANSWER_LEN, 0])
        return Sample(
            sample_id=f"toy:{index}",
            source="toy",
            task=task,
            instruction="what?",
            image=image,
            answer=answer,
        )
    target = (255 - image) // 2
    return Sample(
        sample_id=f"toy:{index}",
        source="toy",
        task=task,
        instruction="segment",
        image=image,
        target_image=target,
    )


class ToySource:
    """Interleaves micro-batches by ``mixture.pattern``; rank r takes every world-th micro-batch."""

    def __init__(
        self,
        mixture: MixtureConfig,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        sample: Callable[[int, TaskKind, int], Sample] = toy_sample,
    ) -> None:
        tasks = {s.name: s.task for s in mixture.sources}
        self.sample = sample  # (index, task, seed) -> Sample
        pattern = mixture.pattern or tuple(s.name for s in mixture.sources)
        self.tasks = [tasks[name] for name in pattern]
        self.mbs = micro_batch_size
        self.rank = rank
        self.world = world_size
        self.seed = mixture.seed
        self.position = 0  # micro-batches this rank has yielded

    def __iter__(self) -> Iterator[list[Sample]]:
        while True:
            global_mb = self.position * self.world + self.rank
            task = self.tasks[self.position % len(self.tasks)]
            first = global_mb * self.mbs
            batch = [self.sample(first + j, task, self.seed) for j in range(self.mbs)]
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.position = int(state["position"])
