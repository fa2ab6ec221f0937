"""The ``deepspeed`` launcher on a CPU host (gloo), checked against ``torchrun``.

On the CPU accelerator the launcher's ``--num_gpus N`` (or a hostfile's ``slots=N``) is the number
of processes per node; it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT like
torchrun, and inserts ``--local_rank=R`` right after the script or module name, before the
script's own arguments. ``sgt-train``'s arguments start with a sub-command, so it is launched with
``--no_local_rank`` (the rank is in LOCAL_RANK anyway).

Both launchers are driven with their multi-node flags on this one node: torchrun with
``--nnodes/--node_rank/--master_addr``, deepspeed with a hostfile and ``--no_ssh --node_rank``
(each node starts its own launcher; nothing is ssh'd).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sgt_train.launch import free_port

WORKER = Path(__file__).parent / "toy_worker.py"
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update({"DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    return env


def _run(command: list[str], cwd: Path, timeout: float = 240) -> None:
    proc = subprocess.run(
        command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _deepspeed(*args: str) -> list[str]:
    # the `deepspeed` console script is deepspeed.launcher.runner:main
    return [sys.executable, "-m", "deepspeed.launcher.runner", *args]


def _results(out: Path) -> list[dict[str, Any]]:
    return [json.loads((out / f"result_rank{r}.json").read_text()) for r in (0, 1)]


def test_deepspeed_launcher_trains_what_torchrun_trains(tmp_path: Path) -> None:
    """Two ranks, ZeRO-2, the toy adapter: each rank's losses and final weights are identical
    under ``deepspeed --num_gpus 2`` and under torchrun with its multi-node flags."""
    worker_args = ["--stage", "2", "--steps", "3", "--every", "3"]
    torchrun_out, deepspeed_out = tmp_path / "torchrun", tmp_path / "deepspeed"
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--node_rank",
            "0",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "--nproc_per_node",
            "2",
            str(WORKER),
            "--out",
            str(torchrun_out),
            *worker_args,
        ],
        tmp_path,
    )
    _run(
        _deepspeed(
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--no_local_rank",
            str(WORKER),
            "--out",
            str(deepspeed_out),
            *worker_args,
        ),
        tmp_path,
    )
    by_torchrun, by_deepspeed = _results(torchrun_out), _results(deepspeed_out)
    for rank, (t, d) in enumerate(zip(by_torchrun, by_deepspeed, strict=True)):
        assert (t["rank"], t["world_size"]) == (d["rank"], d["world_size"]) == (rank, 2)
        assert d["final_step"] == 3
        assert d["losses"] == t["losses"]  # exact
        assert d["weights_sha256"] == t["weights_sha256"]
    assert by_deepspeed[0]["weights_sha256"] == by_deepspeed[1]["weights_sha256"]
    assert by_deepspeed[0]["losses"] == by_deepspeed[1]["losses"]


@pytest.mark.slow
def test_sgt_train_fit_under_deepspeed_with_a_hostfile(tmp_path: Path) -> None:
    """``deepspeed --hostfile H --no_ssh --node_rank 0 --no_local_rank --module sgt_train.cli fit``
    with the shipped tiny-sgt recipe on real stores: two ranks train, log and checkpoint."""
    from sgt_train.demo.stores import build_stores

    stores = build_stores(tmp_path / "data", num_train=24, num_eval=1, seed=0)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    out = tmp_path / "runs"
    overrides = [
        f"output_dir={out}",
        f"data.sources.0.store={stores.scenes}",
        f"data.sources.1.store={stores.vqa}",
        "steps=2",
        "schedule.warmup_steps=1",
        "checkpoint.every=2",
        "logging.every=1",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
    ]
    _run(
        _deepspeed(
            "--hostfile",
            str(hostfile),
            "--no_ssh",
            "--node_rank",
            "0",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "--no_local_rank",
            "--module",
            "sgt_train.cli",
            "fit",
            "tiny-sgt",
            *[a for o in overrides for a in ("--set", o)],
        ),
        tmp_path,
    )
    run = out / "tiny-sgt"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert [r["samples"] for r in rows] == [8, 16]  # 2 ranks x micro-batch 4
    checkpoint = run / "checkpoints" / "step_00000002"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    shards = sorted(p.name for p in (checkpoint / "ds").glob("*optim_states.pt"))
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
