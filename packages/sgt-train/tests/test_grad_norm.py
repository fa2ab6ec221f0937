"""The logged ``grad_norm`` is the global L2 norm of each step's gradients before clipping, at every
ZeRO stage: equal to a plain torch recomputation of the step from its checkpoint, and the norm the
optimizer then applies is the clipped one."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from sgt_train import validate_run_config
from sgt_train.checkpoint import DS_TAG, load_rank_state
from sgt_train.config import RunConfig
from sgt_train.ds_config import consolidated_state_dict
from sgt_train.loop import Hooks, StepMetrics, fit
from sgt_train_toy import ToyAdapter, ToySource
from toy_worker import make_config

_STEPS = 4


def _reference_norm(config: RunConfig, checkpoint: Path) -> float:
    """Replay the step after ``checkpoint`` in plain torch; the total norm of its gradients."""
    model = ToyAdapter()
    model.load_state_dict(consolidated_state_dict(checkpoint, DS_TAG, config.zero.stage))
    rank_state = load_rank_state(checkpoint, 0)
    source = ToySource(config.data, config.micro_batch_size)
    source.load_state_dict(rank_state["source"])
    batches = iter(source)
    gas = config.gradient_accumulation
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(rank_state["rng"]["torch"])  # the adapter's flow-matching noise
        for _ in range(gas):
            out = model(model.collate(next(batches)), config.loss_weights)
            (out.total / gas).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads))


@pytest.mark.parametrize(
    ("stage", "grad_clip"), [(0, 0.05), (0, None), (2, 0.05), (2, None), (3, 0.05)]
)
def test_logged_grad_norm_is_the_pre_clipping_global_norm(
    tmp_path: Path, stage: int, grad_clip: float | None
) -> None:
    config = validate_run_config(
        {
            **make_config(str(tmp_path), stage, steps=_STEPS, every=1),
            "grad_clip": grad_clip,
            "checkpoint": {"every": 1, "keep_last": _STEPS},
            # ZeRO-3: partition every parameter, so each is released and re-gathered per pass
            "deepspeed": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
            if stage == 3
            else {},
        }
    )
    # squared norm of the gradients the optimizer steps with, summed over its step calls
    applied_sq: list[float] = [0.0]
    applied: list[float] = []

    def before_optimizer_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        applied_sq[0] += float(torch.nn.utils.get_total_norm(grads)) ** 2

    def on_step(metrics: StepMetrics) -> None:
        applied.append(math.sqrt(applied_sq[0]))
        applied_sq[0] = 0.0

    handle = register_optimizer_step_pre_hook(before_optimizer_step)
    try:
        result = fit(
            config,
            build_model=lambda _: ToyAdapter(),
            source=ToySource(config.data, config.micro_batch_size),
            hooks=Hooks(on_step=[on_step]),
        )
    finally:
        handle.remove()

    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["grad_norm"] for r in rows]
    assert len(logged) == _STEPS
    assert all(isinstance(v, float) and v > 0 for v in logged), logged
    # steps 2.. replayed from the checkpoint before them (step 1 has none)
    for step in range(2, _STEPS + 1):
        checkpoint = result.run_dir / "checkpoints" / f"step_{step - 1:08d}"
        expected = _reference_norm(config, checkpoint)
        assert logged[step - 1] == pytest.approx(expected, rel=1e-5), step
    if grad_clip is None:
        assert applied == pytest.approx(logged, rel=1e-5)
    elif stage != 3:  # ZeRO-3 steps one sub-group at a time; its clipping is DeepSpeed's own
        assert all(v > grad_clip for v in logged), logged  # every step was clipped
        assert applied == pytest.approx([grad_clip] * _STEPS, rel=1e-4)
