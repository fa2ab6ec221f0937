"""OmniGen2's flow-matching time schedule: ``t = 0`` is noise, ``t = 1`` is data.

Training draws ``t = sigmoid(N(0, 1))`` and applies the resolution-dependent shift of upstream's
``Transport`` ("v1"): ``mu`` linear in the number of latent *tokens* (patches), 0.5 at 256 and 1.15
at 4096, ``t <- 1 - e^mu / (e^mu + 1/(1 - t) - 1)``, i.e. the static shift ``s = e^mu`` of the
noise level (``sgt_models.flow``). Inference (upstream's ``FlowMatchEulerDiscreteScheduler`` with
``dynamic_time_shift``) uses ``m = sqrt(latent height * latent width) / 40`` as the static shift
of ``linspace(0, 1, n + 1)``, and Euler steps ``x <- x + (t_next - t) v``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sgt_models.config import FlowMatchingConfig
from sgt_models.flow import resolution_shift

__all__ = ["OmniGen2Scheduler", "inference_shift", "sample_training_times"]

SCHEDULER_CONFIG_FILE = "scheduler_config.json"


def sample_training_times(
    token_counts: Sequence[int],
    flow: FlowMatchingConfig,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training times (``t = 1`` data) of samples with the given latent token counts.

    ``t = sigmoid(mean + std z)`` shifted per sample: by ``resolution_shift(tokens)`` with
    ``flow.dynamic_shift`` (OmniGen2's default), else by ``flow.shift``.
    """
    z = torch.randn(len(token_counts), generator=generator, dtype=torch.float32)
    t = torch.sigmoid(flow.logit_normal_mean + flow.logit_normal_std * z)
    if flow.dynamic_shift:
        shifts = [
            resolution_shift(
                n,
                base_seq_len=flow.base_seq_len,
                max_seq_len=flow.max_seq_len,
                base_shift=flow.base_shift,
                max_shift=flow.max_shift,
            )
            for n in token_counts
        ]
    else:
        shifts = [flow.shift] * len(token_counts)
    s = torch.tensor(shifts, dtype=torch.float32)
    sigma = 1.0 - t
    sigma = s * sigma / (1.0 + (s - 1.0) * sigma)
    return (1.0 - sigma).to(device)


def inference_shift(latent_height: int, latent_width: int) -> float:
    """Upstream's inference shift ``sqrt(h * w) / 40`` (1 at 320x320 pixels, 3.2 at 1024x1024)."""
    return math.sqrt(latent_height * latent_width) / 40.0


class OmniGen2Scheduler:
    """Euler sampler over OmniGen2's shifted time grid (reads ``scheduler_config.json``)."""

    def __init__(self, num_train_timesteps: int = 1000, dynamic_time_shift: bool = True) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.dynamic_time_shift = dynamic_time_shift
        self.timesteps = torch.zeros(0)

    @classmethod
    def from_folder(cls, folder: str | Path) -> OmniGen2Scheduler:
        """The scheduler of a pipeline's ``scheduler/`` folder."""
        from sgt_models.omnigen2.configuration import OmniGen2CheckpointError

        file = Path(folder) / SCHEDULER_CONFIG_FILE
        try:
            raw: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OmniGen2CheckpointError(f"{file} is missing") from None
        except (OSError, ValueError) as exc:
            raise OmniGen2CheckpointError(f"{file}: not a scheduler config ({exc})") from None
        return cls(
            num_train_timesteps=int(raw.get("num_train_timesteps", 1000)),
            dynamic_time_shift=bool(raw.get("dynamic_time_shift", True)),
        )

    def config_dict(self) -> dict[str, Any]:
        """What ``scheduler_config.json`` holds (upstream's class name and fields)."""
        return {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "_diffusers_version": "0.33.1",
            "dynamic_time_shift": self.dynamic_time_shift,
            "num_train_timesteps": self.num_train_timesteps,
        }

    def set_timesteps(
        self, num_steps: int, num_tokens: int | None = None, shift: float | None = None
    ) -> torch.Tensor:
        """``num_steps + 1`` times from 0 (noise) to 1 (data); ``shift`` overrides the dynamic one.

        ``num_tokens`` is the latent height times width (before patching), as upstream passes it.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)[:-1]
        m = shift
        if m is None and self.dynamic_time_shift and num_tokens is not None:
            m = math.sqrt(num_tokens) / 40.0
        if m is not None:
            t = t / (m - m * t + t)
        self.timesteps = torch.cat([t, torch.ones(1, dtype=torch.float64)]).to(torch.float32)
        return self.timesteps

    def step(self, velocity: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """One Euler step from ``timesteps[index]`` to ``timesteps[index + 1]``."""
        dt = float(self.timesteps[index + 1] - self.timesteps[index])
        return (sample.float() + dt * velocity.float()).to(velocity.dtype)
