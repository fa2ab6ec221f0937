"""ZeRO-Offload (``zero.offload_optimizer``): DeepSpeed's compiled ``cpu_adam`` steps on the CPU.

The first run JIT-compiles ``cpu_adam`` into ``TORCH_EXTENSIONS_DIR`` (conftest and nox point it
at ``.cache/torch_extensions``): about 45 s on 2 idle cores, minutes on a loaded machine; later
runs load it in well under a second.

What must hold: an offloaded run trains the same model as the same ZeRO stage without offload
(ZeRO-3 with gradient accumulation does not yet: strict xfail below). cpu_adam
computes AdamW with another operation order (fused multiply-adds, the decoupled decay folded into
the update), so weights differ by a few float32 ulps per step: measured here at most 1.6e-7
absolute on the weights and 1.2e-7 relative on the losses after 8 steps; the tolerances below
are 10x that. Without sgt-train's work-around (``ds_config._give_every_parameter_a_gradient``),
task-routed micro-batches that leave a head without a gradient made offloaded runs differ by
1e-3 relative in the loss after 3 steps and 1e-2 in the weights: DeepSpeed 0.19.8 re-applied a
stale gradient to the unused head and dropped gradients from micro-batches before the last.
A run stopped by SIGTERM and resumed with offload reproduces the uninterrupted one bit for bit
(without the work-around it did not either: the stale gradients are not in the checkpoint).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from sgt_data import TaskKind
from sgt_train import RunConfig, validate_run_config
from sgt_train.loop import FitResult, Hooks, StepMetrics, fit
from sgt_train_toy import ToyAdapter, ToySource, toy_sample
from toy_worker import make_config

#: cpu_adam vs torch.optim.AdamW after a few steps (measured 1.2e-7 and 1.6e-7; see above)
LOSS_RTOL = 1e-6
WEIGHT_ATOL = 2e-6


def _config(out: Path, zero: dict[str, Any], steps: int, **changes: Any) -> RunConfig:
    data = {**make_config(str(out), 0, steps=steps, every=steps), "zero": zero, **changes}
    if zero.get("stage") == 3 and changes.get("gradient_accumulation", 1) > 1:
        # validation refuses this combination (test below); build it unvalidated to keep
        # pinning DeepSpeed's behaviour, so that a fixed DeepSpeed turns the xfail into a pass
        accumulation = changes.pop("gradient_accumulation")
        base = validate_run_config({**data, "gradient_accumulation": 1})
        return base.model_copy(update={"gradient_accumulation": accumulation})
    return validate_run_config(data)


def test_zero3_offload_with_accumulation_is_refused_naming_the_defect(tmp_path: Path) -> None:
    data = {
        **make_config(str(tmp_path), 0, steps=2, every=2),
        "zero": {"stage": 3, "offload_optimizer": True},
        "gradient_accumulation": 2,
    }
    with pytest.raises(
        ValueError, match=r"zero\.stage 3 with CPU offload and gradient_accumulation > 1 is refused"
    ) as info:
        validate_run_config(data, "run.yaml")
    message = str(info.value)
    assert "run.yaml" in message
    assert "gradient_accumulation: 1" in message
    assert "zero.stage 2 with offload_optimizer" in message
    validate_run_config({**data, "gradient_accumulation": 1})  # without accumulation: accepted


def _toy_fit(config: RunConfig, hooks: Hooks | None = None) -> FitResult:
    return fit(
        config,
        build_model=lambda _: ToyAdapter(),
        source=ToySource(config.data, config.micro_batch_size),
        hooks=hooks,
    )


def _initial_toy_weights(config: RunConfig) -> dict[str, torch.Tensor]:
    """The weights a toy run starts from (``fit`` seeds with ``config.seed`` before building)."""
    torch.manual_seed(config.seed)
    return {n: p.detach().clone() for n, p in ToyAdapter().named_parameters()}


def _weights(result: FitResult) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in result.model.named_parameters()}


def _assert_same_training(plain: FitResult, offloaded: FitResult) -> None:
    assert len(plain.losses) == len(offloaded.losses)
    assert offloaded.losses == pytest.approx(plain.losses, rel=LOSS_RTOL, abs=0)
    a, b = _weights(plain), _weights(offloaded)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=WEIGHT_ATOL, msg=name)


_ZERO3_OFFLOAD_ACCUMULATION_BUG = (
    "ZeRO-3 + CPU offload with gradient accumulation: a parameter without a gradient in some "
    "micro-batches of a step trains differently from ZeRO-3 without offload (1e-2 in the weights "
    "after 8 steps); the touch-every-parameter work-around needs whole parameters, which ZeRO-3 "
    "has released by the end of the forward"
)


@pytest.mark.parametrize(
    ("stage", "accumulation"),
    [
        (1, 2),
        (2, 1),
        (2, 2),
        (3, 1),
        pytest.param(
            3, 2, marks=pytest.mark.xfail(strict=True, reason=_ZERO3_OFFLOAD_ACCUMULATION_BUG)
        ),
    ],
)
def test_offload_matches_zero_without_offload_on_task_routed_batches(
    tmp_path: Path, stage: int, accumulation: int
) -> None:
    """seg, seg, vqa micro-batches: the LM head has no gradient in segmentation micro-batches and
    the generator none in VQA ones; offload must still follow the non-offloaded run (ZeRO-1/2 by
    sgt-train's work-around, ZeRO-3 without accumulation by the loop's clearing of its buffers)."""
    steps = 8
    plain = _toy_fit(
        _config(tmp_path / "plain", {"stage": stage}, steps, gradient_accumulation=accumulation)
    )
    offload_config = _config(
        tmp_path / "offload",
        {"stage": stage, "offload_optimizer": True},
        steps,
        gradient_accumulation=accumulation,
    )
    offloaded = _toy_fit(offload_config)
    _assert_same_training(plain, offloaded)
    # the weights moved far more than the tolerance: equal because trained alike, not unmoved
    start = _initial_toy_weights(offload_config)
    moved = max(float((w - start[n]).abs().max()) for n, w in _weights(offloaded).items())
    assert moved > 1000 * WEIGHT_ATOL


def _loss_on_fixed_batches(model: torch.nn.Module) -> list[float]:
    """The model's loss on fixed segmentation and VQA batches with fixed noise."""
    values = []
    for task in (TaskKind.SEGMENTATION, TaskKind.UNDERSTANDING):
        batch = model.collate([toy_sample(900 + i, task) for i in range(2)])  # type: ignore[operator]
        torch.manual_seed(0)
        with torch.no_grad():
            values.append(float(model(batch).total))
    return values


