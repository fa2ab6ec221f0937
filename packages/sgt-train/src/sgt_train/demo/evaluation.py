"""Evaluation of the demo's models on the held-out scenes, through sgt-eval's scorers.

- scene VQA as benchmarks (the questions of ``sgt_data.scene_questions.benchmark_questions``):
  perception = POPE-style existence (the official POPE rule, per negative-sampling split, each
  split balanced 50/50), counting, colour, GenEval-rule position (yes/no, balanced) and
  CV-Bench-style depth order (two choices, balanced, leading-letter rule); reasoning = sums,
  comparisons and differences of counts of classes or colours; two aggregates, ``scene-perception``
  and ``scene-reasoning``, the means of their benchmarks' accuracies; every accuracy-scored
  benchmark also reports its majority baseline;
- the held-out text-to-image prompts through the GenEval protocol with the scene detector;
- segmentation mIoU / PQ of generated semantic maps, decoded by the renderer's inverse.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from sgt_data.prompts import instruction_set
from sgt_data.schema import TaskKind
from sgt_eval.benchmarks.tables import ImageRef
from sgt_eval.benchmarks.understanding import VQABenchmark, VQAItem
from sgt_eval.detectors import SceneShapeDetector, scene_color_classifier
from sgt_eval.harness import (
    evaluate_understanding,
    generation_settings,
    run_geneval,
    seed_everything,
)
from sgt_eval.parsing import leading_choice_letter, pope_yes_no
from sgt_eval.report import BenchmarkResult, EvalSettings
from sgt_eval.scoring.geneval import GenEvalPrompt, load_geneval_metadata
from sgt_eval.scoring.segmentation import score_segmentation
from sgt_eval.scoring.understanding import score_pope

if TYPE_CHECKING:
    from sgt_models.protocol import UnifiedModelAdapter

__all__ = [
    "AGGREGATES",
    "PERCEPTION_COMPONENTS",
    "REASONING_COMPONENTS",
    "SEGMENTATION_INSTRUCTION",
    "SceneVqaError",
    "SegmentationSet",
    "aggregate_results",
    "evaluate_model",
    "load_scene_prompts",
    "load_scene_vqa",
    "load_segmentation_set",
    "score_scene_vqa",
]

_log = logging.getLogger(__name__)

#: The instruction the demo asks for a semantic map with (the first of sgt-data's semantic set).
SEGMENTATION_INSTRUCTION: str = instruction_set(TaskKind.SEGMENTATION, "semantic")[0]

_NUMBERS = {
    "zero": 0, "no": 0, "none": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_SCENE_DEVIATION = "synthetic scene world (sgt_data.scenes), not the published benchmark data"

Progress = Callable[[int, int], None]


class SceneVqaError(ValueError):
    """A scene VQA record that cannot be scored (names the file and line)."""


def load_scene_vqa(
    path: str | Path, root: str | Path, max_questions: int | None = None
) -> VQABenchmark:
    """The world's LLaVA JSONL as a benchmark; whole scenes are kept until ``max_questions``."""
    file, base = Path(path), Path(root)
    items: list[VQAItem] = []
    last_image: object = None
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file}:{n}"
        try:
            rec = json.loads(line)
            conv = rec["conversations"]
            meta = rec["metadata"]
            question = str(conv[0]["value"]).replace("<image>", "").strip()
            answer = str(conv[1]["value"]).strip()
            qtype = str(meta["question_type"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise SceneVqaError(f"{where}: not a scene VQA record ({exc!r})") from exc
        image = meta.get("image_id")
        if max_questions is not None and len(items) >= max_questions and image != last_image:
            break
        last_image = image
        fields = {"question_type": qtype, "image_id": image, "pope_split": meta.get("pope_split")}
        items.append(
            VQAItem(
                str(rec["id"]), ImageRef((rec["image"],), base, where), question, answer, fields
            )
        )
    if not items:
        raise SceneVqaError(f"{file}: no questions")
    return VQABenchmark(
        "scene-vqa",
        tuple(items),
        (file,),
        "generated",
        8,
        score_scene_vqa,
        (_SCENE_DEVIATION,),
    )


#: Benchmark -> (question type, scoring rule) of the accuracy-scored scene benchmarks.
_RULES: dict[str, tuple[str, str]] = {
    "scene-counting": ("counting", "exact count (first word, digits or number words)"),
    "scene-color": ("color", "colour name = first word, case-insensitive"),
    "scene-relation": ("relation", "POPE first-sentence yes/no rule; GenEval position rule"),
    "scene-depth": ("depth", "CV-Bench leading-letter rule on two choices"),
    "scene-count-sum": ("count_sum", "exact number (first word, digits or number words)"),
    "scene-count-compare": ("count_compare", "POPE first-sentence yes/no rule"),
    "scene-count-difference": ("count_difference", "exact number (first word, digits or words)"),
}
#: The components of the two aggregates, as (benchmark, split, metric): POPE enters by its mean
#: accuracy over splits (chance 50 like the other balanced rows; F1 would reward always-"Yes").
PERCEPTION_COMPONENTS: tuple[tuple[str, str, str], ...] = (
    ("scene-pope", "overall", "accuracy_mean"),
    ("scene-counting", "default", "accuracy"),
    ("scene-color", "default", "accuracy"),
    ("scene-relation", "default", "accuracy"),
    ("scene-depth", "default", "accuracy"),
)
REASONING_COMPONENTS: tuple[tuple[str, str, str], ...] = (
    ("scene-count-sum", "default", "accuracy"),
    ("scene-count-compare", "default", "accuracy"),
    ("scene-count-difference", "default", "accuracy"),
)
#: Aggregate benchmark name -> its components.
AGGREGATES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "scene-perception": PERCEPTION_COMPONENTS,
    "scene-reasoning": REASONING_COMPONENTS,
}


def _accuracy(
    name: str, hits: Sequence[bool], answers: Sequence[str], protocol: str
) -> BenchmarkResult:
    """Accuracy, and the majority baseline: the accuracy of always giving the commonest answer."""
    commonest = max(Counter(a.strip().lower() for a in answers).values())
    return BenchmarkResult(
        benchmark=name,
        kind="understanding",
        metrics={
            "accuracy": 100.0 * sum(hits) / len(hits),
            "majority_baseline": 100.0 * commonest / len(answers),
        },
        primary_metric="accuracy",
        num_items=len(hits),
        protocol=protocol + "; majority_baseline = share of the commonest gold answer",
    )


def _number(response: str) -> int | None:
    words = response.strip().lower().replace(".", " ").split()
    if not words:
        return None
    if words[0].isdigit():
        return int(words[0])
    return _NUMBERS.get(words[0])


def _hit(qtype: str, response: str, answer: str) -> bool:
    if qtype in ("counting", "count_sum", "count_difference"):
        return _number(response) == int(answer)
    if qtype == "color":
        return (response.strip().lower().split() or [""])[0].strip(".,") == answer.lower()
    if qtype in ("relation", "count_compare"):
        return pope_yes_no(response) == answer.strip().lower()
    return leading_choice_letter(response) == answer.strip()


def _pope_items(items: Sequence[VQAItem], existence: Sequence[int]) -> tuple[list[str], list[int]]:
    """Each existence item's POPE split (an item may be in several) as parallel lists.

    A benchmark-set item names its split. A world written before the balanced benchmark set
    (``pope_split`` = ``positive`` on positives shared by the splits) still scores: a positive
    joins every split that has a negative of its image.
    """
    splits: list[str] = []
    index: list[int] = []
    negatives: dict[str, set[object]] = {}
    for i in existence:
        split = str(items[i].fields["pope_split"])
        if split != "positive":
            splits.append(split)
            index.append(i)
            negatives.setdefault(split, set()).add(items[i].fields["image_id"])
    for i in existence:
        if items[i].fields["pope_split"] == "positive":
            for split in sorted(negatives):
                if items[i].fields["image_id"] in negatives[split]:
                    splits.append(split)
                    index.append(i)
    return splits, index


def aggregate_results(results: Sequence[BenchmarkResult]) -> list[BenchmarkResult]:
    """``scene-perception`` and ``scene-reasoning``: the mean of their components present in
    ``results`` (:data:`PERCEPTION_COMPONENTS`, :data:`REASONING_COMPONENTS`)."""
    found = {(r.benchmark, r.split): r for r in results}
    out = []
    for name, components in AGGREGATES.items():
        parts = [(found[(b, s)], m) for b, s, m in components if (b, s) in found]
        if not parts:
            continue
        baselines = [
            r.metrics.get("majority_baseline", 50.0 if r.benchmark == "scene-pope" else 0.0)
            for r, _ in parts
        ]
        out.append(
            BenchmarkResult(
                benchmark=name,
                kind="understanding",
                metrics={
                    "score": sum(r.metrics[m] for r, m in parts) / len(parts),
                    "majority_baseline": sum(baselines) / len(baselines),
                },
                primary_metric="score",
                num_items=sum(r.num_items for r, _ in parts),
                protocol="mean of " + ", ".join(f"{r.benchmark}/{r.split}/{m}" for r, m in parts),
                deviations=(_SCENE_DEVIATION,),
            )
        )
    return out


def score_scene_vqa(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
    """Scores per question type (see the module docstring), then the perception and reasoning
    aggregates; types without items are left out."""
    by_type: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_type.setdefault(str(item.fields["question_type"]), []).append(i)
    results: list[BenchmarkResult] = []

    existence = by_type.get("existence", [])
    if existence:
        splits, index = _pope_items(items, existence)
        answers = [items[i].answer for i in index]
        for r in score_pope(splits, answers, [responses[i] for i in index]):
            results.append(r.model_copy(update={"benchmark": "scene-pope"}))

    for name, (qtype, rule) in _RULES.items():
        idx = by_type.get(qtype, [])
        if idx:
            hits = [_hit(qtype, responses[i], items[i].answer) for i in idx]
            results.append(_accuracy(name, hits, [items[i].answer for i in idx], rule))
    return results + aggregate_results(results)


def load_scene_prompts(path: str | Path, max_prompts: int | None = None) -> list[GenEvalPrompt]:
    """The world's held-out text-to-image prompts (GenEval metadata), the first ``max_prompts``."""
    prompts = load_geneval_metadata(path, expected_rows=None)
    return prompts[:max_prompts] if max_prompts is not None else prompts


@dataclass(frozen=True)
class SegmentationSet:
    """Held-out images, their class-id maps and the renderer that colours (and decodes) them."""

    images: tuple[NDArray[np.uint8], ...]
    labels: tuple[NDArray[np.integer[Any]], ...]
    renderer: Any


def load_segmentation_set(store_path: str | Path, count: int) -> SegmentationSet:
    """The first ``count`` samples of a converted semantic-segmentation store."""
    from sgt_data.render import renderer_from_spec
    from sgt_data.store import SampleStore

    store = SampleStore.open(store_path)
    indices = store.indices_with(TaskKind.SEGMENTATION, "semantic")[:count]
    spec = next(r for r in store.manifest.renderers if r.name == "semantic")
    return SegmentationSet(
        images=tuple(store.read_image(int(i)) for i in indices),
        labels=tuple(
            store.read_label_map(int(i), TaskKind.SEGMENTATION, "semantic") for i in indices
        ),
        renderer=renderer_from_spec(spec),
    )


def _segment(
    adapter: UnifiedModelAdapter,
    data: SegmentationSet,
    settings: EvalSettings,
    progress: Progress | None,
) -> tuple[BenchmarkResult, list[NDArray[np.uint8]]]:
    seed_everything(settings.seed)
    maps: list[NDArray[np.uint8]] = []
    for start in range(0, len(data.images), settings.batch_size):
        batch = list(data.images[start : start + settings.batch_size])
        maps += adapter.generate(
            [SEGMENTATION_INSTRUCTION] * len(batch),
            images=batch,
            settings=generation_settings(settings, settings.seed),
        )
        if progress is not None:
            progress(len(maps), len(data.images))
    result = score_segmentation(maps, list(data.labels), data.renderer.inverse, "semantic")
    return result.model_copy(update={"deviations": (_SCENE_DEVIATION,)}), maps


def evaluate_model(
    adapter: UnifiedModelAdapter,
    vqa: VQABenchmark,
    prompts: Sequence[GenEvalPrompt],
    segmentation: SegmentationSet,
    settings: EvalSettings,
    geneval_dir: Path | None = None,
    progress: Progress | None = None,
) -> tuple[list[BenchmarkResult], list[NDArray[np.uint8]]]:
    """Every demo benchmark for one model; the results and the generated segmentation maps."""
    total = len(vqa.items) + len(prompts) + len(segmentation.images)
    offsets = {"vqa": 0, "geneval": len(vqa.items), "seg": len(vqa.items) + len(prompts)}

    def report(part: str) -> Callable[..., None]:
        def call(*args: Any) -> None:
            if progress is not None:
                progress(offsets[part] + int(args[-2]), total)

        return call

    results, _responses = evaluate_understanding(adapter, vqa, settings, report("vqa"))
    geneval = run_geneval(
        adapter,
        prompts,
        SceneShapeDetector(),
        scene_color_classifier(),
        settings,
        split="scene",
        revision="generated",
        output_dir=geneval_dir,
        progress=report("geneval"),
    )
    results.append(
        geneval.model_copy(update={"deviations": (*geneval.deviations, _SCENE_DEVIATION)})
    )
    seg, maps = _segment(adapter, segmentation, settings, report("seg"))
    results.append(seg)
    return results, maps
