"""The proxy-task metric: generated segmentation maps against ground truth.

Generated maps are colour images; the renderer's inverse (``sgt_data.render``) turns one back
into a label map, so this module takes label maps and an optional ``inverse`` callable.
mIoU: one confusion matrix over the whole set, IoU per class present in truth or prediction,
mean over classes. Panoptic quality (Kirillov et al.): segments match when IoU > 0.5; per class
PQ = sum of matched IoU / (TP + FP/2 + FN/2), averaged over classes; SQ and RQ likewise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from sgt_eval.report import BenchmarkResult

__all__ = ["SegmentationShapeError", "mean_iou", "panoptic_quality", "score_segmentation"]

LabelMap = NDArray[np.integer]


class SegmentationShapeError(ValueError):
    """A predicted map and its ground truth differ in shape."""


def _check(pred: LabelMap, gt: LabelMap, i: int) -> None:
    if pred.shape != gt.shape:
        raise SegmentationShapeError(
            f"item {i}: predicted map {pred.shape} vs ground truth {gt.shape}"
        )


def mean_iou(
    preds: Sequence[LabelMap], gts: Sequence[LabelMap], ignore_index: int | None = None
) -> tuple[float, dict[int, float]]:
    """Dataset-level mIoU (in [0, 1]) and the IoU of every class present."""
    inter: dict[int, int] = defaultdict(int)
    union: dict[int, int] = defaultdict(int)
    for i, (pred, gt) in enumerate(zip(preds, gts, strict=True)):
        _check(pred, gt, i)
        valid = np.ones(gt.shape, bool) if ignore_index is None else gt != ignore_index
        p, g = pred[valid].ravel(), gt[valid].ravel()
        if p.size == 0:
            continue
        low, high = min(int(p.min()), int(g.min())), max(int(p.max()), int(g.max()))
        if low >= 0 and high < 4096:  # small non-negative ids: index the confusion directly
            labels, n = np.arange(high + 1), high + 1
            p_idx, g_idx = p.astype(np.int64), g.astype(np.int64)
        else:
            labels, inv = np.unique(np.concatenate([p, g]), return_inverse=True)
            n = len(labels)
            p_idx, g_idx = inv[: p.size], inv[p.size :]
        conf = np.bincount(g_idx * n + p_idx, minlength=n * n).reshape(n, n)
        diag = np.diag(conf)
        unions = conf.sum(0) + conf.sum(1) - diag
        for c, i_c, u_c in zip(labels.tolist(), diag.tolist(), unions.tolist(), strict=True):
            inter[c] += i_c
            union[c] += u_c
    ious = {c: inter[c] / union[c] for c in sorted(union) if union[c] > 0}
    return (float(np.mean(list(ious.values()))) if ious else 0.0), ious


def panoptic_quality(
    pred_segments: Sequence[LabelMap],
    gt_segments: Sequence[LabelMap],
    pred_classes: Sequence[LabelMap] | None = None,
    gt_classes: Sequence[LabelMap] | None = None,
    void_id: int = 0,
) -> dict[str, float]:
    """PQ, SQ, RQ (in [0, 1]) of segment-id maps (``void_id`` = no segment).

    With class maps, a segment's class is its majority class and matching is within a class;
    without, every segment is one class. A predicted segment that is more than half void in the
    truth is not counted as a false positive (the panoptic rule for unlabelled pixels).
    """
    tp: dict[int, int] = defaultdict(int)
    fp: dict[int, int] = defaultdict(int)
    fn: dict[int, int] = defaultdict(int)
    iou_sum: dict[int, float] = defaultdict(float)
    for i, (pseg, gseg) in enumerate(zip(pred_segments, gt_segments, strict=True)):
        _check(pseg, gseg, i)
        pcls = pred_classes[i] if pred_classes is not None else np.zeros_like(pseg)
        gcls = gt_classes[i] if gt_classes is not None else np.zeros_like(gseg)

        def segments(seg: LabelMap, cls: LabelMap) -> dict[int, tuple[int, int]]:
            out = {}
            for s in np.unique(seg).tolist():
                if s == void_id:
                    continue
                m = seg == s
                values, counts = np.unique(cls[m], return_counts=True)
                out[s] = (int(values[np.argmax(counts)]), int(m.sum()))
            return out

        psegs, gsegs = segments(pseg, pcls), segments(gseg, gcls)
        pairs, counts = np.unique(
            np.stack([pseg.ravel(), gseg.ravel()]), axis=1, return_counts=True
        )
        overlap = {(int(a), int(b)): int(c) for (a, b), c in zip(pairs.T, counts, strict=True)}
        matched_p: set[int] = set()
        matched_g: set[int] = set()
        for (ps, gs), inter in overlap.items():
            if ps not in psegs or gs not in gsegs or psegs[ps][0] != gsegs[gs][0]:
                continue
            union = psegs[ps][1] + gsegs[gs][1] - inter
            iou = inter / union
            if iou > 0.5:
                c = gsegs[gs][0]
                tp[c] += 1
                iou_sum[c] += iou
                matched_p.add(ps)
                matched_g.add(gs)
        for gs, (c, _) in gsegs.items():
            if gs not in matched_g:
                fn[c] += 1
        for ps, (c, area) in psegs.items():
            if ps in matched_p:
                continue
            if overlap.get((ps, void_id), 0) > area / 2:
                continue
            fp[c] += 1
    classes = sorted(set(tp) | set(fp) | set(fn))
    if not classes:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    pq, sq, rq = [], [], []
    for c in classes:
        denom = tp[c] + fp[c] / 2 + fn[c] / 2
        pq.append(iou_sum[c] / denom)
        sq.append(iou_sum[c] / tp[c] if tp[c] else 0.0)
        rq.append(tp[c] / denom)
    return {"pq": float(np.mean(pq)), "sq": float(np.mean(sq)), "rq": float(np.mean(rq))}


def score_segmentation(
    generated: Sequence[NDArray[np.uint8]],
    ground_truth: Sequence[LabelMap],
    inverse: Callable[[NDArray[np.uint8]], LabelMap],
    task: str = "semantic",
    ignore_index: int | None = None,
) -> BenchmarkResult:
    """mIoU and PQ of generated colour maps (through ``inverse``) against label maps.

    ``task='semantic'``: label maps are class ids (PQ treats each class region as a segment);
    ``task='instance'``: label maps are instance ids, scored class-agnostically.
    """
    if not generated:
        raise ValueError("segmentation: nothing to score")
    preds = [np.asarray(inverse(img)) for img in generated]
    miou, _ious = mean_iou(preds, ground_truth, ignore_index)
    pq = panoptic_quality(
        preds,
        ground_truth,
        pred_classes=preds if task == "semantic" else None,
        gt_classes=list(ground_truth) if task == "semantic" else None,
    )
    metrics = {"miou": 100 * miou, **{k: 100 * v for k, v in pq.items()}}
    return BenchmarkResult(
        benchmark="sgt-proxy-segmentation",
        split=task,
        kind="proxy",
        metrics=metrics,
        primary_metric="miou" if task == "semantic" else "pq",
        num_items=len(preds),
        protocol="mIoU over a dataset confusion; PQ with IoU>0.5 matching, void-dominated predictions not FP",
    )
