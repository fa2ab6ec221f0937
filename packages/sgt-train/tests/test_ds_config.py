"""The DeepSpeed JSON derived from a run config, with raw keys merged over it."""

from __future__ import annotations

from typing import Any

import pytest

from sgt_train import validate_run_config
from sgt_train.ds_config import build_ds_config, merge_raw
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
            grad_clip=None, zero={"stage": 3, "offload_optimizer": True, "offload_params": True}
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
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True}
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
