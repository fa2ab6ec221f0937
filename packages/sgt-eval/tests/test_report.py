"""EvalReport round-trips through JSON and refuses inconsistent results."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from sgt_eval import BenchmarkResult, EvalReport, EvalSettings


def _pope() -> BenchmarkResult:
    return BenchmarkResult(
        benchmark="pope",
        split="adversarial",
        kind="understanding",
        metrics={"accuracy": 85.7, "f1": 84.9, "yes_ratio": 47.0},
        primary_metric="f1",
        num_items=3000,
        protocol="official POPE: first-word yes/no parse, yes-ratio on predictions",
    )


def test_report_round_trips_through_a_file(tmp_path: Path) -> None:
    report = EvalReport(
        model_name="sgt-tiny",
        model_kind="reference",
        created_at=datetime(2026, 11, 27, tzinfo=UTC),
        sgt_versions={"sgt-eval": "0.1.0"},
        settings=EvalSettings(seed=1, precision="bf16"),
        results=(_pope(),),
    )
    report.write(tmp_path / "r" / "report.json")
    again = EvalReport.read(tmp_path / "r" / "report.json")
    assert again == report
    assert again.result("pope", "adversarial").metrics["f1"] == 84.9
    with pytest.raises(KeyError, match="mmvp"):
        again.result("mmvp")


def test_primary_metric_must_be_reported() -> None:
    with pytest.raises(ValidationError, match="primary_metric 'accuracy'"):
        BenchmarkResult(
            benchmark="mmvp",
            kind="understanding",
            metrics={"pair_accuracy": 50.0},
            primary_metric="accuracy",
            num_items=300,
            protocol="pairs",
        )


def test_repeated_benchmark_split_is_refused() -> None:
    with pytest.raises(ValidationError, match="pope/adversarial"):
        EvalReport(
            model_name="m",
            model_kind="reference",
            created_at=datetime.now(UTC),
            results=(_pope(), _pope()),
        )
