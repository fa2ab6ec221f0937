"""Every mistake a newcomer makes with `sgt-train` gets a message naming the offending thing, a
non-zero exit status and no traceback; `validate` opens the stores and reports what `fit` would
otherwise die of inside the training loop; Ctrl-C stops `fit` with one line and status 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgt_train.cli import main
from sgt_train.demo.stores import DemoStores, build_stores
from sgt_train.recipes import recipe_names

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def sigint_deliverable() -> Iterator[None]:
    """Children that can receive SIGINT: a job started in the background by a non-interactive
    shell (``cmd &``, ``nohup``) inherits SIGINT ignored, and so would every process it spawns
    (an ignored signal survives ``exec``), which makes a Ctrl-C test fail for its runner's sake."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> DemoStores:
    return build_stores(tmp_path_factory.mktemp("data"), num_train=12, num_eval=2, seed=0)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    return env


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sgt_train.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def _assert_message(proc: subprocess.CompletedProcess[str], *names: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    for name in names:
        assert name in proc.stderr, proc.stderr


def _fit_overrides(stores: DemoStores, out: Path, seg: Path | None = None) -> list[str]:
    sets = [
        f"data.sources.0.store={seg or stores.scenes}",
        f"data.sources.1.store={stores.vqa}",
        f"output_dir={out}",
        "schedule.warmup_steps=0",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
    ]
    return [a for s in sets for a in ("--set", s)]


def test_unknown_recipe_says_so_and_lists_the_recipes(tmp_path: Path) -> None:
    proc = _cli("fit", "tiny-sgtt", cwd=tmp_path)
    _assert_message(
        proc, "tiny-sgtt: no such file and no shipped recipe", "did you mean 'tiny-sgt'"
    )
    assert all(name in proc.stderr for name in recipe_names())
    assert proc.returncode == 2


def test_unknown_field_suggests_the_nearest_and_names_the_recipe_once(tmp_path: Path) -> None:
    proc = _cli("validate", "tiny-sgt", "--set", "optimizer.learning_rate=1e-3", cwd=tmp_path)
    _assert_message(proc, "optimizer.learning_rate: no such field; did you mean optimizer.lr?")
    assert proc.stderr.count("tiny-sgt.yaml") == 1, proc.stderr


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("batch_size=2", "did you mean micro_batch_size?"),
        ("model.sizes=tiny", "did you mean model.size?"),
        ("data.sources.0.stor=x", "did you mean data.sources.0.store?"),
    ],
)
def test_nearest_field_is_suggested(
    override: str, suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "tiny-sgt", "--config-only", "--set", override]) == 2
    assert suggestion in capsys.readouterr().err


def test_abbreviated_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate", "tiny-sgt", "--config"])  # not --config-only
    assert info.value.code == 2
    assert "unrecognized arguments: --config" in capsys.readouterr().err


def _problem_case(case: str, root: Path, stores: DemoStores) -> tuple[list[str], list[str]]:
    """(overrides, substrings of the expected message) of one kind of unusable mixture."""
    if case == "missing":
        return [], ["store stores/scenes", "does not exist", "data.sources.1.store ('vqa')"]
    if case == "not a store":
        (root / "empty").mkdir()
        sets = [f"data.sources.0.store={root / 'empty'}", f"data.sources.1.store={stores.vqa}"]
        return sets, [f"store {root / 'empty'}", "not a sample store", "'seg'"]
    if case == "no samples of the task":
        sets = [f"data.sources.0.store={stores.scenes}", f"data.sources.1.store={stores.scenes}"]
        return sets, ["source 'vqa'", f"store {stores.scenes} holds no understanding samples"]
    if case == "where matches nothing":
        sets = [
            f"data.sources.0.store={stores.scenes}",
            f"data.sources.1.store={stores.vqa}",
            "data.sources.1.where={question_type: [existance]}",
        ]
        return sets, ["data.sources.vqa.where", "'existance'", "'existence'", "'counting'"]
    sets = [
        f"data.sources.0.store={stores.scenes}",
        f"data.sources.1.store={stores.vqa}",
        "micro_batch_size=8",  # 12 samples: two segmentation steps, the pattern's vqa never comes
    ]
    return sets, ["source 'vqa' gets 0 samples per epoch", "anchor source 'seg' (12 samples"]


