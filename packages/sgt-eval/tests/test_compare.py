"""``sgt-eval compare``: the markdown table in the paper's layout with deltas, and valid PNGs."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from sgt_eval import BenchmarkResult, EvalReport
from sgt_eval.cli import main
from sgt_eval.compare import compare_markdown


def _r(
    bench: str,
    metrics: dict[str, float],
    primary: str,
    split: str = "default",
    kind: str = "understanding",
    **kw: object,
) -> BenchmarkResult:
    return BenchmarkResult(
        benchmark=bench,
        split=split,
        kind=kind,
        metrics=metrics,  # type: ignore[arg-type]
        primary_metric=primary,
        num_items=10,
        protocol="p",
        **kw,
    )  # type: ignore[arg-type]


def _report(
    name: str, cv: float, mmvp: float, pope: float, geneval: float, sc: float
) -> EvalReport:
    return EvalReport(
        model_name=name,
        model_kind="reference",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        results=(
            _r("cv-bench", {"overall": cv, "2d": cv + 1, "3d": cv - 1}, "overall"),
            _r("mmvp", {"pair_accuracy": mmvp, "question_accuracy": 80.0}, "pair_accuracy"),
            _r("pope", {"f1_mean": pope}, "f1_mean", split="overall"),
            _r("geneval", {"overall": geneval}, "overall", split="original", kind="generation"),
            _r("geneval", {"overall": geneval + 2}, "overall", split="long", kind="generation"),
            _r(
                "gedit-bench",
                {"SC": sc, "PQ": 7.0, "O": 6.0},
                "O",
                split="en-fullset",
                kind="generation",
                judge="qwen2.5-vl-72b-awq",
            ),
            _r(
                "sgt-proxy-segmentation",
                {"miou": 40.0},
                "miou",
                split="semantic",
                kind="proxy",
                deviations=("toy",),
            ),
        ),
    )


BAGEL = _report("BAGEL", 73.2, 70.0, 85.7, 78.2, 7.5)
SGT = _report("BAGEL+SGT", 79.2, 68.0, 88.3, 81.0, 7.25)


def test_markdown_layout_and_deltas() -> None:
    md = compare_markdown([BAGEL, SGT])
    lines = md.splitlines()
    und = lines.index("## Understanding")
    assert lines[und + 2] == "| Model | CV-Bench | CV-Bench 2D | CV-Bench 3D | MMVP | POPE |"
    assert lines[und + 4] == "| BAGEL | 73.2 | 74.2 | 72.2 | 70.0 | 85.7 |"
    assert (
        lines[und + 5]
        == "| BAGEL+SGT | 79.2 (+6.0) | 80.2 (+6.0) | 78.2 (+6.0) | 68.0 (-2.0) | 88.3 (+2.6) |"
    )
    gen = lines.index("## Generation")
    assert lines[gen + 2] == "| Model | GenEval | GenEval† | GEdit SC | GEdit PQ | GEdit O |"
    assert (
        lines[gen + 5]
        == "| BAGEL+SGT | 81.0 (+2.8) | 83.0 (+2.8) | 7.2 (-0.2) | 7.0 (+0.0) | 6.0 (+0.0) |"
    )
    assert "## Proxy task" in md
    assert "- gedit-bench/en-fullset (all models): judged by qwen2.5-vl-72b-awq" in md
    assert "- sgt-proxy-segmentation/semantic (all models): toy" in md


def test_missing_benchmark_shows_a_dash() -> None:
    partial = EvalReport(
        model_name="partial",
        model_kind="reference",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        results=(_r("mmvp", {"pair_accuracy": 60.0}, "pair_accuracy"),),
    )
    md = compare_markdown([BAGEL, partial])
    assert "| partial | – | – | – | 60.0 (-10.0) | – |" in md


def test_cli_compare_writes_markdown_and_pngs(tmp_path: Path) -> None:
    BAGEL.write(tmp_path / "a.json")
    SGT.write(tmp_path / "b.json")
    assert (
        main(
            [
                "compare",
                str(tmp_path / "a.json"),
                str(tmp_path / "b.json"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    assert (out / "comparison.md").read_text() == compare_markdown([BAGEL, SGT])
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "radar_understanding.png" in pngs
    assert "radar_generation.png" in pngs
    assert {"bar_cv_bench.png", "bar_mmvp.png", "bar_geneval.png", "bar_gedit_o.png"} <= set(pngs)
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.size[0] > 100
            assert im.size[1] > 100


def test_compare_needs_a_report() -> None:
    with pytest.raises(ValueError, match="at least one report"):
        compare_markdown([])
