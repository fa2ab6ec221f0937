"""The DeepSpeed JSON derived from a run config (world-size dependent), with raw keys merged over
it; the one-rank ZeRO-1/2 shortcut trains bit-identically to DeepSpeed's stock path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from sgt_train import ds_config, validate_run_config
from sgt_train.ds_config import build_ds_config, merge_raw
from sgt_train.loop import Hooks, StepMetrics, fit
from sgt_train_toy import ToyAdapter, ToySource
from toy_worker import make_config


def _config(**changes: Any) -> dict[str, Any]:
    return {**make_config("runs", 0, steps=10, every=5), **changes}


def test_derived_keys_follow_the_run_config() -> None:
    config = validate_run_config(
        _config(
            precision="bf16",
            grad_clip=0.5,
            zero={"stage": 2},
            micro_batch_size=3,
            gradient_accumulation=4,
        )
    )
    ds = build_ds_config(config, world_size=8)
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 3 * 4 * 8
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True}
    assert ds["zero_optimization"] == {"stage": 2}
    opt = ds["optimizer"]
    assert opt["type"] == "AdamW"
    assert opt["params"]["torch_adam"] is True  # nothing JIT-compiles
    assert opt["params"]["lr"] == config.optimizer.lr
    assert opt["params"]["betas"] == list(config.optimizer.betas)


def test_offload_uses_cpu_adam_and_no_clip_means_zero() -> None:
    config = validate_run_config(
        _config(
            grad_clip=None,
            zero={"stage": 3, "offload_optimizer": True, "offload_params": True},
            gradient_accumulation=1,  # ZeRO-3 offload with accumulation is refused
        )
    )
    ds = build_ds_config(config)
    assert ds["gradient_clipping"] == 0.0
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "torch_adam" not in ds["optimizer"]["params"]
    assert ds["bf16"] == {"enabled": False}


def test_raw_keys_merge_deeply_over_derived() -> None:
    raw = {
        "zero_optimization": {"overlap_comm": True, "stage": 3},
        "optimizer": {"params": {"eps": 1e-6}},
        "activation_checkpointing": {"partition_activations": True},
    }
    ds = build_ds_config(validate_run_config(_config(zero={"stage": 2}, deepspeed=raw)))
    # the one-rank ZeRO-2 keys are derived, and the raw keys still win over them
    assert ds["zero_optimization"] == {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": False,
    }
    assert ds["optimizer"]["params"]["eps"] == 1e-6
    assert ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["activation_checkpointing"] == {"partition_activations": True}


def test_merge_does_not_mutate_inputs() -> None:
    base = {"a": {"b": 1}}
    raw = {"a": {"c": [1]}}
    merged = merge_raw(base, raw)
    merged["a"]["c"].append(2)
    assert base == {"a": {"b": 1}}
    assert raw == {"a": {"c": [1]}}


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_stage_is_derived(stage: int) -> None:
    ds = build_ds_config(validate_run_config(_config(zero={"stage": stage})))
    assert ds["zero_optimization"]["stage"] == stage


_ONE_RANK = {"contiguous_gradients": False, "overlap_comm": False}


@pytest.mark.parametrize(
    ("stage", "world_size", "offload", "expected"),
    [
        (0, 1, False, {"stage": 0}),
        (1, 1, False, {"stage": 1, **_ONE_RANK}),
        (2, 1, False, {"stage": 2, **_ONE_RANK}),
        (3, 1, False, {"stage": 3}),
        (1, 2, False, {"stage": 1}),  # several ranks: DeepSpeed's defaults, same numerics
        (2, 2, False, {"stage": 2}),
        (2, 16, False, {"stage": 2}),
        (2, 1, True, {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False}}),
    ],
)
def test_zero_keys_depend_on_the_world_size(
    stage: int, world_size: int, offload: bool, expected: dict[str, Any]
) -> None:
    config = validate_run_config(_config(zero={"stage": stage, "offload_optimizer": offload}))
    assert build_ds_config(config, world_size=world_size)["zero_optimization"] == expected


@dataclass
class _Trained:
    losses: list[float]
    grad_norms: list[float | None]
    weights: dict[str, torch.Tensor]
    shortcut: bool  # the one-rank reduction shortcut was installed


def _train(
    out: Path, stage: int, precision: str, raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> _Trained:
    """Four optimizer steps of the toy adapter in this process; the engine is captured."""
    engines: list[Any] = []
    initialize = ds_config.initialize_engine

    def capture(*args: Any, **kwargs: Any) -> Any:
        engines.append(initialize(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(ds_config, "initialize_engine", capture)
    config = validate_run_config(
        {
            **make_config(str(out), stage, steps=4, every=100),
            "precision": precision,
            "deepspeed": raw,
        }
    )
    norms: list[float | None] = []

    def on_step(metrics: StepMetrics) -> None:
        norms.append(metrics.grad_norm)

    result = fit(
        config,
        build_model=lambda _: ToyAdapter(),
        source=ToySource(config.data, 2),
        hooks=Hooks(on_step=[on_step]),
        resume=False,
    )
    monkeypatch.setattr(ds_config, "initialize_engine", initialize)
    shortcut = "buffered_reduce_fallback" in vars(engines[0].optimizer)
    weights = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    return _Trained(result.losses, norms, weights, shortcut)


@pytest.mark.parametrize(("stage", "precision"), [(1, "fp32"), (2, "fp32"), (2, "bf16")])
def test_one_rank_shortcut_is_bit_identical_to_stock_deepspeed(
    tmp_path: Path, stage: int, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _train(tmp_path / "fast", stage, precision, {}, monkeypatch)
    # DeepSpeed's own path: contiguous gradient buckets and the full (one-rank) reduction
    stock = _train(
        tmp_path / "stock",
        stage,
        precision,
        {"zero_optimization": {"contiguous_gradients": True}},
        monkeypatch,
    )
    assert fast.shortcut
    assert not stock.shortcut
    assert fast.losses == stock.losses
    assert fast.grad_norms == stock.grad_norms
    assert all(n is not None and n > 0 for n in fast.grad_norms)
    assert fast.weights.keys() == stock.weights.keys()
    for name, tensor in fast.weights.items():
        assert torch.equal(tensor, stock.weights[name]), name
