"""PNG figures of a comparison: one bar chart per benchmark column, radar charts per kind.

matplotlib is imported lazily with the Agg backend (install the ``plots`` extra).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgt_eval.compare import Column, column_value
from sgt_eval.report import EvalReport

__all__ = ["plot_bars", "plot_radar", "standard_error"]

_log = logging.getLogger(__name__)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'sgt-eval[plots]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    """A file-name stem for a title; a symbol is spelled out (``GenEval†`` -> ``geneval_dagger``)
    so that titles differing only by one get different files."""
    spelled = "".join(
        c if c.isascii() or c.isalnum() else f" {unicodedata.name(c, 'x').lower()} " for c in text
    )
    return re.sub(r"[^A-Za-z0-9]+", "_", spelled).strip("_").lower()


def _unique_names(columns: Sequence[Column]) -> list[str]:
    """One distinct stem per column (a repeated stem gets ``_2``, ``_3``...)."""
    seen: dict[str, int] = {}
    names = []
    for col in columns:
        stem = _slug(col.title) or "column"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


#: Metrics that are a percentage of items answered right: their binomial standard error is
#: the error bar when the report carries no ``<metric>_stderr`` of its own.
_PROPORTIONS = frozenset({"accuracy", "aAcc", "acc"})


def _metric_of(reports: Sequence[EvalReport], col: Column) -> str:
    if col.metric:
        return col.metric
    for rep in reports:
        try:
            return rep.result(col.benchmark, col.split).primary_metric
        except KeyError:
            continue
    return "score"


def standard_error(report: EvalReport, col: Column) -> float | None:
    """One standard error of a column's value: the report's ``<metric>_stderr`` when it has
    one, else for an accuracy in percent over ``num_items`` the binomial one; else None."""
    try:
        result = report.result(col.benchmark, col.split)
    except KeyError:
        return None
    metric = col.metric or result.primary_metric
    given = result.metrics.get(f"{metric}_stderr")
    if given is not None:
        return given
    value = result.metrics.get(metric)
    if metric not in _PROPORTIONS or value is None or result.num_items == 0:
        return None
    p = min(max(value / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / result.num_items)


def _scale(values: Sequence[float]) -> float:
    """The full scale of an axis: 1, 10 or 100 when every value fits, else the largest value."""
    top = max(values, default=0.0)
    for scale in (1.0, 10.0, 100.0):
        if top <= scale:
            return scale
    return top


def plot_bars(
    reports: Sequence[EvalReport], columns: Sequence[Column], out_dir: Path
) -> list[Path]:
    """One bar chart per column: each report's value, labelled, with ±1 standard error bars
    where one is known (see :func:`standard_error`); a missing value is a gap marked "n/a"."""
    plt = _pyplot()
    written = []
    names = [r.model_name for r in reports]
    for col, stem in zip(columns, _unique_names(columns), strict=True):
        values = [column_value(r, col) for r in reports]
        errors = [standard_error(r, col) for r in reports]
        present = [v for v in values if v is not None]
        fig, ax = plt.subplots(figsize=(max(3.0, 1.2 * len(reports) + 1), 3.4))
        heights = [v if v is not None else 0.0 for v in values]
        yerr = [
            e if e is not None and v is not None else 0.0
            for v, e in zip(values, errors, strict=True)
        ]
        bars = ax.bar(
            range(len(reports)),
            heights,
            color=[f"C{i}" for i in range(len(reports))],
            yerr=yerr if any(yerr) else None,
            capsize=4,
            error_kw={"elinewidth": 1},
        )
        for bar, v, e in zip(bars, values, yerr, strict=True):
            ax.annotate(
                "n/a" if v is None else f"{v:.1f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height() + e),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(reports)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(col.title)
        metric = _metric_of(reports, col)
        full = _scale([*present, *(v + e for v, e in zip(heights, yerr, strict=True))])
        unit = " (%)" if full == 100.0 else ""
        ax.set_ylabel(f"{metric}{unit}" + (" ± 1 s.e." if any(yerr) else ""), fontsize=8)
        ax.set_ylim(0, full * 1.1)
        fig.tight_layout()
        path = out_dir / f"bar_{stem}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_radar(reports: Sequence[EvalReport], columns: Sequence[Column], path: Path) -> Path | None:
    """A radar chart of every report over the columns (needs three or more); ``None`` if fewer.

    Each axis has its own scale (0-100, 0-10 or 0-1 as its values fit, named in its label), so
    a 0-10 metric is not squashed by 0-100 ones; a missing value is a gap in the model's line,
    never a point at 0.
    """
    cols = [c for c in columns if any(column_value(r, c) is not None for r in reports)]
    if len(cols) < 3:
        _log.info("radar %s skipped: %d axes (needs 3)", path.name, len(cols))
        return None
    plt = _pyplot()
    scales = [_scale([v for r in reports if (v := column_value(r, c)) is not None]) for c in cols]
    angles = [2 * math.pi * i / len(cols) for i in range(len(cols))]
    fig = plt.figure(figsize=(6.0, 6.4))
    ax = fig.add_subplot(projection="polar")
    for i, rep in enumerate(reports):
        raw = [column_value(rep, c) for c in cols]
        vals = [math.nan if v is None else v / s for v, s in zip(raw, scales, strict=True)]
        closed_a, closed_v = [*angles, angles[0]], [*vals, vals[0]]
        ax.plot(closed_a, closed_v, color=f"C{i}", marker="o", markersize=3, label=rep.model_name)
        if all(v is not None for v in raw):
            ax.fill(closed_a, closed_v, color=f"C{i}", alpha=0.1)
    labels = [
        f"{c.title}\n(0-{s:g})" if s in (1.0, 10.0, 100.0) else f"{c.title}\n(0-{s:.3g})"
        for c, s in zip(cols, scales, strict=True)
    ]
    ax.set_xticks(angles, labels, fontsize=8)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "", "", ""])
    ax.set_ylim(0, 1.05)
    # below the chart, where it hides no axis label
    fig.legend(loc="lower center", ncol=min(len(reports), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0.0, 0.08, 1.0, 1.0))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
