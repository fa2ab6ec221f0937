"""The held-out benchmark set is balanced and large enough, and the training mix and the images
stay exactly what they were before the benchmark set existed.

Answer correctness of every question (benchmark and training) against the decoded scene is checked
in ``test_scenes.py``; here: balance per POPE split and per yes/no or two-choice type, items per
benchmark at 240 held-out scenes, and byte-identity of the images and the training questions.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sgt_data.scene_questions import (
    PERCEPTION_TYPES,
    POPE_SPLITS,
    REASONING_TYPES,
    reasoning_questions,
    scene_questions,
)
from sgt_data.scenes import SceneConfig, WorldPaths, generate_scene, write_world

#: sha256 over (relative path + sha256) of every file of ``write_world(seed=3, 60 + 60 scenes)``
#: except ``world.json`` and the held-out questions, recorded before the benchmark set was added:
#: images, semantic and depth maps, COCO annotations, the training questions and the prompts.
_PINNED_WORLD = "f96420fcc528adbb659fcca8e4615a86b2aee4144867e2d7212ec98459cefb66"
_EVAL_SCENES = 240
#: ``2 * sqrt(p (1 - p) / n) <= 0.05`` at p = 0.5
_MIN_ITEMS = 400


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> WorldPaths:
    return write_world(tmp_path_factory.mktemp("bench"), num_train=0, num_eval=_EVAL_SCENES)


def _key(rec: dict[str, Any]) -> str:
    meta = rec["metadata"]
    if meta["question_type"] == "existence":
        return f"existence/{meta['pope_split']}"
    return str(meta["question_type"])


def test_images_and_training_questions_are_byte_identical_to_before(tmp_path: Path) -> None:
    root = write_world(tmp_path / "w", num_train=60, num_eval=60, seed=3).root
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "world.json")
    digest = hashlib.sha256(
        "".join(
            str(p.relative_to(root)) + hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files
            if p.relative_to(root) != Path("vqa/eval.jsonl")
        ).encode()
    ).hexdigest()
    assert digest == _PINNED_WORLD


def test_every_pope_split_and_binary_type_is_exactly_balanced(held_out: WorldPaths) -> None:
    answers: dict[str, Counter[str]] = {}
    for rec in _records(held_out.eval.vqa):
        answers.setdefault(_key(rec), Counter())[rec["conversations"][1]["value"]] += 1
    for split in POPE_SPLITS:
        got = answers[f"existence/{split}"]
        assert set(got) == {"Yes", "No"}
        assert got["Yes"] == got["No"], split
    for qtype, labels in (("relation", ("Yes", "No")), ("count_compare", ("Yes", "No")),
                          ("depth", ("A", "B"))):  # fmt: skip
        got = answers[qtype]
        assert set(got) == set(labels)
        assert got[labels[0]] == got[labels[1]], qtype


def test_each_main_benchmark_has_enough_items_for_a_5_point_band(held_out: WorldPaths) -> None:
    counts = Counter(_key(rec) for rec in _records(held_out.eval.vqa))
    main = [f"existence/{s}" for s in POPE_SPLITS]
    main += [t for t in (*PERCEPTION_TYPES, *REASONING_TYPES) if t != "existence"]
    for name in main:
        assert counts[name] >= _MIN_ITEMS, (name, counts[name])
        assert 2 * (0.25 / counts[name]) ** 0.5 <= 0.05


def test_counting_like_answers_are_not_one_answer(held_out: WorldPaths) -> None:
    """The majority baseline of each counting-like type stays well below 100 %."""
    answers: dict[str, Counter[str]] = {}
    for rec in _records(held_out.eval.vqa):
        answers.setdefault(_key(rec), Counter())[rec["conversations"][1]["value"]] += 1
    for qtype in ("counting", "count_sum", "count_difference"):
        got = answers[qtype]
        assert max(got.values()) / sum(got.values()) < 0.6, (qtype, got)


def test_reasoning_in_train_only_appends_the_reasoning_questions(tmp_path: Path) -> None:
    plain = write_world(tmp_path / "a", num_train=6, num_eval=1, seed=5)
    more = write_world(
        tmp_path / "b", num_train=6, num_eval=1, seed=5, config=SceneConfig(train_reasoning=True)
    )
    before, after = _records(plain.train.vqa), _records(more.train.vqa)
    assert [r for r in after if r["metadata"]["question_type"] not in REASONING_TYPES] == before
    extra = [r for r in after if r["metadata"]["question_type"] in REASONING_TYPES]
    coco = json.loads(plain.train.instances.read_text(encoding="utf-8"))
    expected = sum(
        len(reasoning_questions(generate_scene(int(info["scene_seed"])))) for info in coco["images"]
    )
    assert len(extra) == expected > 0
    for a, b in zip(sorted(plain.train.images.iterdir()), sorted(more.train.images.iterdir()),
                    strict=True):  # fmt: skip
        assert a.read_bytes() == b.read_bytes()


def test_training_mix_is_scene_questions() -> None:
    """The train split still asks exactly :func:`scene_questions` (no benchmark types)."""
    types = Counter(q.question_type for s in range(40) for q in scene_questions(generate_scene(s)))
    assert set(types) == set(PERCEPTION_TYPES)
