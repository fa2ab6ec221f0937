"""`sgt-train fit` end to end on real stores: scene world -> sgt-data converters -> the shipped
`tiny-sgt` recipe through the CLI, in subprocesses.

Checks that every step logs finite loss parts for the task the recipe's interleave pattern
dictates, weighted as the recipe says, and that a run stopped by SIGTERM after a checkpoint and
resumed by a second `fit` logs bit-identical losses (CPU, fp32) to a run never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from sgt_train.config import RunConfig, load_run_config
from sgt_train.data import build_source
from sgt_train.demo.stores import DemoStores, build_stores
from sgt_train.recipes import recipe_path

STEPS = 8
#: Per-step fields that depend on the clock, not on the training.
TIMING = {"samples_per_s", "elapsed_s"}
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> DemoStores:
    return build_stores(tmp_path_factory.mktemp("data"), num_train=24, num_eval=2, seed=0)


def _overrides(stores: DemoStores, output_dir: Path) -> list[str]:
    return [
        f"output_dir={output_dir}",
        f"data.sources.0.store={stores.scenes}",
        f"data.sources.1.store={stores.vqa}",
        f"steps={STEPS}",
        "schedule.warmup_steps=2",
        "checkpoint.every=2",
        "logging.every=1",
        "logging.progress_bar=false",
        "num_workers=0",
    ]


def _fit(overrides: list[str], log: Path) -> subprocess.Popen[bytes]:
    script = Path(sys.executable).with_name("sgt-train")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "sgt_train.cli"]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    # one thread each: the two first runs share the machine; identical settings on both sides
    env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
    args = [a for o in overrides for a in ("--set", o)]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, "fit", "tiny-sgt", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    code = proc.wait(timeout=timeout)
    assert code == 0, f"sgt-train fit exited {code}:\n{log.read_text()[-4000:]}"


def _metrics(config: RunConfig) -> list[dict[str, Any]]:
    path = Path(config.output_dir) / config.name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _checkpoint_steps(config: RunConfig) -> list[int]:
    folder = Path(config.output_dir) / config.name / "checkpoints"
    return sorted(int(p.name.split("_")[1]) for p in folder.glob("step_*"))


def test_fit_cli_logs_mixture_parts_and_resumes_bit_identically(
    stores: DemoStores, tmp_path: Path
) -> None:
    recipe = recipe_path("tiny-sgt")
    whole = _overrides(stores, tmp_path / "whole")
    split = _overrides(stores, tmp_path / "split")
    config = load_run_config(recipe, whole)
    assert config.zero.stage == 2
    assert config.precision == "fp32"
    split_config = load_run_config(recipe, split)

    # The uninterrupted run and the one to interrupt start together (start-up dominates).
    whole_log, split_log = tmp_path / "whole.log", tmp_path / "split.log"
    uninterrupted = _fit(whole, whole_log)
    interrupted = _fit(split, split_log)
    deadline = time.monotonic() + 120
    while not _checkpoint_steps(split_config):
        assert interrupted.poll() is None, f"run ended early:\n{split_log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    interrupted.send_signal(signal.SIGTERM)
    _finish(interrupted, split_log)
    stopped_at = _checkpoint_steps(split_config)[-1]
    assert 2 <= stopped_at < STEPS, f"SIGTERM did not stop the run early (step {stopped_at})"
    assert [r["step"] for r in _metrics(split_config)] == list(range(1, stopped_at + 1))

    resumed = _fit(split, split_log)
    _finish(resumed, split_log)
    _finish(uninterrupted, whole_log)
    assert f"resumed from {split_config.output_dir}" in split_log.read_text()

    # Every step logs finite parts of the task the interleave pattern puts there, weighted.
    rows = _metrics(config)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    tasks = {s.name: s.task.value for s in config.data.sources}
    pattern = config.data.pattern
    assert pattern is not None
    part_of = {"segmentation": "mse", "understanding": "ce"}
    weight = {"ce": config.loss_weights.ce, "mse": config.loss_weights.mse}
    for row in rows:
        task = tasks[pattern[(row["step"] - 1) % len(pattern)]]
        part = part_of[task]
        per_task = {k for k in row if "/" in k}
        assert per_task == {f"{task}/{part}"}, row
        assert {"ce", "mse"} & set(row) == {part}, row
        assert all(math.isfinite(row[k]) for k in ("loss", part, f"{task}/{part}")), row
        assert row["loss"] == pytest.approx(weight[part] * row[part], rel=1e-6), row
        assert row["grad_norm"] is not None, row
        assert math.isfinite(row["grad_norm"]), row

    # Stopped by SIGTERM, resumed by a second `fit`: the same losses, bit for bit.
    resumed_rows = _metrics(split_config)
    assert len(resumed_rows) == len(rows)
    for whole_row, split_row in zip(rows, resumed_rows, strict=True):
        for key in set(whole_row) | set(split_row):
            if key not in TIMING:
                assert split_row.get(key) == whole_row.get(key), (split_row["step"], key)


def test_real_source_leaves_the_training_rng_alone(stores: DemoStores, tmp_path: Path) -> None:
    """Drawing micro-batches (across an epoch boundary, where the DataLoader seeds its workers)
    must not move the global torch RNG the model draws its noise from: a resumed run starts its
    first epoch iterator at another point of that stream than an uninterrupted run did."""
    config = load_run_config(recipe_path("tiny-sgt"), _overrides(stores, tmp_path))
    source = build_source(config, 0, 1)
    steps_per_epoch = len(source.loader)
    batches = iter(source)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    for _ in range(steps_per_epoch + 2):
        assert len(next(batches)) == config.micro_batch_size
    assert source.state_dict()["epoch"] == 1
    assert torch.equal(torch.get_rng_state(), before)
