"""GEdit-Bench scoring (Step1X-Edit VIEScore ``tie`` task and ``calculate_statistics.py``).

Per sample: SC = min(editing success, over-editing) judged on [source, edited]; PQ =
min(naturalness, artifacts) judged on the edited image alone (resized to the source size);
O = sqrt(SC * PQ). Per task group: the means of SC, PQ and O; final = mean over the groups.
Scores from different judges are not comparable, so the judge's name is recorded.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from sgt_eval.report import BenchmarkResult

__all__ = [
    "GEDIT_GROUPS",
    "EditJudge",
    "EditSample",
    "EditScore",
    "JudgeOutputError",
    "judge_edit",
    "parse_judge_scores",
    "score_gedit",
]

GEDIT_GROUPS: tuple[str, ...] = (
    "background_change",
    "color_alter",
    "material_alter",
    "motion_change",
    "ps_human",
    "style_change",
    "subject-add",
    "subject-remove",
    "subject-replace",
    "text_change",
    "tone_transfer",
)


class JudgeOutputError(ValueError):
    """A judge's reply holds no usable scores."""


class EditJudge(Protocol):
    """A local multimodal judge returning two 0–10 scores per question."""

    name: str

    def semantic_consistency(
        self, source: NDArray[np.uint8], edited: NDArray[np.uint8], instruction: str
    ) -> tuple[float, float]:
        """(editing success, over-editing) for the edit of ``source`` into ``edited``."""
        ...

    def perceptual_quality(self, edited: NDArray[np.uint8]) -> tuple[float, float]:
        """(naturalness, artifacts) of the edited image."""
        ...


@dataclass(frozen=True)
class EditSample:
    """One GEdit-Bench row: its task group, key, instruction and language."""

    key: str
    task_type: str
    instruction: str
    language: str = "en"


@dataclass(frozen=True)
class EditScore:
    """Judge scores of one edited image."""

    key: str
    task_type: str
    sc: float
    pq: float

    @property
    def overall(self) -> float:
        """O = sqrt(SC * PQ)."""
        return math.sqrt(self.sc * self.pq)


def parse_judge_scores(reply: str, count: int = 2) -> tuple[float, ...]:
    """The ``score`` list of a VIEScore-style JSON reply ('"score": [8, 7]'), each in [0, 10]."""
    m = re.search(r'"?score"?\s*:\s*\[([^\]]*)\]', reply)
    if m is None:
        raise JudgeOutputError(f"judge reply has no score list: {reply[:200]!r}")
    values = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", m.group(1))]
    if len(values) != count or not all(0 <= v <= 10 for v in values):
        raise JudgeOutputError(
            f"expected {count} scores in [0, 10], got {values} in {reply[:200]!r}"
        )
    return tuple(values)


def judge_edit(
    judge: EditJudge,
    sample: EditSample,
    source: NDArray[np.uint8],
    edited: NDArray[np.uint8],
) -> EditScore:
    """Score one edit; the edited image is resized to the source size first, as the official code does."""
    if edited.shape[:2] != source.shape[:2]:
        h, w = source.shape[:2]
        edited = np.asarray(Image.fromarray(edited).resize((w, h), Image.Resampling.BICUBIC))
    sc = min(judge.semantic_consistency(source, edited, sample.instruction))
    pq = min(judge.perceptual_quality(edited))
    return EditScore(sample.key, sample.task_type, float(sc), float(pq))


def score_gedit(
    scores: Sequence[EditScore], judge: str, language: str = "en", subset: str = "fullset"
) -> BenchmarkResult:
    """Group means of SC, PQ and O, then the mean over groups (the official macro average)."""
    if not scores:
        raise ValueError("gedit: nothing to score")
    groups: dict[str, list[EditScore]] = defaultdict(list)
    for s in scores:
        groups[s.task_type].append(s)
    metrics: dict[str, float] = {}
    for group, items in sorted(groups.items()):
        metrics[f"{group}/SC"] = sum(s.sc for s in items) / len(items)
        metrics[f"{group}/PQ"] = sum(s.pq for s in items) / len(items)
        metrics[f"{group}/O"] = sum(s.overall for s in items) / len(items)
    for part in ("SC", "PQ", "O"):
        metrics[part] = sum(metrics[f"{g}/{part}"] for g in groups) / len(groups)
    missing = [g for g in GEDIT_GROUPS if g not in groups]
    return BenchmarkResult(
        benchmark="gedit-bench",
        split=f"{language}-{subset}",
        kind="generation",
        metrics=metrics,
        primary_metric="O",
        num_items=len(scores),
        protocol="GEdit-Bench VIEScore: SC = min(success, overediting), PQ = min(naturalness, artifacts), O = sqrt(SC*PQ); mean over task groups",
        deviations=(f"groups absent: {missing}",) if missing else (),
        judge=judge,
    )
