"""Evaluate any ``sgt-models`` adapter on loaded benchmarks and collect an ``EvalReport``.

Work goes in batches of ``settings.batch_size`` with a fixed seed; progress is reported through a
callback ``(benchmark, done, total)`` so that only CLIs draw progress bars.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from sgt_eval.benchmarks.generation import GEditItem, write_geneval_outputs
from sgt_eval.benchmarks.understanding import VQABenchmark
from sgt_eval.report import BenchmarkResult, EvalReport, EvalSettings
from sgt_eval.scoring.gedit import EditJudge, judge_edit, score_gedit
from sgt_eval.scoring.geneval import (
    ColorClassifier,
    GenEvalPrompt,
    ObjectDetector,
    evaluate_geneval_image,
    score_geneval,
)
from sgt_eval.scoring.segmentation import score_segmentation

if TYPE_CHECKING:
    from sgt_models.protocol import GenerationSettings, UnifiedModelAdapter

__all__ = [
    "ProgressCallback",
    "build_report",
    "evaluate_understanding",
    "generation_settings",
    "run_gedit",
    "run_geneval",
    "run_segmentation",
    "seed_everything",
]

_log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (when it is imported) torch."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - adapters may draw from the legacy global state
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def generation_settings(settings: EvalSettings, seed: int) -> GenerationSettings:
    """The adapter's sampling settings from the report settings and a per-image seed."""
    from sgt_models.protocol import GenerationSettings

    return GenerationSettings(
        num_steps=settings.num_inference_steps,
        cfg_text_scale=settings.cfg_text_scale,
        cfg_image_scale=settings.cfg_image_scale,
        seed=seed,
    )


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def evaluate_understanding(
    adapter: UnifiedModelAdapter,
    benchmark: VQABenchmark,
    settings: EvalSettings,
    progress: ProgressCallback | None = None,
) -> tuple[list[BenchmarkResult], list[str]]:
    """Answer every item of a benchmark in batches; the official scores and the raw responses."""
    seed_everything(settings.seed)
    max_new = min(settings.max_new_tokens, benchmark.max_new_tokens)
    responses: list[str] = []
    total = len(benchmark.items)
    for batch in _batches(total, settings.batch_size):
        items = [benchmark.items[i] for i in batch]
        answers = adapter.answer(
            [it.image.load() for it in items], [it.prompt for it in items], max_new
        )
        if len(answers) != len(items):
            raise RuntimeError(
                f"adapter returned {len(answers)} answers for {len(items)} questions"
            )
        responses.extend(answers)
        if progress is not None:
            progress(benchmark.name, len(responses), total)
    _log.info("%s: %d responses", benchmark.name, total)
    return benchmark.score(responses), responses


def run_geneval(
    adapter: UnifiedModelAdapter,
    prompts: Sequence[GenEvalPrompt],
    detector: ObjectDetector,
    classifier: ColorClassifier | None,
    settings: EvalSettings,
    split: str = "original",
    revision: str | None = None,
    output_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> BenchmarkResult:
    """Draw ``images_per_prompt`` images per prompt (seed + image number) and score them."""
    seed_everything(settings.seed)
    per_prompt = settings.images_per_prompt
    jobs = [(p, k) for p in prompts for k in range(per_prompt)]
    verdicts = []
    drawn: dict[int, list[NDArray[np.uint8]]] = {}
    for batch in _batches(len(jobs), settings.batch_size):
        # one generate call per distinct seed keeps the per-image seed meaningful
        for i in batch:
            prompt, k = jobs[i]
            gen = generation_settings(settings, settings.seed + k)
            (image,) = adapter.generate([prompt.prompt], settings=gen)
            drawn.setdefault(prompt.index, []).append(image)
            verdicts.append(evaluate_geneval_image(image, prompt, detector, classifier))
        if progress is not None:
            progress(f"geneval/{split}", batch.stop, len(jobs))
    if output_dir is not None:
        for prompt in prompts:
            write_geneval_outputs(output_dir, prompt, drawn[prompt.index])
    deviations = []
    if per_prompt != 4:
        deviations.append(f"{per_prompt} images per prompt (official: 4)")
    names = [detector.name] + ([classifier.name] if classifier is not None else [])
    result = score_geneval(verdicts, split, " + ".join(names), deviations)
    return result.model_copy(update={"data_revision": revision})


def run_gedit(
    adapter: UnifiedModelAdapter,
    items: Sequence[GEditItem],
    judge: EditJudge,
    settings: EvalSettings,
    language: str = "en",
    revision: str | None = None,
    progress: ProgressCallback | None = None,
) -> BenchmarkResult:
    """Edit each source image by its instruction and score the edits with a local judge."""
    seed_everything(settings.seed)
    scores = []
    for batch in _batches(len(items), settings.batch_size):
        sources = [items[i].image.load() for i in batch]
        edited = adapter.generate(
            [items[i].sample.instruction for i in batch],
            images=sources,
            settings=generation_settings(settings, settings.seed),
        )
        for i, src, out in zip(batch, sources, edited, strict=True):
            scores.append(judge_edit(judge, items[i].sample, src, out))
        if progress is not None:
            progress("gedit-bench", batch.stop, len(items))
    result = score_gedit(scores, judge.name, language)
    return result.model_copy(update={"data_revision": revision})


def run_segmentation(
    adapter: UnifiedModelAdapter,
    images: Sequence[NDArray[np.uint8]],
    ground_truth: Sequence[NDArray[np.integer]],
    instruction: str,
    inverse: Callable[[NDArray[np.uint8]], NDArray[np.integer]],
    settings: EvalSettings,
    task: str = "semantic",
    progress: ProgressCallback | None = None,
) -> BenchmarkResult:
    """Ask the model to draw the segmentation map of each image; mIoU and PQ through ``inverse``."""
    seed_everything(settings.seed)
    maps: list[NDArray[np.uint8]] = []
    for batch in _batches(len(images), settings.batch_size):
        maps.extend(
            adapter.generate(
                [instruction] * len(batch),
                images=[images[i] for i in batch],
                settings=generation_settings(settings, settings.seed),
            )
        )
        if progress is not None:
            progress("segmentation", len(maps), len(images))
    maps = [_fit(m, gt.shape[:2]) for m, gt in zip(maps, ground_truth, strict=True)]
    return score_segmentation(maps, ground_truth, inverse, task)


def _fit(image: NDArray[np.uint8], shape: tuple[int, ...]) -> NDArray[np.uint8]:
    """Nearest-neighbour resize of a colour map to the ground truth's size (no new colours)."""
    if image.shape[:2] == shape:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("sgt-data", "sgt-models", "sgt-eval"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def build_report(
    model_name: str,
    model_kind: str,
    settings: EvalSettings,
    results: Sequence[BenchmarkResult],
    model_path: str | None = None,
) -> EvalReport:
    """An ``EvalReport`` stamped with the time and the installed SGT versions."""
    return EvalReport(
        model_name=model_name,
        model_kind=model_kind,
        model_path=model_path,
        created_at=datetime.now(UTC),
        sgt_versions=_versions(),
        settings=settings,
        results=tuple(results),
    )
