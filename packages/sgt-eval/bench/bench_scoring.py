"""Speed of sgt-eval's array scorers against plain references, in the same process.

connected_regions (vectorised label propagation, used by ColorBlobDetector) vs a Python BFS;
mean_iou (per-class masks) vs a bincount confusion matrix. Labels are checked equal first.
Run: python packages/sgt-eval/bench/bench_scoring.py
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from sgt_eval.detectors import PALETTE, connected_regions
from sgt_eval.scoring.segmentation import mean_iou


def _scene(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    colors = list(PALETTE.values())[:8]
    for _ in range(n):
        x, y = rng.integers(0, size - 24, 2)
        s = int(rng.integers(8, 24))
        d.ellipse([int(x), int(y), int(x) + s, int(y) + s], fill=colors[int(rng.integers(0, 8))])
    return np.asarray(im)


def _bfs_regions(image: np.ndarray, fg: np.ndarray, tol: int = 40) -> np.ndarray:
    h, w = fg.shape
    img = image.astype(np.int16)
    out = np.zeros((h, w), np.int64)
    k = 0
    for r in range(h):
        for c in range(w):
            if not fg[r, c] or out[r, c]:
                continue
            k += 1
            out[r, c] = k
            q = deque([(r, c)])
            while q:
                y, x = q.popleft()
                for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    if (
                        0 <= ny < h
                        and 0 <= nx < w
                        and fg[ny, nx]
                        and not out[ny, nx]
                        and np.abs(img[y, x] - img[ny, nx]).max() < tol
                    ):
                        out[ny, nx] = k
                        q.append((ny, nx))
    return out


def _confusion_miou(preds: list[np.ndarray], gts: list[np.ndarray], n: int) -> float:
    conf = np.zeros((n, n), np.int64)
    for p, g in zip(preds, gts, strict=True):
        conf += np.bincount(g.ravel() * n + p.ravel(), minlength=n * n).reshape(n, n)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


def _time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for size in (64, 128, 256):
        image = _scene(rng, size, size // 8)
        fg = (image < 200).any(-1)
        ours, ref = connected_regions(image, fg), _bfs_regions(image, fg)
        assert np.array_equal(ours, ref), "region labels differ from the BFS reference"
        t_ours = _time(lambda: connected_regions(image, fg), 3)  # noqa: B023
        t_ref = _time(lambda: _bfs_regions(image, fg), 1)  # noqa: B023
        rows.append((f"connected_regions {size}x{size}", t_ours, t_ref))
    preds = [rng.integers(0, 20, (256, 256)) for _ in range(16)]
    gts = [rng.integers(0, 20, (256, 256)) for _ in range(16)]
    assert abs(mean_iou(preds, gts)[0] - _confusion_miou(preds, gts, 20)) < 1e-12
    rows.append(
        (
            "mean_iou 16x256² 20 classes",
            _time(lambda: mean_iou(preds, gts), 3),
            _time(lambda: _confusion_miou(preds, gts, 20), 3),
        )
    )
    print(f"{'case':34s} {'ours ms':>10s} {'reference ms':>13s} {'ref/ours':>9s}")
    for name, ours_t, ref_t in rows:
        print(f"{name:34s} {ours_t * 1e3:10.2f} {ref_t * 1e3:13.2f} {ref_t / ours_t:9.2f}")


if __name__ == "__main__":
    main()
