"""A miniature sweep (2 arms x 1 seed, the tiny reference model on a tiny scene world) is killed
with SIGKILL in the middle of its second run and resumed: the finished run is not repeated, the
half-trained one resumes from its checkpoint, and the report holds both runs, consistent with their
EvalReports. Also: bad sweep files give one line naming the file and the field, exit 2."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sgt_train.checkpoint import latest_checkpoint
from sgt_train.sweep import cmd_sweep, load_sweep, plan_runs, run_sweep

VQA = "{name: vqa, store: '${world.vqa}', task: understanding}"
SEG = "{name: seg, store: '${world.scenes}', task: segmentation, task_variant: semantic}"
SEG_STEPS = 40


def _sweep_file(tmp_path: Path) -> Path:
    sweep = {
        "schema_version": 1,
        "name": "mini",
        "output_dir": str(tmp_path / "out"),
        "base": {
            "config": "tiny-sgt",
            "set": [
                f"data.sources=[{VQA}]",
                "data.pattern=[vqa]",
                "steps=4",
                "micro_batch_size=2",
                "schedule.warmup_steps=1",
                "ema.decay=0.0",
                "checkpoint.every=2",
                "checkpoint.keep_last=1",
                "logging.tensorboard=false",
                "logging.progress_bar=false",
            ],
        },
        "arms": [
            {"name": "vqa", "label": "VQA only", "set": []},
            {
                "name": "seg",
                "label": "+ segmentation",
                "set": [
                    f"data.sources=[{SEG}, {VQA}]",
                    "data.pattern=[vqa, seg]",
                    f"steps={SEG_STEPS}",
                ],
            },
        ],
        "seeds": [0],
        "world": {"num_train": 8, "num_eval": 4, "image_size": 32},
        "evaluation": {
            "max_questions": 12,
            "max_prompts": 2,
            "seg_images": 2,
            "inference_steps": 2,
            "max_new_tokens": 4,
            "aggregates": {"perception": ["scene-counting/default/accuracy"]},
        },
        "tables": [{"title": "Ablation", "arms": ["vqa", "seg"]}],
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


def _events(out: Path) -> list[dict[str, Any]]:
    lines = (out / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _kill_during_second_run(sweep: Path, out: Path) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgt_train.sweep", str(sweep)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    checkpoints = out / "runs" / "s0" / "seg" / "train" / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while latest_checkpoint(checkpoints) is None:
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended before it could be killed:\n{proc.stdout.read()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no checkpoint of the second run in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def test_killed_sweep_resumes_without_repeating_finished_runs(tmp_path: Path) -> None:
    sweep = _sweep_file(tmp_path)
    out = tmp_path / "out"
    _kill_during_second_run(sweep, out)
    vqa_dir = out / "runs" / "s0" / "vqa"
    assert (vqa_dir / "done.json").is_file()
    assert not (out / "runs" / "s0" / "seg" / "done.json").exists()
    finished_report = (vqa_dir / "report.json").read_bytes()

    result = run_sweep(sweep)

    assert result.skipped == ["vqa/s0"]
    assert result.evaluated == ["seg/s0"]
    assert result.trained == ["seg/s0/train"]
    events = _events(out)
    assert [e["event"] for e in events if e["unit"] == "vqa/s0"] == [
        "train", "started", "trained", "evaluate", "done",
    ]  # fmt: skip
    starts = [e for e in events if e["unit"] == "seg/s0" and e["event"] == "started"]
    assert len(starts) == 2
    assert starts[0]["start_step"] == 0
    assert 0 < starts[1]["start_step"] < SEG_STEPS  # resumed from the killed run's checkpoint
    assert (vqa_dir / "report.json").read_bytes() == finished_report

    report = result.report
    assert report.missing == []
    assert report.arms == ["vqa", "seg"]
    on_disk = json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(report.model_dump_json())
    from sgt_eval.report import EvalReport

    for arm in ("vqa", "seg"):
        run = EvalReport.read(out / "runs" / "s0" / arm / "report.json")
        expected = {
            f"{r.benchmark}/{r.split}/{m}": v for r in run.results for m, v in r.metrics.items()
        }
        got = report.runs[arm]["0"]
        assert {k: v for k, v in got.items() if k != "perception"} == expected
        assert got["perception"] == expected["scene-counting/default/accuracy"]
        mious = report.summary(arm, "sgt-proxy-segmentation/semantic/miou")
        assert mious is not None
        assert mious.n == 1
        assert mious.ci_low is None
    assert {(c.arm, c.against) for c in report.comparisons} == {("seg", "vqa")}
    assert all(c.n == 1 and c.p_value is None for c in report.comparisons)
    markdown = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert "| VQA only |" in markdown
    assert "| + segmentation | VQA only |" in markdown

    from sgt_data.schema import TaskKind
    from sgt_data.store import SampleStore

    edge = SampleStore.open(out / "stores" / "stores" / "scenes-train-edge")  # ${world.edge}
    assert edge.manifest.task_counts.get(TaskKind.EDGE, 0) == 8

    again = run_sweep(sweep)  # a finished sweep: nothing is trained or evaluated
    assert (again.trained, again.evaluated) == ([], [])
    assert again.report == report


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\noutput_dir: o\nbase: {config: tiny-sgt}\narms: [{name: a, set: []}]\n"
         "seeds: [0]\nworld: {num_train: 4, num_eval: 2}\nsurprise: 1\n", "surprise: Extra inputs"),
        ("name: x\noutput_dir: o\nbase: {config: tiny-sgt}\narms: [{name: a, set: []}]\n"
         "seeds: []\nworld: {num_train: 4, num_eval: 2}\n", "seeds: List should have at least 1"),
        ("name: x\noutput_dir: o\nbase: {config: tiny-sgt}\narms: [{name: a, set: [steps=0]}]\n"
         "seeds: [0]\nworld: {num_train: 4, num_eval: 2}\n", "arms.a.train: not a valid run config"),
        ("name: x\noutput_dir: o\nbase: {config: tiny-sgt}\narms: [{name: a}]\n"
         "seeds: [0]\nworld: {num_train: 4, num_eval: 2}\n", "add pretrain"),
        ("name: [\n", "<yaml>: line"),
    ],
)  # fmt: skip
def test_bad_sweep_file_is_one_line_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    code = cmd_sweep(argparse.Namespace(sweep_file=str(path), verbose=False))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"sgt-train sweep: error: {path}: ")
    assert expected in err


def test_ctrl_c_exits_130_with_a_resume_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sgt_train.sweep as module

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run_sweep", interrupted)
    assert cmd_sweep(argparse.Namespace(sweep_file="s.yaml", verbose=False)) == 130
    assert "continues where it stopped" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["sgt-mini", "small-gpu"])
def test_shipped_sweeps_are_valid_and_have_three_seeds(name: str) -> None:
    sweep = load_sweep(name)  # also validates every arm's and stage's run config
    assert len(sweep.seeds) >= 3
    arms = [u.arm for u in plan_runs(sweep) if u.seed == sweep.seeds[0]]
    assert arms[0] == "_pretrain"
    assert len(arms) == len(sweep.arms) + 1


def test_edge_world_without_opencv_is_one_line_before_anything_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real(name, *a)
    )
    path = _sweep_file(tmp_path)
    sweep = yaml.safe_load(path.read_text(encoding="utf-8"))
    sweep["world"]["edge"] = True
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    code = cmd_sweep(argparse.Namespace(sweep_file=str(path), verbose=False))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.splitlines() == [
        f"sgt-train sweep: error: {path}: world.edge: the edge store needs OpenCV, which is not "
        "installed: pip install 'sgt-data[edge]' (or set world.edge: false and drop the edge arms)"
    ]
    assert not (tmp_path / "out" / "stores").exists()


def test_a_claim_is_exclusive_and_dies_with_its_holder(tmp_path: Path) -> None:
    """A unit's claim is held by one process; killing that process (SIGKILL, no clean-up) frees
    it, so a crashed worker never leaves a run that nobody may take."""
    from sgt_train.sweep import _claim, claim_holder

    path = tmp_path / "runs" / "s0" / "arm" / ".claim"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from sgt_train.sweep import _claim; "
         f"c = _claim(Path({str(path)!r})); print('held' if c else 'free', flush=True); "
         "time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert _claim(path) is None
        assert claim_holder(path) == f"process {holder.pid} on {os.uname().nodename}"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()
    assert claim_holder(path) is None
    mine = _claim(path)
    assert mine is not None
    mine.release()


def test_two_workers_share_the_runs_and_wait_for_the_pretrain(tmp_path: Path) -> None:
    """``--workers 2``: the seed's pretrain is trained once, both arms wait for it, then each
    arm is trained and evaluated exactly once, the two by different processes, and the report
    holds both, as the serial sweep's would."""
    path = _sweep_file(tmp_path)
    sweep = yaml.safe_load(path.read_text(encoding="utf-8"))
    sweep["pretrain"] = ["steps=2", "checkpoint.every=2"]
    sweep["arms"][1]["set"] = [s for s in sweep["arms"][1]["set"] if not s.startswith("steps=")]
    sweep["arms"][1]["set"].append("steps=6")
    # the first arm outlasts the other worker's 1-s poll, so the second arm goes to that worker
    sweep["arms"][0]["set"] = ["steps=20", "checkpoint.every=20"]
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    done = subprocess.run(
        [sys.executable, "-m", "sgt_train.sweep", str(path), "--workers", "2"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 workers" in done.stderr
    assert "[worker 1]" in done.stderr
    out = tmp_path / "out"
    events = _events(out)
    trains = [e for e in events if e["event"] == "train"]
    assert sorted(e["unit"] for e in trains) == ["_pretrain/s0", "seg/s0", "vqa/s0"]
    assert {e["threads"] for e in trains} == {1}  # OMP_NUM_THREADS=1 reached the workers
    dones = {e["unit"]: e for e in events if e["event"] == "done"}
    assert set(dones) == {"seg/s0", "vqa/s0"}
    assert dones["seg/s0"]["pid"] != dones["vqa/s0"]["pid"]  # spread over both workers
    pretrained = next(e for e in events if e["event"] == "trained" and e["unit"] == "_pretrain/s0")
    assert all(e["time"] >= pretrained["time"] for e in trains if e["unit"] != "_pretrain/s0")
    assert "waiting for" in done.stderr  # the worker that did not get the pretrain waited

    report = json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))
    assert report["missing"] == []
    from sgt_eval.report import EvalReport

    for arm in ("vqa", "seg"):
        run = EvalReport.read(out / "runs" / "s0" / arm / "report.json")
        expected = {
            f"{r.benchmark}/{r.split}/{m}": v for r in run.results for m, v in r.metrics.items()
        }
        got = report["runs"][arm]["0"]
        assert {k: v for k, v in got.items() if k != "perception"} == expected
    again = run_sweep(path)  # nothing left: the serial command only rewrites the same report
    assert (again.trained, again.evaluated) == ([], [])
    assert json.loads(again.report.model_dump_json()) == report


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--devices", "0,x"], "--devices 0,x: expected GPU indices"),
        (["--workers", "0"], "--workers 0: expected 1 or more"),
        (["--arms", "vqa,nope"], "--arms: no arm(s) ['nope']; known: vqa, seg"),
        (["--arms", "nope", "--workers", "2"], "--arms: no arm(s) ['nope']; known: vqa, seg"),
    ],
)
def test_bad_worker_options_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    from sgt_train.sweep import main

    assert main([str(_sweep_file(tmp_path)), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_selected_arms_keep_their_tables_rows_and_comparisons() -> None:
    """``--arms``: the ratio study of the shipped sgt-mini alone; the tables keep only selected
    rows, and no arm is compared with an arm that was left out."""
    sweep = load_sweep("sgt-mini")
    chosen = ["vqa-only", "seg-1to2", "seg-1to1", "segmentation", "seg-4to1"]
    part = sweep.select_arms(chosen)
    in_file_order = [a.name for a in sweep.arms if a.name in chosen]
    assert [a.name for a in part.arms] == in_file_order
    assert len(part.tables) == len(sweep.tables)  # every table has a selected arm
    for table in part.tables:
        assert table.arms
        assert set(table.arms) <= set(chosen)
    only_seg = sweep.select_arms(["edge"])
    assert [t.arms for t in only_seg.tables] == [["edge"]]
    assert only_seg.comparisons() == []  # its baseline (vqa-only) was left out
    ratio = next(t for t in part.tables if t.title.startswith("Ratio"))
    assert ratio.arms == chosen
    pairs = part.comparisons()
    assert pairs
    assert all(a in chosen and b in chosen for a, b in pairs)
    assert ("segmentation", "vqa-only") in pairs
    assert [u.arm for u in plan_runs(part) if u.seed == 0] == ["_pretrain", *in_file_order]
    assert sweep.arms != part.arms  # the loaded sweep itself is unchanged


def test_worker_environments_split_the_cores_or_take_one_gpu_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sgt_train.sweep import _worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for var, value in (("RANK", "3"), ("WORLD_SIZE", "8"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    cpu = [_worker_env(i, 4, []) for i in range(4)]
    assert [e["OMP_NUM_THREADS"] for e in cpu] == ["4"] * 4
    assert [e["SGT_SWEEP_WORKER"] for e in cpu] == ["0", "1", "2", "3"]
    assert all("RANK" not in e and "WORLD_SIZE" not in e and "MASTER_PORT" not in e for e in cpu)
    gpu = [_worker_env(i, 3, ["4", "5"]) for i in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in gpu] == ["4", "5", "4"]
    assert all("OMP_NUM_THREADS" not in e for e in gpu)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert _worker_env(0, 4, [])["OMP_NUM_THREADS"] == "2"  # the user's setting wins
