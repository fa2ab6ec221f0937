"""PNG figures of a comparison: one bar chart per benchmark column, radar charts per kind.

matplotlib is imported lazily with the Agg backend (install the ``plots`` extra).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgt_eval.compare import Column, column_value
from sgt_eval.report import EvalReport

__all__ = ["plot_bars", "plot_radar"]

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
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def plot_bars(
    reports: Sequence[EvalReport], columns: Sequence[Column], out_dir: Path
) -> list[Path]:
    """One bar chart per column: each report's value, labelled."""
    plt = _pyplot()
    written = []
    names = [r.model_name for r in reports]
    for col in columns:
        values = [column_value(r, col) for r in reports]
        fig, ax = plt.subplots(figsize=(max(3.0, 1.2 * len(reports) + 1), 3.2))
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(range(len(reports)), heights, color=[f"C{i}" for i in range(len(reports))])
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                "–" if v is None else f"{v:.1f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(reports)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(col.title)
        ax.set_ylim(
            0, max(100.0, *heights) * 1.08 if max(heights) > 10 else max(heights) * 1.2 or 1
        )
        fig.tight_layout()
        path = out_dir / f"bar_{_slug(col.title)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_radar(reports: Sequence[EvalReport], columns: Sequence[Column], path: Path) -> Path | None:
    """A radar chart of every report over the columns (needs three or more); ``None`` if fewer."""
    cols = [c for c in columns if any(column_value(r, c) is not None for r in reports)]
    if len(cols) < 3:
        _log.info("radar %s skipped: %d axes (needs 3)", path.name, len(cols))
        return None
    plt = _pyplot()
    angles = [2 * math.pi * i / len(cols) for i in range(len(cols))]
    fig = plt.figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot(projection="polar")
    top = max((column_value(r, c) or 0.0) for r in reports for c in cols)
    for i, rep in enumerate(reports):
        vals = [column_value(rep, c) or 0.0 for c in cols]
        ax.plot([*angles, angles[0]], [*vals, vals[0]], color=f"C{i}", label=rep.model_name)
        ax.fill([*angles, angles[0]], [*vals, vals[0]], color=f"C{i}", alpha=0.1)
    ax.set_xticks(angles, [c.title for c in cols], fontsize=8)
    ax.set_ylim(0, top * 1.05 if top > 0 else 1)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
