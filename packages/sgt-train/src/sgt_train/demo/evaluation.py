"""Evaluation of the demo's models on the held-out scenes, through sgt-eval's scorers.

- scene VQA as benchmarks: POPE-style existence (the official POPE rule, per negative-sampling
  split), counting, colour, GenEval-rule relations (yes/no) and CV-Bench-style nearer/farther
  (two choices, leading-letter rule);
- the held-out text-to-image prompts through the GenEval protocol with the scene detector;
- segmentation mIoU / PQ of generated semantic maps, decoded by the renderer's inverse.
"""

from __future__ import annotations

import json
import logging
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
    "SEGMENTATION_INSTRUCTION",
    "SceneVqaError",
    "SegmentationSet",
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


def _accuracy(name: str, hits: Sequence[bool], protocol: str) -> BenchmarkResult:
    return BenchmarkResult(
        benchmark=name,
        kind="understanding",
        metrics={"accuracy": 100.0 * sum(hits) / len(hits)},
        primary_metric="accuracy",
        num_items=len(hits),
        protocol=protocol,
    )


def _number(response: str) -> int | None:
    words = response.strip().lower().replace(".", " ").split()
    if not words:
        return None
    if words[0].isdigit():
        return int(words[0])
    return _NUMBERS.get(words[0])


def score_scene_vqa(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
    """Scores per question type (see the module docstring); types without items are left out."""
    by_type: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_type.setdefault(str(item.fields["question_type"]), []).append(i)
    results: list[BenchmarkResult] = []

    existence = by_type.get("existence", [])
    if existence:
        # POPE's splits share the positives and differ in how negatives were drawn: a split is
        # every negative of its strategy plus the positives of the same images.
        splits, answers, preds = [], [], []
        strategies = sorted({str(items[i].fields["pope_split"]) for i in existence} - {"positive"})
        for strategy in strategies:
            images = {
                items[i].fields["image_id"]
                for i in existence
                if items[i].fields["pope_split"] == strategy
            }
            for i in existence:
                split = items[i].fields["pope_split"]
                if split == strategy or (
                    split == "positive" and items[i].fields["image_id"] in images
                ):
                    splits.append(strategy)
                    answers.append(items[i].answer)
                    preds.append(responses[i])
        for r in score_pope(splits, answers, preds):
            results.append(r.model_copy(update={"benchmark": "scene-pope"}))

    for qtype, name, rule, hit in (
        ("counting", "scene-counting", "exact count (first word, digits or number words)",
         lambda r, a: _number(r) == int(a)),
        ("color", "scene-color", "colour name = first word, case-insensitive",
         lambda r, a: (r.strip().lower().split() or [""])[0].strip(".,") == a.lower()),
        ("relation", "scene-relation", "POPE first-sentence yes/no rule; GenEval position rule",
         lambda r, a: pope_yes_no(r) == a.strip().lower()),
        ("depth", "scene-depth", "CV-Bench leading-letter rule on two choices",
         lambda r, a: leading_choice_letter(r) == a.strip()),
    ):  # fmt: skip
        idx = by_type.get(qtype, [])
        if idx:
            hits = [bool(hit(responses[i], items[i].answer)) for i in idx]
            results.append(_accuracy(name, hits, rule))
    return results


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
