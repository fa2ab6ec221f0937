"""The demo summary's noise bands and its exceed / not-exceed decisions, on constructed reports.

The half-width is checked against the Agresti-Coull formula written out here; a difference is
notable exactly when ``|a - b| > sqrt(h_a^2 + h_b^2)``; aggregate rows carry
``sqrt(sum h_i^2) / k``; rows that are not proportions (F1, mIoU) carry no band and are never
notable; the written summary states the rule and lists exactly the notable differences.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sgt_eval.harness import build_report
from sgt_eval.report import BenchmarkResult, EvalReport, EvalSettings
from sgt_train.demo.evaluation import aggregate_results
from sgt_train.demo.report import (
    binomial_half_width,
    difference_exceeds,
    notable_differences,
    summary_rows,
    write_report,
)

_Z = 1.959963984540054


def _agresti_coull(percent: float, n: int) -> float:
    successes = percent / 100 * n
    n_adj = n + _Z * _Z
    p_adj = (successes + _Z * _Z / 2) / n_adj
    return 100 * _Z * math.sqrt(p_adj * (1 - p_adj) / n_adj)


@pytest.mark.parametrize(
    ("percent", "n"), [(50.0, 400), (0.0, 400), (100.0, 37), (12.5, 8), (73.25, 1200)]
)
def test_half_width_is_the_agresti_coull_interval(percent: float, n: int) -> None:
    assert binomial_half_width(percent, n) == pytest.approx(_agresti_coull(percent, n), rel=1e-12)


def test_400_items_give_a_band_of_at_most_5_points() -> None:
    assert binomial_half_width(50.0, 400) <= 5.0
    assert binomial_half_width(50.0, 300) > 5.0
    assert max(binomial_half_width(p, 400) for p in np.linspace(0, 100, 101)) <= 5.0


def test_half_width_needs_items() -> None:
    with pytest.raises(ValueError, match="needs items"):
        binomial_half_width(50.0, 0)


@pytest.mark.parametrize(
    ("a", "h_a", "b", "h_b", "exceeds"),
    [(60.0, 4.0, 54.0, 3.0, True), (60.0, 4.0, 55.0, 3.0, False), (55.0, 3.0, 60.0, 4.0, False),
     (50.0, 4.0, 60.0, 3.0, True), (1.0, 0.0, 0.0, 0.0, True), (0.0, 0.0, 0.0, 0.0, False)],
)  # fmt: skip
def test_difference_exceeds_when_larger_than_the_combined_band(
    a: float, h_a: float, b: float, h_b: float, exceeds: bool
) -> None:
    assert difference_exceeds(a, h_a, b, h_b) is exceeds


def _accuracy(name: str, value: float, n: int, baseline: float = 30.0) -> BenchmarkResult:
    return BenchmarkResult(
        benchmark=name,
        kind="understanding",
        metrics={"accuracy": value, "majority_baseline": baseline},
        primary_metric="accuracy",
        num_items=n,
        protocol="test",
    )


def _pope(f1: float, accuracy: float, n: int, yes_ratio: float) -> BenchmarkResult:
    return BenchmarkResult(
        benchmark="scene-pope",
        split="overall",
        kind="understanding",
        metrics={"f1_mean": f1, "accuracy_mean": accuracy, "yes_ratio_mean": yes_ratio},
        primary_metric="f1_mean",
        num_items=n,
        protocol="test",
    )


#: model -> (counting, colour, POPE F1, POPE accuracy, count-sum)
_SCORES = {
    "base": (50.0, 40.0, 66.7, 50.0, 20.0),
    "control": (52.0, 41.0, 10.0, 51.0, 21.0),  # POPE yes-ratio 90 below: biased
    "sgt": (60.0, 49.0, 90.0, 52.0, 22.0),
}


def _reports() -> dict[str, EvalReport]:
    out = {}
    for model, (counting, color, f1, pope_acc, total) in _SCORES.items():
        results = [
            _pope(f1, pope_acc, 1200, 90.0 if model == "control" else 50.0),
            _accuracy("scene-counting", counting, 400),
            _accuracy("scene-color", color, 400),
            _accuracy("scene-count-sum", total, 450),
        ]
        results += aggregate_results(results)
        out[model] = build_report(model, "reference", EvalSettings(), results)
    return out


def test_rows_carry_bands_and_notable_differences_follow_the_rule() -> None:
    reports = _reports()
    rows = {(r.benchmark, r.metric): r for r in summary_rows(reports)}
    assert list(rows)[:2] == [("scene-perception", "score"), ("scene-reasoning", "score")]
    counting = rows[("scene-counting", "accuracy")]
    assert counting.baseline == 30.0
    assert counting.half_widths is not None
    for model, scores in _SCORES.items():
        assert counting.half_widths[model] == pytest.approx(_agresti_coull(scores[0], 400))
    # POPE F1 is not a proportion of items: no band, never notable, however large the gap
    assert rows[("scene-pope", "f1_mean")].half_widths is None
    assert rows[("scene-pope", "accuracy_mean")].baseline == 50.0
    # perception = mean of POPE accuracy, counting, colour; its band sqrt(sum h_i^2) / k
    perception = rows[("scene-perception", "score")]
    assert perception.half_widths is not None
    for model, (counting_v, color_v, _f1, pope_acc, _t) in _SCORES.items():
        assert perception.values[model] == pytest.approx((pope_acc + counting_v + color_v) / 3)
        parts = [
            _agresti_coull(pope_acc, 1200),
            _agresti_coull(counting_v, 400),
            _agresti_coull(color_v, 400),
        ]
        expected = math.sqrt(sum(h * h for h in parts)) / 3
        assert perception.half_widths[model] == pytest.approx(expected)

    notable = {(d.row.benchmark, d.row.metric, d.model, d.against) for d in notable_differences(
        list(rows.values()))}  # fmt: skip
    expected_notable = set()
    for row in rows.values():
        if row.half_widths is None or row.metric == "yes_ratio_mean":
            continue
        for model, against in (("control", "base"), ("sgt", "base"), ("sgt", "control")):
            delta = abs(row.values[model] - row.values[against])
            band = math.hypot(row.half_widths[model], row.half_widths[against])
            if delta > band:
                expected_notable.add((row.benchmark, row.metric, model, against))
    assert notable == expected_notable
    # the constructed numbers: SGT's counting beats both (10 and 8 points over bands of ~6.8),
    # the control's 2 points over the base do not; colour's 9 and 8 do, 1 does not
    assert ("scene-counting", "accuracy", "sgt", "base") in notable
    assert ("scene-counting", "accuracy", "sgt", "control") in notable
    assert ("scene-counting", "accuracy", "control", "base") not in notable
    assert ("scene-color", "accuracy", "control", "base") not in notable
    assert not any(n[0] == "scene-pope" and n[1] == "f1_mean" for n in notable)
    assert not any(n[0] == "scene-count-sum" for n in notable)
    assert not any(n[1] == "yes_ratio_mean" for n in notable)  # a bias, not a score


class _Renderer:
    def render(self, labels: Any) -> np.ndarray:
        return np.zeros((*np.asarray(labels).shape, 3), dtype=np.uint8)


def test_summary_states_the_rule_and_lists_exactly_the_notable_differences(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    from sgt_train.demo.base import read_provenance, shipped_base
    from sgt_train.demo.evaluation import SegmentationSet
    from sgt_train.demo.pipeline import DEMO_SIZES, _arm_config

    reports = _reports()
    runs = {}
    for model in ("control", "sgt"):
        (tmp_path / "runs" / model).mkdir(parents=True)
        (tmp_path / "runs" / model / "metrics.jsonl").write_text(
            json.dumps({"step": 1, "understanding/ce": 1.0}) + "\n", encoding="utf-8"
        )
        runs[model] = tmp_path / "runs" / model
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    seg = SegmentationSet(
        images=(image,), labels=(np.zeros((8, 8), np.int64),), renderer=_Renderer()
    )
    summary = write_report(
        tmp_path / "report",
        reports,
        runs=runs,
        segmentation=seg,
        generated_maps={m: [image] for m in reports},
        size=DEMO_SIZES["tiny"],
        seeds={"world": 0},
        stage_seconds={"data": 1.0},
        configs={
            m: _arm_config(m, tmp_path, DEMO_SIZES["tiny"], 0, shipped_base())
            for m in ("control", "sgt")
        },
        base=read_provenance(),
    )
    text = summary.read_text(encoding="utf-8")
    assert "|a − b| > sqrt(h_a^2 + h_b^2)" in text
    line = next(s for s in text.splitlines() if s.startswith("Differences that exceed"))
    listed = line.split(": ", 1)[1].rstrip(".").split("; ")
    assert listed == [str(d) for d in notable_differences(summary_rows(reports))]
    assert len(listed) >= 3
    # every value cell of a proportion row shows its band
    counting = next(s for s in text.splitlines() if s.startswith("| scene-counting |"))
    assert f"50.0 ± {_agresti_coull(50.0, 400):.1f}" in counting
    assert "**+10.0" in counting  # SGT − base exceeds its band: bold
