"""Compare evaluation reports: markdown tables in the paper's layout, with deltas vs the first."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sgt_eval.report import EvalReport

__all__ = [
    "PAPER_COLUMNS",
    "Column",
    "column_value",
    "columns_for",
    "compare_markdown",
    "write_comparison",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    """One table column: a benchmark split and the metric shown."""

    title: str
    benchmark: str
    split: str
    metric: str | None = None  # None: the result's primary metric
    kind: str = "understanding"


#: The paper's column order (understanding, then generation); others follow in report order.
PAPER_COLUMNS: tuple[Column, ...] = (
    Column("CV-Bench", "cv-bench", "default"),
    Column("CV-Bench 2D", "cv-bench", "default", "2d"),
    Column("CV-Bench 3D", "cv-bench", "default", "3d"),
    Column("MMVP", "mmvp", "default"),
    Column("VSR", "vsr", "zeroshot-test"),
    Column("SIBench", "sibench", "default"),
    Column("POPE", "pope", "overall"),
    Column("HallusionBench", "hallusionbench", "default"),
    Column("MMStar", "mmstar", "default"),
    Column("RealWorldQA", "realworldqa", "default"),
    Column("MathVista", "mathvista", "testmini"),
    Column("GenEval", "geneval", "original", kind="generation"),
    Column("GenEval†", "geneval", "long", kind="generation"),
    Column("GEdit SC", "gedit-bench", "en-fullset", "SC", "generation"),
    Column("GEdit PQ", "gedit-bench", "en-fullset", "PQ", "generation"),
    Column("GEdit O", "gedit-bench", "en-fullset", "O", "generation"),
)


def column_value(report: EvalReport, col: Column) -> float | None:
    try:
        result = report.result(col.benchmark, col.split)
    except KeyError:
        return None
    return result.metrics.get(col.metric or result.primary_metric)


def columns_for(reports: Sequence[EvalReport]) -> list[Column]:
    """The paper's columns present in any report, then every other benchmark split."""
    present = {(r.benchmark, r.split) for rep in reports for r in rep.results}
    cols = [c for c in PAPER_COLUMNS if (c.benchmark, c.split) in present]
    known = {(c.benchmark, c.split) for c in PAPER_COLUMNS}
    seen: set[tuple[str, str]] = set()
    for rep in reports:
        for r in rep.results:
            key = (r.benchmark, r.split)
            if key in known or key in seen:
                continue
            seen.add(key)
            title = r.benchmark if r.split == "default" else f"{r.benchmark} ({r.split})"
            cols.append(Column(title, r.benchmark, r.split, None, r.kind))
    return cols


def _cell(value: float | None, base: float | None, first: bool) -> str:
    if value is None:
        return "–"
    if first or base is None:
        return f"{value:.1f}"
    return f"{value:.1f} ({value - base:+.1f})"


def _protocol_notes(reports: Sequence[EvalReport]) -> list[str]:
    """Each deviation and judge once, with the models it applies to (or "all models")."""
    owners: dict[str, list[str]] = {}
    for rep in reports:
        for r in rep.results:
            texts = [*r.deviations, *([f"judged by {r.judge}"] if r.judge else [])]
            for text in texts:
                models = owners.setdefault(f"{r.benchmark}/{r.split}: {text}", [])
                if rep.model_name not in models:
                    models.append(rep.model_name)
    names = [rep.model_name for rep in reports]
    lines = []
    for note, models in sorted(owners.items()):
        who = "all models" if len(names) > 1 and models == names else ", ".join(models)
        where, _, text = note.partition(": ")
        lines.append(f"- {where} ({who}): {text}")
    return lines


def compare_markdown(reports: Sequence[EvalReport]) -> str:
    """Markdown tables (understanding, generation, proxy) with deltas against the first report."""
    if not reports:
        raise ValueError("compare needs at least one report")
    cols = columns_for(reports)
    base = reports[0]
    lines = [f"# Evaluation comparison (deltas vs {base.model_name})", ""]
    for kind, heading in (
        ("understanding", "Understanding"),
        ("generation", "Generation"),
        ("proxy", "Proxy task"),
    ):
        kcols = [c for c in cols if c.kind == kind]
        if not kcols:
            continue
        lines += [f"## {heading}", ""]
        lines.append("| Model | " + " | ".join(c.title for c in kcols) + " |")
        lines.append("|---|" + "---:|" * len(kcols))
        for i, rep in enumerate(reports):
            cells = [_cell(column_value(rep, c), column_value(base, c), i == 0) for c in kcols]
            lines.append(f"| {rep.model_name} | " + " | ".join(cells) + " |")
        lines.append("")
    notes = _protocol_notes(reports)
    if notes:
        lines += ["## Protocol notes", "", *notes, ""]
    return "\n".join(lines)


def write_comparison(
    reports: Sequence[EvalReport], out_dir: str | Path, plots: bool = True
) -> list[Path]:
    """Write ``comparison.md`` and (unless ``plots=False``) the PNG figures; the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "comparison.md"
    md.write_text(compare_markdown(reports), encoding="utf-8")
    written = [md]
    if plots:
        from sgt_eval.plots import plot_bars, plot_radar

        cols = columns_for(reports)
        written += plot_bars(reports, cols, out)
        for kind in ("understanding", "generation"):
            path = plot_radar(
                reports, [c for c in cols if c.kind == kind], out / f"radar_{kind}.png"
            )
            if path is not None:
                written.append(path)
    _log.info("wrote %d files to %s", len(written), out)
    return written