def test_offload_trains_the_tiny_reference_model_like_zero2(tmp_path: Path) -> None:
    """The tiny reference adapter (3.1 M parameters), ZeRO-2, 3 steps of 2 micro-batches.

    Compared by what the weights compute, not weight by weight: attention key biases have a zero
    true gradient (softmax ignores a shift), so Adam turns their rounding noise into updates that
    differ between the two implementations (2.8e-5 here) without changing any output.
    """
    steps = 3
    changes = {"optimizer": {"lr": 3e-3, "weight_decay": 0.01, "eps": 1e-8}}  # tiny-sgt's eps
    config = _config(tmp_path / "plain", {"stage": 2}, steps, **changes)
    plain = fit(config, source=ToySource(config.data, config.micro_batch_size))
    offload_config = _config(
        tmp_path / "offload", {"stage": 2, "offload_optimizer": True}, steps, **changes
    )
    offloaded = fit(
        offload_config, source=ToySource(offload_config.data, offload_config.micro_batch_size)
    )
    assert type(offloaded.model).__name__ == "ReferenceAdapter"
    assert sum(p.numel() for p in offloaded.model.parameters()) > 1_000_000
    assert offloaded.losses == pytest.approx(plain.losses, rel=LOSS_RTOL, abs=0)
    after_plain = _loss_on_fixed_batches(plain.model)
    after_offload = _loss_on_fixed_batches(offloaded.model)
    assert after_offload == pytest.approx(after_plain, rel=LOSS_RTOL, abs=0)


def test_offload_resume_after_sigterm_is_bit_identical(tmp_path: Path) -> None:
    zero = {"stage": 2, "offload_optimizer": True}
    full = _toy_fit(_config(tmp_path / "full", zero, 7))

    def sigterm_at_4(metrics: StepMetrics) -> None:
        if metrics.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    split_config = _config(tmp_path / "split", zero, 7)
    first = _toy_fit(split_config, Hooks(on_step=[sigterm_at_4]))
    assert first.preempted
    assert first.final_step == 4
    resumed = _toy_fit(split_config)
    assert resumed.start_step == 4
    assert first.losses + resumed.losses == full.losses  # exact
    a, b = _weights(full), _weights(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name
