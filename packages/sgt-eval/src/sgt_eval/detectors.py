"""Detectors and colour classifiers for synthetic scenes of flat-coloured shapes on a plain ground.

These are real detectors for that domain (the CPU demo's scene world and the tests): objects are
connected regions of one colour that differs from the background; the class is the shape, read
from how much of its bounding box the region fills (square ~1, circle ~π/4, triangle ~1/2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from sgt_eval.scoring.geneval import Detection

__all__ = ["PALETTE", "ColorBlobDetector", "NearestColorClassifier", "connected_regions"]

#: Reference RGB of GenEval's ten colour names.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "orange": (255, 140, 0),
    "yellow": (240, 220, 20),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "purple": (130, 40, 170),
    "pink": (255, 130, 190),
    "brown": (130, 80, 30),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
}

_FILL = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}


def connected_regions(
    image: NDArray[np.uint8], foreground: NDArray[np.bool_], tolerance: int = 40
) -> NDArray[np.int64]:
    """Label 4-connected regions of foreground pixels whose neighbours differ by < ``tolerance``.

    Returns an int map: 0 for background, 1..N for regions (numbered in raster order).
    """
    h, w = foreground.shape
    img = image.astype(np.int16)
    same_right = (
        foreground[:, :-1]
        & foreground[:, 1:]
        & (np.abs(img[:, :-1] - img[:, 1:]).max(axis=-1) < tolerance)
    )
    same_down = (
        foreground[:-1] & foreground[1:] & (np.abs(img[:-1] - img[1:]).max(axis=-1) < tolerance)
    )
    big = h * w + 1
    labels = np.where(foreground, np.arange(h * w).reshape(h, w), big)
    while True:
        prev = labels
        labels = labels.copy()
        left = np.minimum(labels[:, :-1], labels[:, 1:])
        labels[:, :-1] = np.where(same_right, left, labels[:, :-1])
        labels[:, 1:] = np.where(same_right, np.minimum(labels[:, 1:], left), labels[:, 1:])
        up = np.minimum(labels[:-1], labels[1:])
        labels[:-1] = np.where(same_down, up, labels[:-1])
        labels[1:] = np.where(same_down, np.minimum(labels[1:], up), labels[1:])
        if np.array_equal(labels, prev):
            break
    out = np.zeros((h, w), dtype=np.int64)
    roots = np.unique(labels[foreground])
    for k, root in enumerate(roots, 1):
        out[labels == root] = k
    return out


class ColorBlobDetector:
    """Finds flat-coloured squares, circles and triangles on a plain background.

    The background colour is the median of the border pixels; pixels farther than
    ``background_tolerance`` from it are foreground. Each region of at least ``min_area`` pixels
    is an object whose class is the shape with the nearest fill ratio (the triangle's
    corrected for its rasterised edges); its score falls linearly
    from 1 to 0 as the fill ratio moves ``score_scale`` away from that shape's ideal.
    """

    name = "color-blob-shapes"

    def __init__(
        self, min_area: int = 20, background_tolerance: int = 40, score_scale: float = 0.3
    ) -> None:
        self.min_area = min_area
        self.background_tolerance = background_tolerance
        self.score_scale = score_scale

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        """Detections of the shapes in an RGB image (HxWx3 uint8)."""
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        background = np.median(border, axis=0)
        distance = np.abs(image.astype(np.float64) - background).max(axis=-1)
        regions = connected_regions(image, distance > self.background_tolerance)
        detections = []
        for k in range(1, int(regions.max()) + 1):
            mask = regions == k
            area = int(mask.sum())
            if area < self.min_area:
                continue
            rows, cols = np.nonzero(mask)
            x1, y1, x2, y2 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
            fill = area / float((x2 - x1) * (y2 - y1))
            ideal = dict(_FILL)
            # a rasterised triangle keeps its half-covered pixels along the two slanted edges
            ideal["triangle"] += 0.5 / min(x2 - x1, y2 - y1)
            label = min(ideal, key=lambda s: abs(ideal[s] - fill))
            score = float(max(0.0, 1.0 - abs(ideal[label] - fill) / self.score_scale))
            detections.append(
                Detection(label, score, (float(x1), float(y1), float(x2), float(y2)), mask)
            )
        return detections


class NearestColorClassifier:
    """Names a crop's colour: the palette colour nearest to the mean of its non-gray pixels."""

    name = "nearest-palette-color"

    def __init__(self, palette: dict[str, tuple[int, int, int]] | None = None) -> None:
        self.palette = palette or PALETTE

    def classify(
        self, crops: Sequence[NDArray[np.uint8]], label: str, colors: Sequence[str]
    ) -> list[str]:
        """One colour name per crop (crops are objects pasted on gray #999)."""
        names = [c for c in colors if c in self.palette]
        refs = np.array([self.palette[c] for c in names], dtype=np.float64)
        out = []
        for crop in crops:
            pixels = crop.reshape(-1, 3).astype(np.float64)
            keep = np.abs(pixels - 0x99).max(axis=1) > 8
            mean = pixels[keep].mean(axis=0) if keep.any() else np.full(3, 153.0)
            out.append(names[int(np.argmin(((refs - mean) ** 2).sum(axis=1)))])
        return out
