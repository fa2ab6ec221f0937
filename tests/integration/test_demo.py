"""`sgt-train demo` end to end (tiny size), and the scene-specific evaluation glue it relies on.

The scorers are checked against the scene world's written ground truth (the LLaVA answers), never
against the demo's own output. The scene detector is tested in sgt-eval (``test_detectors.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgt_data import write_world
from sgt_eval.benchmarks.understanding import VQABenchmark
from sgt_eval.report import EvalReport
from sgt_train.config import load_run_config
from sgt_train.demo.base import shipped_base
from sgt_train.demo.evaluation import load_scene_vqa

EXPECTED_RESULTS = {
    ("scene-pope", "adversarial"),
    ("scene-pope", "popular"),
    ("scene-pope", "random"),
    ("scene-pope", "overall"),
    ("scene-counting", "default"),
    ("scene-color", "default"),
    ("scene-relation", "default"),
    ("scene-depth", "default"),
    ("scene-count-sum", "default"),
    ("scene-count-compare", "default"),
    ("scene-count-difference", "default"),
    ("scene-perception", "default"),
    ("scene-reasoning", "default"),
    ("geneval", "scene"),
    ("sgt-proxy-segmentation", "semantic"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_world(root, num_train=60, num_eval=20, seed=3)
    return root


def _scores(
    benchmark: VQABenchmark, responses: list[str]
) -> dict[tuple[str, str], dict[str, float]]:
    return {(r.benchmark, r.split): r.metrics for r in benchmark.score(responses)}


def test_scene_vqa_scoring_follows_the_answers(world: Path) -> None:
    bench = load_scene_vqa(world / "vqa" / "eval.jsonl", world)
    perfect = _scores(bench, [it.answer for it in bench.items])
    assert set(perfect) == EXPECTED_RESULTS - {
        ("geneval", "scene"),
        ("sgt-proxy-segmentation", "semantic"),
    }
    for key, metrics in perfect.items():
        primary = next(metrics[k] for k in ("accuracy", "f1", "f1_mean", "score") if k in metrics)
        assert primary == pytest.approx(100.0), key
    always_yes = _scores(bench, ["Yes"] * len(bench.items))
    assert always_yes[("scene-pope", "overall")]["yes_ratio_mean"] == pytest.approx(100.0)
    # every POPE split is balanced, as in real POPE: answering "Yes" to all is chance
    for split in ("adversarial", "popular", "random"):
        assert always_yes[("scene-pope", split)]["accuracy"] == pytest.approx(50.0), split
    # images stay whole when the question budget cuts the list
    capped = load_scene_vqa(world / "vqa" / "eval.jsonl", world, max_questions=10)
    kept = {it.fields["image_id"] for it in capped.items}
    assert sum(it.fields["image_id"] in kept for it in bench.items) == len(capped.items)


def _table_rows(summary: str) -> list[list[str]]:
    lines = [
        line
        for line in summary.splitlines()
        if line.startswith(("| scene-", "| geneval", "| sgt-proxy"))
    ]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def _number(cell: str) -> float:
    """The value of a summary cell: ``44.8 ± 6.8``, ``**-1.7 (±9.4)**`` -> the leading number."""
    m = re.match(r"\**([+-]?\d+(?:\.\d+)?)", cell)
    assert m is not None, cell
    return float(m.group(1))


def _result_key(label: str) -> tuple[str, str]:
    m = re.fullmatch(r"(\S+)(?: \((\S+)\))?", label)
    assert m is not None, label
    return m.group(1), m.group(2) or "default"


def test_demo_tiny_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sgt_train.cli",
            "demo",
            "--size",
            "tiny",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert re.search(r"total time: \d+\.\d s", proc.stdout)
    report_dir = out / "report"

    reports = {
        name: EvalReport.read(report_dir / f"{name}.json") for name in ("base", "control", "sgt")
    }
    for name, report in reports.items():
        assert {(r.benchmark, r.split) for r in report.results} == EXPECTED_RESULTS, name
        assert report.model_kind == "reference"
        assert report.settings.seed == 0

    rows = _table_rows((report_dir / "summary.md").read_text())
    assert len(rows) >= len(EXPECTED_RESULTS)
    for label, metric, items, _majority, base, control, sgt, d_base, d_control, _cb in rows:
        key = _result_key(label)
        values = {m: reports[m].result(*key).metrics[metric] for m in reports}
        assert int(items) == reports["base"].result(*key).num_items
        for cell, name in ((base, "base"), (control, "control"), (sgt, "sgt")):
            assert _number(cell) == pytest.approx(values[name], abs=0.05 + 1e-9), (
                label,
                metric,
                name,
            )
        assert _number(d_base) == pytest.approx(values["sgt"] - values["base"], abs=0.05 + 1e-9)
        assert _number(d_control) == pytest.approx(
            values["sgt"] - values["control"], abs=0.05 + 1e-9
        )

    for name in ("loss_curves.png", "segmentation_grid.png", "bar_geneval_scene.png"):
        with Image.open(report_dir / name) as im:
            im.load()
            assert 200 <= im.width <= 4000, (name, im.size)
            assert 150 <= im.height <= 4000, (name, im.size)
            assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 8, f"{name} is blank"

    # only SGT trained on segmentation, at every step; control and SGT drew the same VQA
    # samples in the same order (each VQA source's draws in one run are a prefix of the other's,
    # and the counts differ by less than one micro-batch: SGT runs three times the steps)
    def rows_of(run: str) -> list[dict]:
        return [
            json.loads(line)
            for line in (out / "runs" / run / "metrics.jsonl").read_text().splitlines()
        ]

    assert not any("segmentation/mse" in r for r in rows_of("control"))
    assert all("segmentation/mse" in r and "understanding/ce" in r for r in rows_of("sgt"))
    assert len(rows_of("sgt")) == 3 * len(rows_of("control"))
    control, sgt = _vqa_streams(out / "runs" / "control"), _vqa_streams(out / "runs" / "sgt")
    assert set(control) == set(sgt) == {"exist", "count"}
    batch = load_run_config(out / "runs" / "control" / "run_config.yaml").micro_batch_size
    for name in control:
        shorter, longer = sorted((control[name], sgt[name]), key=len)
        assert len(shorter) > 0
        assert longer[: len(shorter)] == shorter, name
        assert len(longer) - len(shorter) < batch, (name, len(control[name]), len(sgt[name]))
    # the base is the shipped one, evaluated as is
    assert reports["base"].model_path == str(shipped_base())


def _vqa_streams(run_dir: Path) -> dict[str, list[int]]:
    """Per understanding source: the store indices a run's mixture drew, in order, over its
    steps."""
    from sgt_data.mixing import MixtureSampler, build_datasets
    from sgt_data.store import SampleStore

    config = load_run_config(run_dir / "run_config.yaml")
    datasets = build_datasets(config.data, SampleStore.open)
    sampler = MixtureSampler.from_config(
        config.data, [len(d) for d in datasets], micro_batch_size=config.micro_batch_size
    )
    names = [s.name for s in config.data.sources]
    vqa = {i for i, s in enumerate(config.data.sources) if s.task.value == "understanding"}
    streams: dict[str, list[int]] = {names[i]: [] for i in vqa}
    for step in range(config.steps):
        for key in sampler.plan(step // sampler.steps_per_epoch, step % sampler.steps_per_epoch):
            if key.source in vqa:
                streams[names[key.source]].append(int(datasets[key.source].indices[key.item]))
    return streams
