"""GEdit-Bench: SC and PQ as minima, O = sqrt(SC·PQ) per sample, groups then overall."""

import math

import numpy as np
import pytest

from sgt_eval.scoring.gedit import (
    EditSample,
    EditScore,
    JudgeOutputError,
    judge_edit,
    parse_judge_scores,
    score_gedit,
)


def test_group_then_overall_averaging() -> None:
    scores = [
        EditScore("a", "color_alter", 8, 2),  # O = 4
        EditScore("b", "color_alter", 2, 8),  # O = 4
        EditScore("c", "style_change", 9, 9),  # O = 9
    ]
    r = score_gedit(scores, judge="local-judge")
    assert r.metrics["color_alter/SC"] == 5.0
    assert r.metrics["color_alter/O"] == 4.0
    assert r.metrics["SC"] == 7.0  # (5 + 9) / 2, not (8+2+9)/3
    assert r.metrics["PQ"] == 7.0
    assert r.metrics["O"] == 6.5  # mean of per-sample O per group: (4 + 9) / 2
    # sqrt of group means would give sqrt(5·5)=5 for color_alter; the official O is per sample
    assert r.judge == "local-judge"
    assert any("groups absent" in d for d in r.deviations)


class _Judge:
    name = "size-and-change-judge"

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def semantic_consistency(self, source, edited, instruction):  # type: ignore[no-untyped-def]
        self.seen.append(edited.shape)
        changed = float(np.abs(source.astype(int) - edited.astype(int)).mean() > 1)
        return (10.0 * changed, 6.0)

    def perceptual_quality(self, edited):  # type: ignore[no-untyped-def]
        return (9.0, 4.0)


def test_judge_edit_takes_minima_and_resizes_to_source() -> None:
    judge = _Judge()
    source = np.zeros((16, 24, 3), np.uint8)
    edited = np.full((32, 32, 3), 200, np.uint8)
    s = judge_edit(judge, EditSample("k", "tone_transfer", "brighten"), source, edited)
    assert judge.seen == [(16, 24, 3)]
    assert (s.sc, s.pq) == (6.0, 4.0)
    assert s.overall == pytest.approx(math.sqrt(24))


def test_parse_judge_scores() -> None:
    assert parse_judge_scores('{"score": [8, 7.5], "reasoning": "ok"}') == (8.0, 7.5)
    with pytest.raises(JudgeOutputError, match="no score list"):
        parse_judge_scores("looks fine")
    with pytest.raises(JudgeOutputError, match="expected 2 scores"):
        parse_judge_scores('"score": [11, 3]')
