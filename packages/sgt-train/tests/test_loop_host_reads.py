"""The loop reads step metrics back to the host only at logging steps (no per-step wait)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sgt_train import validate_run_config
from sgt_train.loop import Hooks, StepMetrics, fit
from sgt_train_toy import ToyAdapter, ToySource
from toy_worker import make_config


class _CountingAdapter(ToyAdapter):
    """Counts forwards; reading a loss value back to the host is recorded too."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards = 0

    def forward(self, batch: Any, weights: Any = None) -> Any:
        self.forwards += 1
        return super().forward(batch, weights)


def test_metrics_of_a_logging_window_are_read_together(tmp_path: Path) -> None:
    config = validate_run_config(
        {
            **make_config(str(tmp_path), 0, steps=7, every=100),
            "logging": {"every": 3, "tensorboard": False, "progress_bar": False},
        }
    )
    model = _CountingAdapter()
    seen: list[tuple[int, int]] = []

    def on_step(metrics: StepMetrics) -> None:
        seen.append((metrics.step, model.forwards))

    result = fit(
        config,
        build_model=lambda _: model,
        source=ToySource(config.data, config.micro_batch_size),
        hooks=Hooks(on_step=[on_step]),
    )
    per_step = config.gradient_accumulation
    # steps 1-3 are reported after step 3's forwards, 4-6 after step 6's, 7 at the end
    assert seen == [
        (1, 3 * per_step),
        (2, 3 * per_step),
        (3, 3 * per_step),
        (4, 6 * per_step),
        (5, 6 * per_step),
        (6, 6 * per_step),
        (7, 7 * per_step),
    ]
    assert len(result.losses) == 7
    rows = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [3, 6, 7]
    assert [r["loss"] for r in rows] == [result.losses[2], result.losses[5], result.losses[6]]
    assert all(isinstance(r["grad_norm"], float) for r in rows)
    assert torch.isfinite(torch.tensor(result.losses)).all()
