"""Detectors and colour classifiers for synthetic scenes of flat-coloured shapes on a plain ground.

These are real detectors for that domain (the CPU demo's scene world and the tests): objects are
connected regions of one colour that differs from the background.

- ``ColorBlobDetector`` reads the class from how much of its bounding box a region fills (square
  ~1, circle ~π/4, triangle ~1/2): squares, circles and triangles on any plain ground.
- ``SceneShapeDetector`` knows the scene world of ``sgt_data.scenes``: objects are shapes filled
  with one of its ten colours (plus small jitter and noise) over muted backgrounds that keep a
  wide margin from every object colour. A pixel belongs to an object when it lies within
  ``max_color_distance`` of a palette colour; each 4-connected region of one palette colour is a
  candidate; its class is the shape template (circle, square, triangle, star, diamond, hexagon,
  over the rotations the world draws) that best overlaps it when scaled to the region's area and
  centred on its centroid, and its score is that overlap (IoU). A clean, unoccluded shape scores
  about 0.9 or more; blurred or malformed blobs score less, so GenEval's thresholds (0.3, and 0.9
  for counting) keep their meaning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from sgt_data.scenes import SCENE_CLASSES, SCENE_COLORS, SCENE_MAX_ROTATION, shape_outline
from sgt_eval.scoring.geneval import Detection

__all__ = [
    "PALETTE",
    "ColorBlobDetector",
    "NearestColorClassifier",
    "SceneShapeDetector",
    "connected_regions",
    "scene_color_classifier",
]

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


_Box = tuple[float, float, float, float]


def _objects(
    regions: NDArray[np.int64], min_area: int, max_area: float = math.inf
) -> Iterator[tuple[NDArray[np.bool_], int, _Box]]:
    """(mask, area, ``x1, y1, x2, y2`` box) of each region of a region map whose area lies in
    ``[min_area, max_area]``."""
    for k in range(1, int(regions.max()) + 1):
        mask = regions == k
        area = int(mask.sum())
        if area < min_area or area > max_area:
            continue
        rows, cols = np.nonzero(mask)
        box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
        yield mask, area, box


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
        for mask, area, box in _objects(regions, self.min_area):
            x1, y1, x2, y2 = box
            fill = area / ((x2 - x1) * (y2 - y1))
            ideal = dict(_FILL)
            # a rasterised triangle keeps its half-covered pixels along the two slanted edges
            ideal["triangle"] += 0.5 / min(x2 - x1, y2 - y1)
            label = min(ideal, key=lambda s: abs(ideal[s] - fill))
            score = float(max(0.0, 1.0 - abs(ideal[label] - fill) / self.score_scale))
            detections.append(Detection(label, score, box, mask))
        return detections


_SCENE_PALETTE = np.array(list(SCENE_COLORS.values()), dtype=np.float64)
_ROTATION_STEP = 5.0


def _polygon_area_centroid(points: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
    x, y = points[:, 0], points[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2.0
    cx = ((x + xn) * cross).sum() / (6.0 * area)
    cy = ((y + yn) * cross).sum() / (6.0 * area)
    return abs(float(area)), np.array([cx, cy])


@lru_cache(maxsize=1)
def _scene_templates() -> tuple[tuple[str, NDArray[np.float64], float], ...]:
    """(class, outline centred on its centroid, unit area) for every scene class and every
    rotation, in ``_ROTATION_STEP`` steps, up to the largest the world draws."""
    out = []
    for name in SCENE_CLASSES:
        base = shape_outline(name)
        steps = int(SCENE_MAX_ROTATION[name] // _ROTATION_STEP)
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
    """Finds the coloured shapes of ``sgt_data.scenes`` by template matching (see the module
    docstring)."""

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
        distance = np.linalg.norm(pixels[:, :, None, :] - _SCENE_PALETTE[None, None], axis=-1)
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
        for mask, area, box in _objects(regions, self.min_area, self.max_area_fraction * h * w):
            if _contrast(image, mask) < self.min_contrast:
                continue
            label, score = self._classify(mask, area)
            detections.append(Detection(label, score, box, mask))
        return detections

    def _classify(self, mask: NDArray[np.bool_], area: int) -> tuple[str, float]:
        rows, cols = np.nonzero(mask)
        # pixel (i, j) covers [j, j+1) x [i, i+1): its centre is at +0.5
        centre = np.array([cols.mean() + 0.5, rows.mean() + 0.5])
        polygons, names = [], []
        for name, outline, unit_area in _scene_templates():
            polygons.append(outline * math.sqrt(area / unit_area) + centre)
            names.append(name)
        candidates = _rasterize(polygons, *mask.shape)
        inter = (candidates & mask).sum(axis=(1, 2))
        union = (candidates | mask).sum(axis=(1, 2))
        iou = inter / np.maximum(union, 1)
        best = int(np.argmax(iou))
        return names[best], float(iou[best])


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


def scene_color_classifier() -> NearestColorClassifier:
    """GenEval's colour step for the scene world: nearest of the world's ten colours."""
    return NearestColorClassifier(palette=dict(SCENE_COLORS))
