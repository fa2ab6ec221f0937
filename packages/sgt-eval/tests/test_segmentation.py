"""mIoU and panoptic quality of generated maps, through a colour -> label inverse."""

import numpy as np
import pytest

from sgt_eval.scoring.segmentation import (
    SegmentationShapeError,
    mean_iou,
    panoptic_quality,
    score_segmentation,
)


def test_mean_iou_over_the_dataset() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 0, 0, 1], [0, 0, 0, 1]])
    miou, ious = mean_iou([pred], [gt])
    # class 0: inter 4, union 6; class 1: inter 2, union 4
    assert ious == {0: pytest.approx(4 / 6), 1: 0.5}
    assert miou == pytest.approx((4 / 6 + 0.5) / 2)
    _miou_ignored, ious_ignored = mean_iou([pred], [gt], ignore_index=0)
    assert 0 in ious_ignored  # class 0 predicted on class-1 pixels still counts as union
    assert ious_ignored[1] == 0.5


def test_panoptic_quality_matching() -> None:
    gt = np.zeros((4, 8), int)
    gt[:, 0:4] = 1
    gt[:, 4:8] = 2
    pred = np.zeros((4, 8), int)
    pred[:, 0:3] = 7  # IoU 12/16 = 0.75 with gt 1: match
    pred[:, 6:8] = 8  # IoU 8/16 = 0.5 with gt 2: not > 0.5 -> FP and FN
    pq = panoptic_quality([pred], [gt])
    # TP 1 (IoU .75), FP 1, FN 1: PQ = .75 / (1 + .5 + .5)
    assert pq["pq"] == pytest.approx(0.375)
    assert pq["sq"] == pytest.approx(0.75)
    assert pq["rq"] == pytest.approx(0.5)
    void_pred = np.zeros((4, 8), int)
    void_gt = np.zeros((4, 8), int)
    void_gt[:, :2] = 1
    void_pred[:, 4:] = 5  # lies on void: not a false positive
    assert panoptic_quality([void_pred], [void_gt]) == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_score_segmentation_through_inverse() -> None:
    palette = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 0, 255): 2}

    def inverse(rgb: np.ndarray) -> np.ndarray:
        out = np.zeros(rgb.shape[:2], int)
        for colour, label in palette.items():
            out[(rgb == colour).all(-1)] = label
        return out

    gt = np.zeros((4, 4), int)
    gt[:2] = 1
    gt[2:] = 2
    drawn = np.zeros((4, 4, 3), np.uint8)
    drawn[:2] = (255, 0, 0)
    drawn[2:] = (0, 0, 255)
    r = score_segmentation([drawn], [gt], inverse)
    assert r.metrics["miou"] == 100.0
    assert r.metrics["pq"] == 100.0
    with pytest.raises(SegmentationShapeError, match="item 0"):
        score_segmentation([drawn[:2]], [gt], inverse)


def test_mean_iou_with_large_or_negative_ids() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 0, 0, 1], [0, 0, 0, 1]])
    small, _ = mean_iou([pred], [gt])
    mapping = {0: -5, 1: 100_000}
    big, ious = mean_iou([np.vectorize(mapping.get)(pred)], [np.vectorize(mapping.get)(gt)])
    assert big == pytest.approx(small)
    assert set(ious) == {-5, 100_000}
