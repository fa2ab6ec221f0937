"""A sweep with ``vision_pretrain``: one dense-pretrained encoder is trained once and shared by
both run seeds (or one per seed with ``seed: null``), each seed's pretrain stage starts from it
(only its vision side differs from a fresh model of the encoder's seed), a second run of the sweep
retrains nothing, and the report says what the base has seen."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sgt_train.sweep import cmd_sweep, load_sweep, run_sweep

VQA = "{name: vqa, store: '${world.vqa}', task: understanding}"


def _sweep(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "vision",
        "output_dir": str(tmp_path / "out"),
        "base": {
            "config": "tiny-sgt",
            "set": [
                f"data.sources=[{VQA}]",
                "data.pattern=[vqa]",
                "steps=2",
                "micro_batch_size=2",
                "schedule.warmup_steps=1",
                "ema.decay=0.0",
                "checkpoint.every=2",
                "checkpoint.keep_last=1",
                "logging.tensorboard=false",
                "logging.progress_bar=false",
                "model.question_film=true",
            ],
        },
        "pretrain": [],
        "vision_pretrain": {"scenes": 24, "steps": 6, "batch_size": 4, "eval_scenes": 8},
        "arms": [{"name": "base"}],
        "seeds": [0, 1],
        "world": {"num_train": 8, "num_eval": 4, "image_size": 32, "edge": False},
        "evaluation": {
            "max_questions": 6,
            "max_prompts": 1,
            "seg_images": 1,
            "inference_steps": 1,
            "max_new_tokens": 2,
        },
        **extra,
    }


def _write(tmp_path: Path, sweep: dict[str, Any]) -> Path:
    path = tmp_path / "vision.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


def test_each_seed_starts_from_its_dense_pretrained_encoder(tmp_path: Path) -> None:
    from sgt_models.reference import ReferenceAdapter
    from sgt_models.registry import build_adapter

    path = _write(tmp_path, _sweep(tmp_path))
    result = run_sweep(path)
    out = tmp_path / "out"
    record = json.loads((out / "runs" / "s0" / "_vision" / "vision.done").read_text())
    assert record["steps"] == 6
    assert record["scenes"] == 24
    assert set(record["presence_auc"]) <= {
        "circle", "square", "triangle", "star", "diamond", "hexagon",
    }  # fmt: skip
    assert record["presence_auc"]  # some class occurs in some held-out scenes, not in all
    vision = ReferenceAdapter.from_pretrained(record["export"])
    assert vision.config.question_film
    assert vision.config.image_size == 32

    sweep = load_sweep(path)
    from sgt_train.sweep import RunUnit, Stage, _stage_config, _store_paths

    unit = RunUnit("_pretrain", 0, (Stage(name="pretrain", set=[]),), False)
    config = _stage_config(sweep, unit, unit.stages[0], _store_paths(out / "stores"), out, None)
    torch.manual_seed(0)
    fresh: Any = build_adapter(config.model)
    trained, same = [], []
    for name, tensor in vision.state_dict().items():
        (same if torch.equal(tensor, fresh.state_dict()[name]) else trained).append(name)
    assert trained
    assert all(n.startswith(("vision_encoder.", "connector.")) for n in trained)
    assert any(n.startswith("llm.") for n in same)
    assert any(n.startswith("generator.") for n in same)

    # both seeds' pretrain stages were initialised from the one vision export
    for seed in (0, 1):
        run_config = yaml.safe_load(
            (out / "runs" / f"s{seed}" / "_pretrain" / "pretrain" / "run_config.yaml").read_text()
        )
        assert run_config["init_from"] == record["export"]
        assert run_config["seed"] == seed
    assert not (out / "runs" / "s1" / "_vision").exists()
    assert "dense class labels" in result.report.notes[0]
    assert f"seed 0: {record['mean_presence_auc']:.1f}" in result.report.notes[0]
    markdown = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert result.report.notes[0] in markdown

    again = run_sweep(path)  # nothing is retrained, the note is rebuilt from the marker
    assert (again.trained, again.evaluated) == ([], [])
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events if e["unit"] == "_vision/s0"] == ["train", "trained"]
    assert again.report.notes == result.report.notes
    assert "shared by every run seed" in result.report.notes[0]


def test_one_encoder_per_run_seed_with_seed_null(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    sweep["vision_pretrain"] = {**sweep["vision_pretrain"], "seed": None, "steps": 2}
    result = run_sweep(_write(tmp_path, sweep))
    out = tmp_path / "out"
    records = [
        json.loads((out / "runs" / f"s{s}" / "_vision" / "vision.done").read_text()) for s in (0, 1)
    ]
    assert [r["seed"] for r in records] == [0, 1]
    for seed, record in enumerate(records):
        run_config = yaml.safe_load(
            (out / "runs" / f"s{seed}" / "_pretrain" / "pretrain" / "run_config.yaml").read_text()
        )
        assert run_config["init_from"] == record["export"]
    assert "one per run seed" in result.report.notes[0]
    assert "seed 0: " in result.report.notes[0]
    assert "seed 1: " in result.report.notes[0]


def test_vision_pretrain_needs_a_pretrain_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep(tmp_path)
    del sweep["pretrain"]
    sweep["arms"] = [{"name": "a", "set": []}]
    path = _write(tmp_path, sweep)
    assert cmd_sweep(argparse.Namespace(sweep_file=str(path), verbose=False)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"sgt-train sweep: error: {path}: <root>: Value error, vision_pretrain: needs a pretrain "
        "stage (which starts from it)"
    )
