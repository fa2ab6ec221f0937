"""Real processes: SIGTERM checkpoints and exits 0, SIGKILL during a save leaves the previous
checkpoint loadable (and the resumed run matches an uninterrupted one), and a 2-process gloo run
with ZeRO-2 under torchrun trains consistent replicas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from sgt_train.checkpoint import latest_checkpoint
from sgt_train.launch import free_port

WORKER = Path(__file__).parent / "toy_worker.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # the in-process tests set them for this process
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _worker(out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), "--out", str(out), *extra],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _result(out: Path, rank: int = 0) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((out / f"result_rank{rank}.json").read_text())
    return loaded


def test_sigterm_writes_a_checkpoint_and_exits_zero(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "--out",
            str(tmp_path),
            "--steps",
            "10000",
            "--every",
            "10000",
            "--step-sleep",
            "0.05",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("STEP 3"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    result = _result(tmp_path)
    assert result["preempted"] is True
    stopped_at = result["final_step"]
    assert 3 <= stopped_at < 10000
    ckpt = latest_checkpoint(tmp_path / "toy" / "checkpoints")
    assert ckpt is not None
    assert ckpt.name == f"step_{stopped_at:08d}"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == stopped_at


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    reference = _worker(tmp_path / "reference", "--steps", "6", "--every", "2")
    assert reference.returncode == 0, reference.stderr
    ref = _result(tmp_path / "reference")

    killed = _worker(tmp_path / "run", "--steps", "6", "--every", "2", "--kill-at-save", "4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoints = tmp_path / "run" / "toy" / "checkpoints"
    assert (checkpoints / ".staging-step_00000004").is_dir()  # the save that was cut short
    assert latest_checkpoint(checkpoints) == checkpoints / "step_00000002"

    resumed = _worker(tmp_path / "run", "--steps", "6", "--every", "2")
    assert resumed.returncode == 0, resumed.stderr
    res = _result(tmp_path / "run")
    assert res["start_step"] == 2
    assert res["final_step"] == 6
    assert res["losses"] == ref["losses"][2:]
    assert res["weights_sha256"] == ref["weights_sha256"]
    assert not (checkpoints / ".staging-step_00000004").exists()
    rows = [json.loads(x) for x in (tmp_path / "run/toy/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_two_process_zero2_under_torchrun(tmp_path: Path) -> None:
    """The tiny reference model, ZeRO-2, gloo, 2 ranks: replicas agree and the loss is global."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            str(WORKER),
            "--out",
            str(tmp_path),
            "--stage",
            "2",
            "--steps",
            "3",
            "--every",
            "3",
            "--model",
            "reference",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [_result(tmp_path, r) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["final_step"] for r in ranks] == [3, 3]
    # replicas agree after ZeRO-2's partitioned optimizer steps, and the logged loss is global
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert all(x == x and 0 < x < 10 for x in ranks[0]["losses"])
    ds = tmp_path / "toy" / "checkpoints" / "step_00000003" / "ds"
    shards = sorted(p.name for p in ds.glob("*optim_states.pt"))
    assert shards == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    rows = [json.loads(x) for x in (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows] == [8, 16, 24]  # 2 ranks x 2 micro-batches x 2 samples
