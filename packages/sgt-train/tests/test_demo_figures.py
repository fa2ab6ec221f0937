"""The demo's loss-curve panel keeps the control's line visible under SGT's (they coincide where
both see the same VQA micro-batches)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sgt_train.demo.report import plot_losses

pytest.importorskip("matplotlib")


def _run(folder: Path, rows: list[dict[str, float]]) -> Path:
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_control_and_sgt_curves_differ_in_style(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.figure

    saved: list[Any] = []
    original = matplotlib.figure.Figure.savefig

    def savefig(self: Any, *args: Any, **kwargs: Any) -> None:
        saved.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    same = [{"step": s, "understanding/ce": 2.0 - 0.1 * s} for s in range(1, 6)]
    runs = {
        "base": _run(tmp_path / "base", same),
        "control": _run(tmp_path / "control", same),
        "sgt": _run(tmp_path / "sgt", [*same, {"step": 6, "segmentation/mse": 0.5}]),
    }
    plot_losses(runs, tmp_path / "loss.png")
    lines = {line.get_label(): line for line in saved[0].axes[0].lines}
    control, sgt = (lines[k] for k in lines if k not in ("base",))
    assert list(control.get_ydata()) == list(sgt.get_ydata())  # the same data ...
    style = (control.get_linestyle(), control.get_marker(), control.get_linewidth())
    assert style != (sgt.get_linestyle(), sgt.get_marker(), sgt.get_linewidth())  # ... drawn apart
    assert sgt.get_linestyle() == "--"
    assert sgt.get_marker() == "o"
