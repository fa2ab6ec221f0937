"""The prepared GPU scripts run on the CPU in their ``--smoke`` mode and print usable figures."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench"


def _figures(output: str) -> dict[str, float]:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, output
    pairs = (item.split("=", 1) for item in lines[0].removeprefix("RESULT ").split())
    return {key: float(value) for key, value in pairs}


def _smoke(script: str) -> tuple[str, dict[str, float]]:
    """Run a GPU script with ``--smoke`` on the CPU; its stdout and RESULT figures."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout, _figures(proc.stdout)


def test_omnigen2_gpu_check_smoke() -> None:
    """The full-size OmniGen2 check's code path with the tiny configs, fp32, no CUDA."""
    stdout, figures = _smoke("gpu_check_omnigen2.py")
    expected = {
        "step_ms",
        "samples_per_s",
        "peak_mem_gib",
        "tflop_per_step",
        "model_tflop_per_step",
        "achieved_tflops",
        "peak_tflops",
        "fraction_of_peak",
        "loss",
    }
    assert set(figures) == expected, figures
    assert all(math.isfinite(v) and v > 0 for v in figures.values()), figures
    assert 0 < figures["fraction_of_peak"] < 10, figures  # a ratio, not a unit slip
    assert "segmentation samples" in stdout
    assert "generation loss into the MLLM" in stdout


def test_bagel_gpu_check_smoke() -> None:
    """The full-size BAGEL check's code path (meta build, bf16 materialisation, packed collate,
    forward+backward with gradient checkpointing, FLOP count) with the tiny configs, no CUDA."""
    stdout, figures = _smoke("gpu_check_bagel.py")
    expected = {
        "tokens",
        "step_s",
        "tokens_per_s",
        "peak_memory_gib",
        "step_tflop",
        "achieved_tflops",
        "peak_tflops",
        "fraction_of_peak",
        "loss",
    }
    assert set(figures) == expected, figures
    assert all(math.isfinite(v) and v > 0 for v in figures.values()), figures
    assert 0 < figures["fraction_of_peak"] < 10, figures  # a ratio, not a unit slip
    assert figures["tokens"] >= 256  # the smoke run's pack budget
    assert "seg, " in stdout  # the pack mixes both kinds
    assert "VQA)" in stdout
