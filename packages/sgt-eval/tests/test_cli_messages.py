"""`sgt-eval` reports a bad input in one line naming it, with a non-zero status and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sgt_eval.cli import main


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sgt_eval.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_message(proc: subprocess.CompletedProcess[str], *names: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for name in names:
        assert name in proc.stderr, proc.stderr


def test_compare_names_a_missing_report(tmp_path: Path) -> None:
    proc = _cli("compare", "runs/base/report.json", "--out", "cmp", cwd=tmp_path)
    _assert_message(proc, "sgt-eval compare: error: runs/base/report.json: no such file")
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [('{"loss": 1.0}', "not an EvalReport"), ("step,loss\n1,2\n", "not JSON")],
)
def test_compare_names_a_file_that_is_not_a_report(
    tmp_path: Path, content: str, expected: str
) -> None:
    (tmp_path / "metrics.json").write_text(content)
    proc = _cli("compare", "metrics.json", "--out", "cmp", cwd=tmp_path)
    _assert_message(proc, f"metrics.json: {expected}")


def test_run_names_a_missing_benchmark_path(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"kind": "reference", "size": "tiny"}))
    proc = _cli(
        "run",
        "--model-config",
        "model.json",
        "--bench",
        "pope=/data/POPE",
        "--out",
        "r.json",
        cwd=tmp_path,
    )
    _assert_message(proc, "no such file or folder: --bench pope=/data/POPE")
    assert not (tmp_path / "r.json").exists()


def test_run_without_a_benchmark_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"kind": "reference", "size": "tiny"}))
    proc = _cli("run", "--model-config", "model.json", "--out", "r.json", cwd=tmp_path)
    _assert_message(proc, "nothing to evaluate: give --bench NAME=PATH", "cv-bench")
    assert not (tmp_path / "r.json").exists()


def test_abbreviated_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["compare", "a.json", "--o", "out"])
    assert info.value.code == 2
    assert "--o" in capsys.readouterr().err


def test_benchmark_loaders_import_from_the_package() -> None:
    from sgt_eval.benchmarks import BENCHMARK_LOADERS, load_cv_bench, load_pope

    assert BENCHMARK_LOADERS["cv-bench"] is load_cv_bench
    assert BENCHMARK_LOADERS["pope"] is load_pope
