"""A detector for the synthetic scene world (``sgt_data.scenes``), for the GenEval-style scorer.

Objects of that world are shapes filled with one of ten named colours (plus small jitter and
noise) over muted backgrounds that keep a wide margin from every object colour. So a pixel belongs
to an object when it lies within ``max_color_distance`` of a palette colour; each 4-connected
region of one palette colour is a candidate object; its class is the shape template (circle,
square, triangle, star, diamond, hexagon, over the rotations the world draws) that best overlaps
it when scaled to the region's area and centred on its centroid, and its score is that overlap
(IoU). A clean, unoccluded shape scores about 0.9 or more; blurred or malformed blobs score less,
so GenEval's thresholds (0.3, and 0.9 for counting) keep their meaning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from sgt_data.scenes import SCENE_CLASSES, SCENE_COLORS
from sgt_eval.detectors import NearestColorClassifier, connected_regions
from sgt_eval.scoring.geneval import Detection

__all__ = ["SceneShapeDetector", "scene_color_classifier", "shape_outline"]

_PALETTE_NAMES = tuple(SCENE_COLORS)
_PALETTE = np.array([SCENE_COLORS[n] for n in _PALETTE_NAMES], dtype=np.float64)

#: The largest rotation (degrees) the world draws per class, and the step of the template search.
_ROTATIONS: dict[str, float] = {
    "circle": 0.0,
    "square": 15.0,
    "triangle": 15.0,
    "star": 20.0,
    "diamond": 10.0,
    "hexagon": 30.0,
}
_ROTATION_STEP = 5.0


def shape_outline(class_name: str) -> NDArray[np.float64]:
    """Vertices (``N x 2``, x right, y down) of a class's outline around the origin, radius ~1.

    These are the shapes the scene world draws (its documented geometry), not read from its code.
    """
    if class_name == "circle":
        a = np.linspace(0.0, 2 * math.pi, 32, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], axis=1)
    if class_name == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if class_name == "triangle":
        a = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.cos(a), np.sin(a)], axis=1)
    if class_name == "star":
        a = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    if class_name == "diamond":
        return np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])
    if class_name == "hexagon":
        a = np.deg2rad(60.0 * np.arange(6))
        return 0.95 * np.stack([np.cos(a), np.sin(a)], axis=1)
    raise ValueError(f"unknown scene class {class_name!r}; known: {list(SCENE_CLASSES)}")


def _polygon_area_centroid(points: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
    x, y = points[:, 0], points[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2.0
    cx = ((x + xn) * cross).sum() / (6.0 * area)
    cy = ((y + yn) * cross).sum() / (6.0 * area)
    return abs(float(area)), np.array([cx, cy])


@lru_cache(maxsize=1)
def _templates() -> tuple[tuple[str, NDArray[np.float64], float], ...]:
    """(class, outline centred on its centroid, unit area) for every class and searched rotation."""
    out = []
    for name in SCENE_CLASSES:
        base = shape_outline(name)
        limit = _ROTATIONS[name]
        steps = int(limit // _ROTATION_STEP)
        for k in range(-steps, steps + 1):
            theta = math.radians(k * _ROTATION_STEP)
            rot = np.array(
                [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
            )
            pts = base @ rot.T
            area, centroid = _polygon_area_centroid(pts)
            out.append((name, pts - centroid, area))
    return tuple(out)


def _rasterize(
    polygons: Sequence[NDArray[np.float64]], height: int, width: int
) -> NDArray[np.bool_]:
    """COCO polygon rasterisation (``sgt_data.rle``, as the world draws): ``N x H x W`` bool."""
    from sgt_data import rle

    flat = [[float(v) for v in p.ravel()] for p in polygons]
    masks = np.asarray(rle.decode(rle.frPyObjects(flat, height, width)), dtype=bool)
    return np.ascontiguousarray(masks.transpose(2, 0, 1))


def _contrast(image: NDArray[np.uint8], mask: NDArray[np.bool_]) -> float:
    """Median RGB distance between a region's mean colour and the pixels bordering it."""
    ring = np.zeros_like(mask)
    ring[1:] |= mask[:-1]
    ring[:-1] |= mask[1:]
    ring[:, 1:] |= mask[:, :-1]
    ring[:, :-1] |= mask[:, 1:]
    ring &= ~mask
    if not ring.any():
        return 0.0
    pixels = image.astype(np.float64)
    mean = pixels[mask].mean(axis=0)
    return float(np.median(np.linalg.norm(pixels[ring] - mean, axis=-1)))


class SceneShapeDetector:
    """Finds the scene world's coloured shapes (see the module docstring); an ``ObjectDetector``."""

    name = "scene-shape-templates"

    def __init__(
        self,
        max_color_distance: float = 40.0,
        min_area: int = 16,
        max_area_fraction: float = 0.3,
        min_contrast: float = 50.0,
    ) -> None:
        self.max_color_distance = max_color_distance
        #: the world removes shapes under 0.4 % of a 64x64 image (16 px)
        self.min_area = min_area
        #: the world keeps object colours >= 90 (RGB distance) from the ground and from each
        #: other; a region whose surroundings are this close to its colour is texture or noise
        self.min_contrast = min_contrast
        #: the world's largest shape covers about a fifth of the image; a larger region of one
        #: colour is a background (e.g. the black ground of a drawn segmentation map), not a shape
        self.max_area_fraction = max_area_fraction

    def regions(self, image: NDArray[np.uint8]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Candidate objects: a region map (0 = none, 1..N) and the palette index of each pixel."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
        pixels = image.astype(np.float64)
        distance = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)
        nearest = distance.argmin(axis=-1)
        foreground = distance.min(axis=-1) < self.max_color_distance
        # one flat colour per palette index, so regions split exactly where the colour changes
        quantised = (nearest * 16).astype(np.uint8)[..., None].repeat(3, axis=-1)
        return connected_regions(quantised, foreground, tolerance=1), nearest

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        """Detections (class, IoU score, box, mask) of the shapes in an RGB image."""
        regions, _ = self.regions(image)
        h, w = regions.shape
        detections = []
        for k in range(1, int(regions.max()) + 1):
            mask = regions == k
            area = int(mask.sum())
            if area < self.min_area or area > self.max_area_fraction * h * w:
                continue
            if _contrast(image, mask) < self.min_contrast:
                continue
            label, score = self._classify(mask, area, h, w)
            rows, cols = np.nonzero(mask)
            box = (
                float(cols.min()),
                float(rows.min()),
                float(cols.max() + 1),
                float(rows.max() + 1),
            )
            detections.append(Detection(label, score, box, mask))
        return detections

    def _classify(self, mask: NDArray[np.bool_], area: int, h: int, w: int) -> tuple[str, float]:
        rows, cols = np.nonzero(mask)
        # pixel (i, j) covers [j, j+1) x [i, i+1): its centre is at +0.5
        centre = np.array([cols.mean() + 0.5, rows.mean() + 0.5])
        polygons, names = [], []
        for name, outline, unit_area in _templates():
            polygons.append(outline * math.sqrt(area / unit_area) + centre)
            names.append(name)
        candidates = _rasterize(polygons, h, w)
        inter = (candidates & mask).sum(axis=(1, 2))
        union = (candidates | mask).sum(axis=(1, 2))
        iou = inter / np.maximum(union, 1)
        best = int(np.argmax(iou))
        return names[best], float(iou[best])


def scene_color_classifier() -> NearestColorClassifier:
    """GenEval's colour step for the scene world: nearest of the world's ten colours."""
    return NearestColorClassifier(palette=dict(SCENE_COLORS))
