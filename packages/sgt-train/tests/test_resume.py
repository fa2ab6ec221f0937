"""A run stopped at step k and resumed reproduces the uninterrupted run bit-identically (CPU fp32
and bf16: losses, weights and EMA of the split run equal the uninterrupted run's exactly)."""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from sgt_data import Sample, TaskKind
from sgt_train import validate_run_config
from sgt_train.loop import FitResult, Hooks, StepMetrics, fit
from sgt_train_toy import ToyAdapter, ToySource, toy_sample
from toy_worker import make_config


def _fit(
    out: Path, stage: int, hooks: Hooks | None = None, precision: str = "fp32"
) -> tuple[FitResult, ToyAdapter]:
    config = validate_run_config(
        {**make_config(str(out), stage, steps=7, every=3), "precision": precision}
    )
    result = fit(
        config, build_model=lambda _: ToyAdapter(), source=ToySource(config.data, 2), hooks=hooks
    )
    assert isinstance(result.model, ToyAdapter)
    return result, result.model


def _sigterm_at(step: int) -> Hooks:
    def on_step(metrics: StepMetrics) -> None:
        if metrics.step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return Hooks(on_step=[on_step])


@pytest.mark.parametrize(
    ("stage", "precision"),
    [
        (0, "fp32"),
        (1, "fp32"),
        (2, "fp32"),
        (3, "fp32"),  # exact only since the loop clears ZeRO-3's stale gradient partitions
        (0, "bf16"),
        (2, "bf16"),
        (3, "bf16"),
    ],
)
def test_resumed_run_reproduces_uninterrupted_losses(
    tmp_path: Path, stage: int, precision: str
) -> None:
    full, full_model = _fit(tmp_path / "full", stage, precision=precision)
    assert full.final_step == 7
    assert len(full.losses) == 7

    # preempted at step 4 (not a checkpoint step): SIGTERM writes a checkpoint there
    first, _ = _fit(tmp_path / "split", stage, _sigterm_at(4), precision)
    assert first.preempted
    assert first.final_step == 4
    assert first.last_checkpoint is not None
    assert first.last_checkpoint.name == "step_00000004"
    resumed, resumed_model = _fit(tmp_path / "split", stage, precision=precision)
    assert resumed.start_step == 4
    assert resumed.final_step == 7

    assert first.losses + resumed.losses == full.losses  # exact float equality
    expected_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for (name, a), b in zip(
        full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert a.dtype == expected_dtype, name
        assert a.numel() > 0, name  # ZeRO-3: the returned model holds whole parameters
        assert torch.equal(a, b), name
    ema_full = torch.load(full.run_dir / "checkpoints/step_00000007/ema.pt", weights_only=False)
    ema_split = torch.load(resumed.run_dir / "checkpoints/step_00000007/ema.pt", weights_only=False)
    for name, value in ema_full["shadow"].items():
        assert torch.equal(value, ema_split["shadow"][name]), name

    # the metrics log of the split run has each step exactly once, with the same losses
    rows = [json.loads(x) for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert [r["loss"] for r in rows] == full.losses
    assert {"segmentation/mse", "understanding/ce"} <= set(rows[-1]) | set(rows[-2])


def test_retention_keeps_last_k(tmp_path: Path) -> None:
    config = validate_run_config(
        {
            **make_config(str(tmp_path), 0, steps=5, every=1),
            "checkpoint": {"every": 1, "keep_last": 2},
        }
    )
    fit(config, build_model=lambda _: ToyAdapter(), source=ToySource(config.data, 2))
    names = sorted(p.name for p in (tmp_path / "toy" / "checkpoints").iterdir())
    assert names == ["step_00000004", "step_00000005"]


def test_resume_refuses_other_world_size(tmp_path: Path) -> None:
    config = validate_run_config(make_config(str(tmp_path), 0, steps=2, every=2))
    fit(config, build_model=lambda _: ToyAdapter(), source=ToySource(config.data, 2))
    state_file = tmp_path / "toy" / "checkpoints" / "step_00000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["world_size"] = 4
    state_file.write_text(json.dumps(state))
    longer = validate_run_config(make_config(str(tmp_path), 0, steps=3, every=2))
    with pytest.raises(ValueError, match=r"step_00000002: checkpoint was written by 4 processes"):
        fit(longer, build_model=lambda _: ToyAdapter(), source=ToySource(longer.data, 2))


class _FixedBatch:
    """The same understanding micro-batch forever: its CE loss has no noise, so it must fall."""

    def __init__(self) -> None:
        self.batch = [toy_sample(i, TaskKind.UNDERSTANDING) for i in range(2)]

    def __iter__(self) -> Iterator[list[Sample]]:
        while True:
            yield self.batch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@pytest.mark.parametrize("stage", [0, 2])
def test_bf16_losses_are_finite_and_fall_on_a_fixed_batch(tmp_path: Path, stage: int) -> None:
    config = validate_run_config(
        {**make_config(str(tmp_path), stage, steps=8, every=8), "precision": "bf16"}
    )
    result = fit(config, build_model=lambda _: ToyAdapter(), source=_FixedBatch())
    assert all(math.isfinite(x) for x in result.losses), result.losses
    # learning, not bf16 rounding noise: every step lowers the loss, 8 steps by over 20 %
    assert all(b < a for a, b in zip(result.losses[:-1], result.losses[1:], strict=True)), (
        result.losses
    )
    assert result.losses[-1] < 0.8 * result.losses[0], result.losses
    assert all(p.dtype == torch.bfloat16 for p in result.model.parameters())