@pytest.mark.parametrize(
    "case",
    ["missing", "not a store", "no samples of the task", "where matches nothing", "0 per epoch"],
)
def test_validate_reports_unusable_stores(
    case: str,
    stores: DemoStores,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    sets, expected = _problem_case(case, tmp_path, stores)
    assert main(["validate", "tiny-sgt", *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert "the data mixture cannot be trained" in err
    for text in expected:
        assert text in err, err


def test_validate_prints_the_per_epoch_counts(
    stores: DemoStores, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [f"data.sources.0.store={stores.scenes}", f"data.sources.1.store={stores.vqa}"]
    before = {p: p.stat().st_mtime_ns for p in stores.scenes.rglob("*")}
    assert main(["validate", "tiny-sgt", *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert "4 step(s) per epoch on 1 process at micro_batch_size 4" in out, out
    assert "seg  segmentation/instance" in out
    assert "12 per epoch of 12 available" in out  # seg, seg, vqa, seg: the anchor's last step
    assert "4 per epoch of" in out  # ends the epoch, so vqa gets one micro-batch
    assert {p: p.stat().st_mtime_ns for p in stores.scenes.rglob("*")} == before


def test_fit_refuses_a_missing_store_before_starting(tmp_path: Path) -> None:
    proc = _cli("fit", "tiny-sgt", "--set", f"output_dir={tmp_path / 'runs'}", cwd=tmp_path)
    _assert_message(proc, "store stores/scenes", "does not exist")
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_fit_data_error_is_one_line(stores: DemoStores, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(stores.scenes), str(damaged)], check=True)
    chunk = damaged / "image" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 4])
    proc = _cli(
        "fit",
        "tiny-sgt",
        "--set",
        "steps=4",
        *_fit_overrides(stores, tmp_path / "runs", seg=damaged),
        cwd=tmp_path,
    )
    _assert_message(proc, "sgt-train fit: error:", f"{damaged}: array 'image' cannot be read")
    assert proc.returncode == 1


@pytest.mark.usefixtures("sigint_deliverable")
def test_ctrl_c_stops_fit_with_one_line_and_status_130(stores: DemoStores, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["fit", "tiny-sgt", "--set", "checkpoint.every=2", *_fit_overrides(stores, runs)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgt_train.cli", *args],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoints = runs / "tiny-sgt" / "checkpoints"
    deadline = time.monotonic() + 150
    while not list(checkpoints.glob("step_*")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 150 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("sgt-train fit: interrupted after step "), last
    assert "the same command resumes from" in last
    assert str(checkpoints / "step_") in last


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgt_train.cli", "validate", "tiny-sgt", "--config-only", "--print"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # as `| head` does, before the command has written
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err
    assert b"BrokenPipeError" not in err, err


@pytest.mark.usefixtures("sigint_deliverable")
def test_ctrl_c_stops_the_demo_with_one_line_and_status_130(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--size", "tiny", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgt_train.cli", *args],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 150
    while not (out / "runs" / "control").is_dir():  # the data is written, training has started
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the demo did not reach training within 150 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130, or ended by SIGINT itself, which a shell reports as the same 130 (seen once in CI:
    # Python re-raises SIGINT at exit when an interrupt arrives during interpreter shutdown)
    assert proc.returncode in (130, -signal.SIGINT), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1] == (
        "sgt-train demo: interrupted during stage 'train control'; the same command runs the demo "
        "again from the start (it does not resume)"
    ), err[-3000:]
