"""The demo's scene benchmarks score as their definitions say, on a generated held-out split.

A model that always says "Yes" (or always "No", always "A") scores chance on every balanced row;
the majority baseline is the share of the commonest gold answer; the perception and reasoning
aggregates are the means of their components; gold answers score 100 everywhere. Also: a world
written before the balanced benchmark set (positives shared by the POPE splits) still scores.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import pytest

from sgt_data.scenes import write_world
from sgt_eval.benchmarks.tables import ImageRef
from sgt_eval.benchmarks.understanding import VQABenchmark, VQAItem
from sgt_eval.report import BenchmarkResult
from sgt_train.demo.evaluation import (
    PERCEPTION_COMPONENTS,
    REASONING_COMPONENTS,
    load_scene_vqa,
    score_scene_vqa,
)

_SPLITS = ("adversarial", "popular", "random")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> VQABenchmark:
    world = write_world(tmp_path_factory.mktemp("w"), num_train=0, num_eval=60, seed=2)
    return load_scene_vqa(world.eval.vqa, world.root)


def _score(bench: VQABenchmark, responses: list[str]) -> dict[tuple[str, str], BenchmarkResult]:
    return {(r.benchmark, r.split): r for r in score_scene_vqa(bench.items, responses)}


@pytest.mark.parametrize(("answer", "f1"), [("Yes", 200 / 3), ("No", 0.0)])
def test_a_constant_yes_or_no_scores_chance_on_every_pope_split(
    bench: VQABenchmark, answer: str, f1: float
) -> None:
    results = _score(bench, [answer] * len(bench.items))
    for split in _SPLITS:
        pope = results[("scene-pope", split)]
        assert pope.num_items > 0
        assert pope.metrics["accuracy"] == pytest.approx(50.0)
        assert pope.metrics["f1"] == pytest.approx(f1)
        assert pope.metrics["yes_ratio"] == pytest.approx(100.0 if answer == "Yes" else 0.0)
    overall = results[("scene-pope", "overall")]
    assert overall.metrics["accuracy_mean"] == pytest.approx(50.0)
    assert overall.metrics["f1_mean"] == pytest.approx(f1)
    for name in ("scene-relation", "scene-count-compare"):  # balanced yes/no rows
        assert results[(name, "default")].metrics["accuracy"] == pytest.approx(50.0)


def test_a_constant_letter_scores_chance_on_depth_order(bench: VQABenchmark) -> None:
    for letter in ("A", "B"):
        depth = _score(bench, [letter] * len(bench.items))[("scene-depth", "default")]
        assert depth.metrics["accuracy"] == pytest.approx(50.0)
        assert depth.metrics["majority_baseline"] == pytest.approx(50.0)


def test_majority_baseline_is_the_commonest_gold_answer(bench: VQABenchmark) -> None:
    types = {
        "scene-counting": "counting",
        "scene-count-sum": "count_sum",
        "scene-count-difference": "count_difference",
        "scene-color": "color",
    }
    for name, qtype in types.items():
        gold = [it.answer for it in bench.items if it.fields["question_type"] == qtype]
        commonest, times = Counter(gold).most_common(1)[0]
        expected = 100.0 * times / len(gold)
        # answering the commonest answer to everything scores exactly the baseline
        responses = [commonest] * len(bench.items)
        result = _score(bench, responses)[(name, "default")]
        assert result.num_items == len(gold)
        assert result.metrics["majority_baseline"] == pytest.approx(expected)
        assert result.metrics["accuracy"] == pytest.approx(expected)
        assert expected < 100.0


def test_gold_answers_score_100_and_aggregates_are_means(bench: VQABenchmark) -> None:
    results = _score(bench, [it.answer for it in bench.items])
    for benchmark, split, metric in (*PERCEPTION_COMPONENTS, *REASONING_COMPONENTS):
        assert results[(benchmark, split)].metrics[metric] == pytest.approx(100.0)
    assert results[("scene-perception", "default")].metrics["score"] == pytest.approx(100.0)
    assert results[("scene-reasoning", "default")].metrics["score"] == pytest.approx(100.0)

    always_yes = _score(bench, ["Yes"] * len(bench.items))
    for name, components in (
        ("scene-perception", PERCEPTION_COMPONENTS),
        ("scene-reasoning", REASONING_COMPONENTS),
    ):
        expected = statistics.fmean(always_yes[(b, s)].metrics[m] for b, s, m in components)
        aggregate = always_yes[(name, "default")]
        assert aggregate.metrics["score"] == pytest.approx(expected)
        assert aggregate.num_items == sum(always_yes[(b, s)].num_items for b, s, _ in components)
        assert aggregate.primary_metric == "score"


def _item(n: int, image: int, split: str, answer: str) -> VQAItem:
    fields = {"question_type": "existence", "image_id": image, "pope_split": split}
    ref = ImageRef(("x.png",), Path("."), f"legacy:{n}")
    return VQAItem(f"q{n}", ref, "Is there a star in the image?", answer, fields)


def test_a_legacy_world_shares_positives_between_the_splits_of_their_image() -> None:
    items = [
        _item(0, 1, "positive", "Yes"),
        _item(1, 1, "adversarial", "No"),
        _item(2, 1, "popular", "No"),
        _item(3, 2, "positive", "Yes"),
        _item(4, 2, "adversarial", "No"),
    ]
    results = {(r.benchmark, r.split): r for r in score_scene_vqa(items, ["Yes"] * 5)}
    assert results[("scene-pope", "adversarial")].num_items == 4  # both images' positives
    assert results[("scene-pope", "popular")].num_items == 2  # image 1's positive only
    assert results[("scene-pope", "adversarial")].metrics["accuracy"] == pytest.approx(50.0)
