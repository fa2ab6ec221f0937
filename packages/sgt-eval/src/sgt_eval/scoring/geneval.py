"""The GenEval protocol (djghosh13/geneval ``evaluate_images.py`` + ``summary_scores.py``).

Per image: detections per class above a score threshold (0.3, or 0.9 for counting prompts),
at most 16 per class; every ``include`` clause needs at least ``count`` detections, with the
colour rule (crops composited on gray through the mask, classified, at least ``count`` of the
target colour) and the position rule (every object in the relation to every target object, with
a margin of 0.1 of the summed sizes); any ``exclude`` clause with ``count`` or more detections
fails the image. Overall = unweighted mean of the six per-tag accuracies.

The detector and colour classifier are pluggable (``ObjectDetector``, ``ColorClassifier``).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from sgt_eval.report import BenchmarkResult

__all__ = [
    "COLORS",
    "COUNTING_THRESHOLD",
    "GENEVAL_TAGS",
    "MAX_OBJECTS",
    "POSITION_MARGIN",
    "SCORE_THRESHOLD",
    "ColorClassifier",
    "Detection",
    "GenEvalImageResult",
    "GenEvalMetadataError",
    "GenEvalPrompt",
    "ObjectDetector",
    "color_crops",
    "evaluate_geneval_image",
    "load_geneval_metadata",
    "relative_position",
    "score_geneval",
    "select_detections",
]

_log = logging.getLogger(__name__)

GENEVAL_TAGS: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)
COLORS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
)
SCORE_THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_MARGIN = 0.1
_GRAY = np.array([0x99, 0x99, 0x99], dtype=np.uint8)


class GenEvalMetadataError(ValueError):
    """A GenEval metadata line is malformed."""


@dataclass(frozen=True)
class Detection:
    """One detected object: class name, score, box (x1, y1, x2, y2) in pixels and its mask."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: NDArray[np.bool_]


class ObjectDetector(Protocol):
    """Finds objects in an RGB image (HxWx3 uint8)."""

    name: str

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]: ...


class ColorClassifier(Protocol):
    """Names the colour of each object crop (crops already composited on gray) among ``colors``."""

    name: str

    def classify(
        self, crops: Sequence[NDArray[np.uint8]], label: str, colors: Sequence[str]
    ) -> list[str]: ...


