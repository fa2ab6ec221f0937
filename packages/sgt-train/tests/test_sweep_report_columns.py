"""The sweep report's tables show the paper's ablation columns: perception and reasoning
aggregates, GenEval position accuracy and segmentation mIoU, read from the runs' EvalReports,
whether a table lists no columns or names the aggregates ``perception`` / ``reasoning``."""

from __future__ import annotations

from pathlib import Path

from sgt_train.sweep_report import (
    PAPER_COLUMNS,
    SweepReport,
    markdown_report,
    plot_name,
    plot_sweep,
    summarize,
    table_columns,
)

_PAPER = [c["metric"] for c in PAPER_COLUMNS]


def _run(offset: float) -> dict[str, float]:
    return {
        "scene-perception/default/score": 50.0 + offset,
        "scene-reasoning/default/score": 30.0 + offset,
        "geneval/scene/position": 10.0 + offset,
        "sgt-proxy-segmentation/semantic/miou": 20.0 + offset,
        "scene-counting/default/accuracy": 40.0 + offset,
    }


def _report(tables: list[dict[str, object]]) -> SweepReport:
    runs = {
        "base": {0: _run(0.0), 1: _run(1.0), 2: _run(2.0)},
        "seg": {0: _run(3.0), 1: _run(5.0), 2: _run(4.0)},
    }
    headline = ["scene-counting/default/accuracy", *_PAPER]
    return summarize(
        "t", "t.yaml", ["base", "seg"], {"base": "base", "seg": "+ segmentation"}, [0, 1, 2],
        runs, [("seg", "base")], tables, headline,
    )  # fmt: skip


def test_a_table_without_columns_leads_with_the_paper_columns() -> None:
    report = _report([{"title": "Proxy-task ablation", "arms": ["base", "seg"], "columns": []}])
    columns = table_columns(report, report.tables[0])
    assert [c["metric"] for c in columns[:4]] == _PAPER
    assert [c["label"] for c in columns[:4]] == [
        "perception", "reasoning", "GenEval position", "seg mIoU",
    ]  # fmt: skip
    assert [c["metric"] for c in columns[4:]] == ["scene-counting/default/accuracy"]
    markdown = markdown_report(report)
    header = next(line for line in markdown.splitlines() if line.startswith("| arm |"))
    assert header.startswith("| arm | vs | perception | reasoning | GenEval position | seg mIoU |")
    seg = next(line for line in markdown.splitlines() if line.startswith("| + segmentation |"))
    assert seg.split(" | ")[2].startswith("54.0 ± ")  # perception: mean of 53, 55, 54


def test_perception_and_reasoning_columns_read_the_eval_report_aggregates() -> None:
    columns = [{"label": "P", "metric": "perception"}, {"label": "R", "metric": "reasoning"}]
    report = _report([{"title": "x", "arms": ["base", "seg"], "columns": columns}])
    got = table_columns(report, report.tables[0])
    assert [c["metric"] for c in got] == _PAPER[:2]
    assert columns[0]["metric"] == "perception"  # the table spec itself is left alone


def test_the_markdown_links_each_written_plot_under_its_table(tmp_path: Path) -> None:
    report = _report([{"title": "Proxy-task ablation", "arms": ["base", "seg"], "columns": []}])
    written = plot_sweep(report, tmp_path / "plots")
    columns = table_columns(report, report.tables[0])
    # one plot per column, named after its metric, every one a PNG
    assert [p.name for p in written] == [plot_name(0, c["metric"]) for c in columns]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    assert plot_name(0, "scene-pope/overall/f1_mean") == "table0-scene-pope_overall_f1_mean.png"
    markdown = markdown_report(report, [str(p.relative_to(tmp_path)) for p in written])
    line = next(x for x in markdown.splitlines() if x.startswith("Plots"))
    assert "[perception](plots/table0-scene-perception_default_score.png)" in line
    assert line.count("](plots/") == len(columns)
    assert "Plots" not in markdown_report(report)  # nothing linked that was not written
