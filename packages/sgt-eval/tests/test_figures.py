"""The comparison figures say what they show: one file per column (``GenEval`` and ``GenEval†``
apart), a metric and error bars on the bar charts, radar axes on their own scales with missing
values left out, legends clear of the axis labels, and protocol notes attributed per model."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sgt_eval import BenchmarkResult, EvalReport
from sgt_eval.compare import PAPER_COLUMNS, columns_for, compare_markdown
from sgt_eval.plots import plot_bars, plot_radar, standard_error

pytest.importorskip("matplotlib")


def _r(
    bench: str, split: str, metrics: dict[str, float], primary: str, **kw: Any
) -> BenchmarkResult:
    kind = "generation" if bench in ("geneval", "gedit-bench") else "understanding"
    return BenchmarkResult(
        benchmark=bench, split=split, kind=kind, metrics=metrics, primary_metric=primary,
        num_items=kw.pop("num_items", 400), protocol="p", **kw,
    )  # fmt: skip


def _report(name: str, *results: BenchmarkResult) -> EvalReport:
    return EvalReport(
        model_name=name,
        model_kind="reference",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        results=results,
    )


BASE = _report(
    "base",
    _r("geneval", "original", {"overall": 78.0}, "overall"),
    _r("geneval", "long", {"overall": 80.0}, "overall"),
    _r("gedit-bench", "en-fullset", {"SC": 7.0, "PQ": 6.5, "O": 6.0}, "O"),
    _r("mmstar", "default", {"accuracy": 50.0}, "accuracy"),
)
SGT = _report(
    "sgt",
    _r("geneval", "original", {"overall": 81.0}, "overall"),
    _r("gedit-bench", "en-fullset", {"SC": 7.5, "PQ": 6.8, "O": 6.4}, "O"),
    _r("mmstar", "default", {"accuracy": 55.0}, "accuracy", deviations=("rule-only",)),
)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every figure saved, by file name, drawn (so text extents are known)."""
    import matplotlib.figure

    saved: dict[str, Any] = {}
    original = matplotlib.figure.Figure.savefig

    def savefig(self: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        self.canvas.draw()
        saved[Path(path).name] = self
        original(self, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return saved


def test_geneval_and_its_long_split_get_their_own_files(tmp_path: Path) -> None:
    written = {p.name for p in plot_bars([BASE, SGT], columns_for([BASE, SGT]), tmp_path)}
    assert {"bar_geneval.png", "bar_geneval_dagger.png"} <= written
    assert len(written) == len(columns_for([BASE, SGT]))


def test_bars_name_the_metric_and_show_standard_errors(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    mmstar = next(c for c in PAPER_COLUMNS if c.benchmark == "mmstar")
    plot_bars([BASE, SGT], [mmstar], tmp_path)
    ax = figures["bar_mmstar.png"].axes[0]
    assert ax.get_ylabel() == "accuracy (%) ± 1 s.e."
    (bars,) = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    expected = 100 * math.sqrt(0.5 * 0.5 / 400)
    assert standard_error(BASE, mmstar) == pytest.approx(expected)
    segments = bars.lines[2][0].get_segments()
    assert segments[0][1][1] - segments[0][0][1] == pytest.approx(2 * expected)


def test_radar_scales_each_axis_and_leaves_missing_values_out(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    cols = [c for c in columns_for([BASE, SGT]) if c.kind == "generation"]
    assert plot_radar([BASE, SGT], cols, tmp_path / "radar.png") is not None
    fig = figures["radar.png"]
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "GenEval\n(0-100)"
    assert "GEdit SC\n(0-10)" in labels
    base_line, sgt_line = ax.lines[:2]
    sgt_values = list(sgt_line.get_ydata())
    assert math.isnan(sgt_values[labels.index("GenEval†\n(0-100)")])  # a gap, not a 0
    assert sgt_values[labels.index("GEdit SC\n(0-10)")] == pytest.approx(0.75)  # 7.5 of 10
    assert base_line.get_ydata()[labels.index("GenEval\n(0-100)")] == pytest.approx(0.78)
    # the legend is the figure's, below the chart, overlapping no axis label
    assert fig.legends
    assert ax.get_legend() is None
    box = fig.legends[0].get_window_extent()
    assert not any(box.overlaps(t.get_window_extent()) for t in ax.get_xticklabels())


def test_protocol_notes_say_which_model_they_belong_to() -> None:
    md = compare_markdown([BASE, SGT])
    assert "- mmstar/default (sgt): rule-only" in md