@dataclass(frozen=True)
class GenEvalPrompt:
    """One metadata line: tag, prompt and its include/exclude clauses (as published)."""

    index: int
    tag: str
    prompt: str
    include: tuple[Mapping[str, Any], ...]
    exclude: tuple[Mapping[str, Any], ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The metadata line in the published schema."""
        out: dict[str, Any] = {
            "tag": self.tag,
            "prompt": self.prompt,
            "include": [dict(c) for c in self.include],
        }
        if self.exclude:
            out["exclude"] = [dict(c) for c in self.exclude]
        return out


@dataclass(frozen=True)
class GenEvalImageResult:
    """The verdict on one generated image."""

    prompt_index: int
    tag: str
    correct: bool
    reason: str


def _check_clause(clause: object, where: str) -> Mapping[str, Any]:
    if not isinstance(clause, Mapping) or not isinstance(clause.get("class"), str):
        raise GenEvalMetadataError(f"{where}: clause {clause!r} lacks a 'class' string")
    count = clause.get("count")
    if not isinstance(count, int) or count < 1:
        raise GenEvalMetadataError(f"{where}: clause {clause!r} needs a positive integer 'count'")
    if "color" in clause and clause["color"] not in COLORS:
        raise GenEvalMetadataError(f"{where}: colour {clause['color']!r} is not one of {COLORS}")
    return clause


def load_geneval_metadata(path: str | Path, expected_rows: int | None = 553) -> list[GenEvalPrompt]:
    """Read ``evaluation_metadata.jsonl`` (or the long-prompt variant), checking its row count."""
    p = Path(path)
    prompts: list[GenEvalPrompt] = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GenEvalMetadataError(f"{where}: not JSON ({exc})") from exc
        tag = row.get("tag")
        if tag not in GENEVAL_TAGS:
            raise GenEvalMetadataError(f"{where}: tag {tag!r} is not one of {GENEVAL_TAGS}")
        include = tuple(_check_clause(c, where) for c in row.get("include", []))
        exclude = tuple(_check_clause(c, where) for c in row.get("exclude", []))
        if not include:
            raise GenEvalMetadataError(f"{where}: no include clause")
        prompts.append(GenEvalPrompt(len(prompts), tag, str(row["prompt"]), include, exclude))
    if expected_rows is not None and len(prompts) != expected_rows:
        raise GenEvalMetadataError(
            f"{p}: {len(prompts)} prompts, expected {expected_rows} (pass expected_rows=None "
            "for a subset)"
        )
    return prompts


def select_detections(detections: Sequence[Detection], tag: str) -> dict[str, list[Detection]]:
    """Per class: detections above the tag's threshold, by descending score, at most 16."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else SCORE_THRESHOLD
    by_class: dict[str, list[Detection]] = defaultdict(list)
    for det in sorted(detections, key=lambda d: -d.score):
        if det.score > threshold and len(by_class[det.label]) < MAX_OBJECTS:
            by_class[det.label].append(det)
    return dict(by_class)


def relative_position(a: Detection, b: Detection) -> set[str]:
    """GenEval's relation of ``a`` to ``b``: centre offset shrunk by 0.1 of the summed sizes."""
    box_a, box_b = np.asarray(a.box, dtype=np.float64), np.asarray(b.box, dtype=np.float64)
    centre_a = (box_a[:2] + box_a[2:]) / 2
    centre_b = (box_b[:2] + box_b[2:]) / 2
    size_a, size_b = box_a[2:] - box_a[:2], box_b[2:] - box_b[:2]
    offset = centre_a - centre_b
    revised = np.maximum(np.abs(offset) - POSITION_MARGIN * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations: set[str] = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def color_crops(
    image: NDArray[np.uint8], detections: Sequence[Detection]
) -> list[NDArray[np.uint8]]:
    """Each object pasted through its mask onto gray #999, cropped to its box."""
    crops = []
    h, w = image.shape[:2]
    for det in detections:
        composite = np.where(det.mask[..., None], image, _GRAY)
        x1, y1, x2, y2 = det.box
        r0, r1 = max(int(y1), 0), min(math.ceil(y2), h)
        c0, c1 = max(int(x1), 0), min(math.ceil(x2), w)
        crops.append(np.ascontiguousarray(composite[r0:r1, c0:c1]).astype(np.uint8))
    return crops


def evaluate_geneval_image(
    image: NDArray[np.uint8],
    prompt: GenEvalPrompt,
    detector: ObjectDetector,
    classifier: ColorClassifier | None,
) -> GenEvalImageResult:
    """Judge one generated image against its metadata."""
    objects = select_detections(detector.detect(image), prompt.tag)
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for clause in prompt.include:
        name, count = str(clause["class"]), int(clause["count"])
        found = objects.get(name, [])[:count]
        matched = True
        if len(found) < count:
            matched = correct = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in clause:
                if classifier is None:
                    raise ValueError(f"prompt {prompt.index} needs a colour classifier")
                colors = classifier.classify(color_crops(image, found), name, COLORS)
                if colors.count(clause["color"]) < count:
                    matched = correct = False
                    reasons.append(f"expected {clause['color']} {name}>={count}, found {colors}")
            if "position" in clause and matched:
                rel, target = clause["position"][0], int(clause["position"][1])
                targets = matched_groups[target] if target < len(matched_groups) else None
                if targets is None:
                    matched = correct = False
                    reasons.append(f"no target for {name} to be {rel}")
                else:
                    for obj in found:
                        for tgt in targets:
                            got = relative_position(obj, tgt)
                            if rel not in got:
                                matched = correct = False
                                reasons.append(f"expected {name} {rel} target, found {sorted(got)}")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for clause in prompt.exclude:
        name, count = str(clause["class"]), int(clause["count"])
        if len(objects.get(name, [])) >= count:
            correct = False
            reasons.append(f"expected {name}<{count}, found {len(objects.get(name, []))}")
    return GenEvalImageResult(prompt.index, prompt.tag, correct, "; ".join(reasons))


def score_geneval(
    results: Sequence[GenEvalImageResult],
    split: str = "original",
    detector: str | None = None,
    deviations: Sequence[str] = (),
) -> BenchmarkResult:
    """Per-tag accuracy over images and the overall unweighted mean of the six tags."""
    if not results:
        raise ValueError("geneval: nothing to score")
    by_tag: dict[str, list[float]] = defaultdict(list)
    by_prompt: dict[int, list[bool]] = defaultdict(list)
    for r in results:
        by_tag[r.tag].append(float(r.correct))
        by_prompt[r.prompt_index].append(r.correct)
    metrics = {tag: 100.0 * sum(v) / len(v) for tag, v in by_tag.items()}
    present = [t for t in GENEVAL_TAGS if t in by_tag]
    metrics["overall"] = sum(metrics[t] for t in present) / len(present)
    metrics["correct_images"] = 100.0 * sum(r.correct for r in results) / len(results)
    metrics["correct_prompts"] = 100.0 * sum(any(v) for v in by_prompt.values()) / len(by_prompt)
    missing = [t for t in GENEVAL_TAGS if t not in by_tag]
    devs = list(deviations)
    if missing:
        devs.append(f"tags absent, overall over {len(present)} tags: missing {missing}")
    return BenchmarkResult(
        benchmark="geneval",
        split=split,
        kind="generation",
        metrics=metrics,
        primary_metric="overall",
        num_items=len(results),
        protocol="GenEval: thresholds 0.3/0.9 (counting), <=16 per class, exclusion, colour on gray crops, position margin 0.1; overall = mean of 6 tags",
        deviations=tuple(devs),
        judge=detector,
    )
