"""Learning-rate schedules: linear warm-up, then constant or cosine decay to ``min_lr``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sgt_train.config import ScheduleConfig

if TYPE_CHECKING:
    import torch

__all__ = ["LRMultiplier", "lr_at", "make_scheduler"]


def lr_at(step: int, base_lr: float, schedule: ScheduleConfig, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a ``total_steps`` run."""
    warmup = schedule.warmup_steps
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule.kind == "constant":
        return base_lr
    span = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    floor = min(schedule.min_lr, base_lr)
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRMultiplier:
    """``step -> lr(step) / base_lr``, picklable (a ``LambdaLR`` keeps it in its state dict)."""

    def __init__(self, base_lr: float, schedule: ScheduleConfig, total_steps: int) -> None:
        self.base_lr = base_lr
        self.schedule = schedule
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return lr_at(step, self.base_lr, self.schedule, self.total_steps) / self.base_lr


def make_scheduler(
    optimizer: torch.optim.Optimizer, base_lr: float, schedule: ScheduleConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_at`; it steps once per optimizer step."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, LRMultiplier(base_lr, schedule, total_steps)
    )
