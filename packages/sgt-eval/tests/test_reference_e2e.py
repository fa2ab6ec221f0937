"""End to end: the tiny reference model on benchmark files in every published format."""

import json
from pathlib import Path

import pytest

from sgt_eval import EvalReport, EvalSettings
from sgt_eval.benchmarks.understanding import BENCHMARK_LOADERS
from sgt_eval.cli import main
from sgt_eval.detectors import ColorBlobDetector, NearestColorClassifier
from sgt_eval.harness import build_report, evaluate_understanding, run_geneval
from sgt_eval.scoring.geneval import GenEvalPrompt
from sgt_eval_shapeworld import write_benchmark_files

registry = pytest.importorskip("sgt_models.registry", reason="sgt_models.registry has not landed")


@pytest.mark.slow
def test_reference_model_end_to_end(tmp_path: Path) -> None:
    import torch

    from sgt_models import ReferenceAdapterConfig

    torch.manual_seed(0)
    adapter = registry.build_adapter(ReferenceAdapterConfig(size="tiny"))
    specs = write_benchmark_files(tmp_path / "data")
    settings = EvalSettings(
        seed=1, batch_size=4, max_new_tokens=4, num_inference_steps=2, images_per_prompt=1
    )
    results = []
    for name, kwargs in specs.items():
        bench = BENCHMARK_LOADERS[name](expected_rows=None, **kwargs)
        scored, responses = evaluate_understanding(adapter, bench, settings)
        _, again = evaluate_understanding(adapter, bench, settings)
        assert again == responses  # greedy answers under a fixed seed are reproducible
        assert bench.score(responses) == scored
        results.extend(scored)
    prompts = [
        GenEvalPrompt(0, "single_object", "a photo of a square", ({"class": "square", "count": 1},))
    ]
    gen = run_geneval(adapter, prompts, ColorBlobDetector(), NearestColorClassifier(), settings)
    assert gen.num_items == 1
    assert gen.metrics["single_object"] in (0.0, 100.0)
    report = build_report("reference-tiny", adapter.kind, settings, [*results, gen])
    assert {r.benchmark for r in report.results} == {*specs, "geneval"}
    for r in report.results:
        for metric, value in r.metrics.items():
            if metric != "judge_calls":
                assert 0.0 <= value <= 100.0, (r.benchmark, metric, value)
    report.write(tmp_path / "ref.json")
    assert EvalReport.read(tmp_path / "ref.json") == report


@pytest.mark.slow
def test_cli_run_with_reference_config(tmp_path: Path) -> None:
    specs = write_benchmark_files(tmp_path / "data")
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps({"kind": "reference", "size": "tiny"}))
    out = tmp_path / "report.json"
    rc = main(
        [
            "run",
            "--model-config",
            str(cfg),
            "--subset",
            "--max-new-tokens",
            "4",
            "--bench",
            f"mmvp={specs['mmvp']['path']}",
            "--bench",
            f"pope={specs['pope']['path']}",
            "--image-root",
            f"pope={specs['pope']['image_root']}",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = EvalReport.read(out)
    assert report.model_kind == "reference"
    assert {(r.benchmark, r.split) for r in report.results} == {
        ("mmvp", "default"),
        ("pope", "random"),
        ("pope", "adversarial"),
        ("pope", "overall"),
    }
