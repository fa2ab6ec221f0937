"""Target renderers: label maps -> RGB target images, and their inverses (RGB -> label maps).

Every renderer is deterministic given its parameters (recorded by :meth:`spec` in the store
manifest), draws background/absent pixels black, and has an ``inverse`` that decodes a rendered
image back to the label map by nearest palette colour, so that slightly perturbed generated maps
still decode. The paletted renderers (instance, semantic, panoptic) draw from the seeded palettes
of :mod:`sgt_data._palette`, which also chooses each image's instance colours.

Depth colour map ("sgt-rainbow", 1531 levels): the polyline blue (near) -> cyan -> green ->
yellow -> red -> magenta -> white (far) through the RGB cube, one channel changing by one step
per level; black means "no depth". Depth is quantised linearly between ``d_min`` and ``d_max``;
:func:`depth_from_model` (in :mod:`sgt_data._depth_model`) estimates depth with a local model.
"""

from __future__ import annotations

import itertools
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from sgt_data._depth_model import _depth_pipeline as _depth_pipeline  # tests clear its cache
from sgt_data._depth_model import check_depth_model, depth_from_model
from sgt_data._palette import (
    DEFAULT_MAX_INSTANCES,
    DEFAULT_NUM_CLASSES,
    RGB,
    Labels,
    _adjacency_kernel,
    _check_labels,
    _check_rgb,
    _gather,
    _greedy_colours,
    _slot_tables,
    distinct_palette,
    nearest_colour,
    scan_runs,
)
from sgt_data._palette import _adjacency_runs as _adjacency_runs  # the scan's reference
from sgt_data.errors import RenderError
from sgt_data.schema import RendererSpec, TaskKind

__all__ = [
    "DEPTH_LEVELS",
    "DepthRenderer",
    "EdgeRenderer",
    "InstanceRenderer",
    "PanopticRenderer",
    "ReconstructionRenderer",
    "SemanticRenderer",
    "check_depth_model",
    "depth_from_model",
    "distinct_palette",
    "renderer_from_spec",
]


def _scan(labels: Labels, radius: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(Pairs (a, b), a < b, of non-zero labels within ``radius`` pixels of each other along a
    row or column; the non-zero labels present), by the compiled run kernel
    (:func:`sgt_data._palette.scan_runs`)."""
    return scan_runs(labels, radius, _adjacency_kernel())


def _adjacency(labels: Labels, radius: int) -> NDArray[np.int64]:
    """Pairs (a, b), a < b, of non-zero labels that come within ``radius`` pixels of each other
    along a row or column (checked at offsets 1, 2, 4, ... <= radius)."""
    return _scan(labels, radius)[0]


class _Base:
    name: str = ""
    task: TaskKind = TaskKind.SEGMENTATION
    version: int = 1

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return {}

    def spec(self) -> RendererSpec:
        """The renderer and its parameters, for the store manifest."""
        return RendererSpec(
            name=self.name, task=self.task, version=self.version, params=self._params()
        )


class _Paletted(_Base):
    """A renderer drawing from the seeded palette of class then instance colours."""

    def __init__(
        self,
        seed: int = 0,
        *,
        num_classes: int = DEFAULT_NUM_CLASSES,
        max_instances: int = DEFAULT_MAX_INSTANCES,
    ) -> None:
        self.seed = seed
        self.num_classes = num_classes
        self.max_instances = max_instances

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return {
            "seed": self.seed,
            "num_classes": self.num_classes,
            "max_instances": self.max_instances,
        }


class InstanceRenderer(_Paletted):
    """Instance id map (0 = background, 1..K instances) -> each instance its own colour."""

    name = "instance"

    def __init__(
        self,
        seed: int = 0,
        *,
        num_classes: int = DEFAULT_NUM_CLASSES,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        neighbour_radius: int = 8,
    ) -> None:
        super().__init__(seed, num_classes=num_classes, max_instances=max_instances)
        self.neighbour_radius = neighbour_radius

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return {**super()._params(), "neighbour_radius": self.neighbour_radius}

    @property
    def palette(self) -> RGB:
        """The instance colours (``max_instances`` x 3)."""
        return distinct_palette(self.num_classes + self.max_instances, self.seed)[
            self.num_classes :
        ]

    def assign(self, labels: Labels) -> NDArray[np.int32]:
        """Palette slot of each id 1..max(labels) (-1 for ids absent from the map)."""
        labels = _check_labels(labels)
        k = int(labels.max()) if labels.size else 0
        out = np.full(k, -1, dtype=np.int32)
        pairs, ids = _scan(labels, self.neighbour_radius)
        tables = _slot_tables(self.num_classes + self.max_instances, self.num_classes, self.seed)
        slots = _greedy_colours(ids, pairs, tables)
        for i, s in slots.items():
            out[i - 1] = s
        return out

    def colours(self, slots: NDArray[np.integer[Any]]) -> RGB:
        """Colour of each id 0..len(slots) under a slot table (0 and unassigned ids: black)."""
        slots = np.asarray(slots)
        lut = np.zeros((len(slots) + 1, 3), dtype=np.uint8)
        used = slots >= 0
        lut[1:][used] = self.palette[slots[used]]
        return lut

    def render(self, labels: Labels, slots: NDArray[np.int32] | None = None) -> RGB:
        """Colour each instance with its assigned palette colour, background black; ``slots``
        (from :meth:`assign`, e.g. stored at conversion) skips the assignment."""
        labels = _check_labels(labels)
        if slots is None:
            slots = self.assign(labels)
        elif labels.size and int(labels.max()) > len(slots):
            raise RenderError(f"label {int(labels.max())} has no slot ({len(slots)} given)")
        return _gather(self.colours(slots), labels)

    def inverse(self, rgb: RGB, slots: NDArray[np.int32] | None = None) -> NDArray[np.int32]:
        """Decode to a label map: with ``slots`` (from :meth:`assign`) the original ids, else slot+1."""
        if slots is None:
            colours = np.concatenate([np.zeros((1, 3), np.uint8), self.palette])
            return nearest_colour(rgb, colours)
        used = np.flatnonzero(slots >= 0)
        colours = np.concatenate([np.zeros((1, 3), np.uint8), self.palette[slots[used]]])
        ids = np.concatenate([[0], used + 1]).astype(np.int32)
        return ids[nearest_colour(rgb, colours)]


class SemanticRenderer(_Paletted):
    """Class id map (0 = unlabelled, 1..num_classes-1) -> a fixed colour per class."""

    name = "semantic"

    @property
    def palette(self) -> RGB:
        """Colour of each class id (``num_classes`` x 3); row 0 (unlabelled) is black."""
        pal = distinct_palette(self.num_classes + self.max_instances, self.seed)[: self.num_classes]
        out = pal.copy()
        out[0] = 0
        return out

    def render(self, labels: Labels) -> RGB:
        """Colour each pixel with its class colour."""
        labels = _check_labels(labels)
        if labels.size and int(labels.max()) >= self.num_classes:
            raise RenderError(f"class id {int(labels.max())} >= num_classes {self.num_classes}")
        return _gather(self.palette, labels)

    def inverse(self, rgb: RGB) -> NDArray[np.int32]:
        """Class id of the nearest class colour per pixel."""
        return nearest_colour(rgb, self.palette)


class PanopticRenderer(_Base):
    """Segment id map + per-segment category and thing flag -> stuff in its class colour,
    each thing segment in its own instance colour (disjoint from all class colours)."""

    name = "panoptic"

    def __init__(
        self,
        seed: int = 0,
        *,
        num_classes: int = DEFAULT_NUM_CLASSES,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        neighbour_radius: int = 8,
    ) -> None:
        self.seed = seed
        self.semantic = SemanticRenderer(seed, num_classes=num_classes, max_instances=max_instances)
        self.instance = InstanceRenderer(
            seed,
            num_classes=num_classes,
            max_instances=max_instances,
            neighbour_radius=neighbour_radius,
        )

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return self.instance._params()

    def _luts(
        self, labels: Labels, categories: NDArray[Any], isthing: NDArray[Any]
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        labels = _check_labels(labels)
        cats = np.concatenate([[0], np.asarray(categories, dtype=np.int64)])
        thing = np.concatenate([[False], np.asarray(isthing, dtype=bool)])
        if labels.size and int(labels.max()) >= len(cats):
            raise RenderError(
                f"segment id {int(labels.max())} has no category ({len(cats) - 1} segments given)"
            )
        return cats, thing

    def assign(
        self, labels: Labels, categories: NDArray[Any], isthing: NDArray[Any]
    ) -> NDArray[np.int32]:
        """Instance palette slot of each thing segment (-1 for stuff and absent segments)."""
        _, thing = self._luts(labels, categories, isthing)
        things_only = np.where(thing[labels], labels, 0)
        slots = self.instance.assign(things_only)
        out = np.full(len(thing) - 1, -1, dtype=np.int32)
        out[: len(slots)] = slots
        return out

    def render(
        self,
        labels: Labels,
        categories: NDArray[Any],
        isthing: NDArray[Any],
        slots: NDArray[np.int32] | None = None,
    ) -> RGB:
        """Render a panoptic segment map."""
        self._luts(labels, categories, isthing)  # checks the map against the segments
        if slots is None:
            slots = self.assign(labels, categories, isthing)
        return _gather(self.colours(categories, isthing, slots), labels)

    def colours(
        self, categories: NDArray[Any], isthing: NDArray[Any], slots: NDArray[np.integer[Any]]
    ) -> RGB:
        """Colour of each segment id 0..len(categories) (0: black)."""
        cats = np.concatenate([[0], np.asarray(categories, dtype=np.int64)])
        thing = np.concatenate([[False], np.asarray(isthing, dtype=bool)])
        slots = np.asarray(slots)
        if len(slots) != len(cats) - 1:
            raise RenderError(f"{len(slots)} slots for {len(cats) - 1} segments")
        lut: RGB = self.semantic.palette[cats]
        seg_thing = np.flatnonzero(thing[1:] & (slots >= 0))
        lut[seg_thing + 1] = self.instance.palette[slots[seg_thing]]
        lut[0] = 0
        return lut

    def inverse(
        self,
        rgb: RGB,
        categories: NDArray[Any] | None = None,
        isthing: NDArray[Any] | None = None,
        slots: NDArray[np.int32] | None = None,
    ) -> NDArray[np.int32]:
        """Decode to segment ids when the segments are given, else to palette codes
        (0 black, c for class colour c, num_classes + slot + 1 for instance colours)."""
        sem = self.semantic.palette
        nc = len(sem)
        if categories is None or isthing is None or slots is None:
            return nearest_colour(rgb, np.concatenate([sem, self.instance.palette]))
        cats = np.asarray(categories, dtype=np.int64)
        thing = np.asarray(isthing, dtype=bool)
        colours = [np.zeros((1, 3), np.uint8)]
        ids = [0]
        for k in range(len(cats)):
            if thing[k] and slots[k] >= 0:
                colours.append(self.instance.palette[slots[k]][None])
            elif not thing[k] and 0 < cats[k] < nc:
                colours.append(sem[cats[k]][None])
            else:
                continue
            ids.append(k + 1)
        return np.asarray(ids, dtype=np.int32)[nearest_colour(rgb, np.concatenate(colours))]


_EDGE_LUT: Final = np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8)


class EdgeRenderer(_Base):
    """Canny edges of the image (needs the ``edge`` extra: opencv) -> white edges on black."""

    name = "edge"
    task = TaskKind.EDGE

    def __init__(
        self, low: int = 100, high: int = 200, aperture: int = 3, l2gradient: bool = False
    ):
        if not 0 <= low <= high:
            raise RenderError(f"Canny thresholds must satisfy 0 <= low <= high, got {low}, {high}")
        self.low, self.high, self.aperture, self.l2gradient = low, high, aperture, l2gradient

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return {
            "low": self.low,
            "high": self.high,
            "aperture": self.aperture,
            "l2gradient": self.l2gradient,
        }

    def compute(self, image: RGB) -> NDArray[np.uint8]:
        """Edge map (1 = edge) of an RGB image."""
        try:
            import cv2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "edge targets need OpenCV: pip install 'sgt-data[edge]' (opencv-python-headless)"
            ) from exc
        gray = cv2.cvtColor(np.ascontiguousarray(_check_rgb(image)), cv2.COLOR_RGB2GRAY)
        edges = cv2.Canny(
            gray, self.low, self.high, apertureSize=self.aperture, L2gradient=self.l2gradient
        )
        return (np.asarray(edges) > 0).astype(np.uint8)

    def render(self, edges: Labels) -> RGB:
        """White (255) where ``edges`` is non-zero, black elsewhere."""
        e = _check_labels(edges) != 0
        return _gather(_EDGE_LUT, e.view(np.uint8))

    def inverse(self, rgb: RGB) -> NDArray[np.uint8]:
        """1 where the pixel is nearer white than black."""
        white: NDArray[np.bool_] = _check_rgb(rgb).astype(np.uint16).sum(axis=2) >= 383
        return white.astype(np.uint8)


#: number of depth levels of the sgt-rainbow colour map (level 0 = no depth, black)
DEPTH_LEVELS: Final = 6 * 255 + 1
_DEPTH_PATH: Final = np.array(
    [
        [0, 0, 255],
        [0, 255, 255],
        [0, 255, 0],
        [255, 255, 0],
        [255, 0, 0],
        [255, 0, 255],
        [255, 255, 255],
    ],
    dtype=np.int32,
)


def _depth_lut() -> RGB:
    pts = [_DEPTH_PATH[0]]
    for a, b in itertools.pairwise(_DEPTH_PATH):
        step = np.sign(b - a)
        pts.extend(a + step * t for t in range(1, 256))
    lut = np.zeros((DEPTH_LEVELS + 1, 3), dtype=np.uint8)
    lut[1:] = np.asarray(pts, dtype=np.uint8)
    return lut


_DEPTH_LUT: Final = _depth_lut()


class DepthRenderer(_Base):
    """Depth map (float, metres or relative) -> the sgt-rainbow colour map; invalid depth black.

    ``quantise`` gives the stored label map (uint16 level 0..1531); ``inverse`` decodes a colour map
    to levels and ``levels_to_depth`` back to depth values (up to the quantisation step).
    """

    name = "depth"
    task = TaskKind.DEPTH

    def __init__(self, d_min: float = 0.0, d_max: float = 10.0, *, per_image: bool = False) -> None:
        if not d_max > d_min:
            raise RenderError(f"depth range must satisfy d_min < d_max, got {d_min}, {d_max}")
        self.d_min, self.d_max, self.per_image = float(d_min), float(d_max), per_image

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return {
            "d_min": self.d_min,
            "d_max": self.d_max,
            "per_image": self.per_image,
            "levels": DEPTH_LEVELS,
            "colormap": "sgt-rainbow",
        }

    def range_for(self, depth: NDArray[np.floating[Any]]) -> tuple[float, float]:
        """The depth range used for ``depth``: fixed, or the image's finite min/max if ``per_image``."""
        if not self.per_image:
            return self.d_min, self.d_max
        valid = depth[np.isfinite(depth) & (depth > 0)]
        if valid.size == 0:
            return self.d_min, self.d_max
        lo, hi = float(valid.min()), float(valid.max())
        return (lo, hi) if hi > lo else (lo, lo + 1.0)

    def quantise(
        self, depth: NDArray[np.floating[Any]], d_range: tuple[float, float] | None = None
    ) -> NDArray[np.uint16]:
        """Depth levels 1..1531 (0 where depth is missing: non-finite or <= 0)."""
        lo, hi = d_range if d_range is not None else self.range_for(depth)
        d = np.asarray(depth, dtype=np.float64)
        valid = np.isfinite(d) & (d > 0)
        t = np.clip((np.where(valid, d, lo) - lo) / (hi - lo), 0.0, 1.0)
        return np.where(valid, 1 + np.rint(t * (DEPTH_LEVELS - 1)), 0).astype(np.uint16)

    def levels_to_depth(
        self, levels: Labels, d_range: tuple[float, float] | None = None
    ) -> NDArray[np.float32]:
        """Depth values of levels (NaN for level 0)."""
        lo, hi = d_range if d_range is not None else (self.d_min, self.d_max)
        lv = np.asarray(levels, dtype=np.float64)
        d = lo + (lv - 1) / (DEPTH_LEVELS - 1) * (hi - lo)
        return np.where(lv > 0, d, np.nan).astype(np.float32)

    def render(self, levels: Labels) -> RGB:
        """Colour-map depth levels."""
        levels = _check_labels(levels)
        if levels.size and int(levels.max()) > DEPTH_LEVELS:
            raise RenderError(f"depth level {int(levels.max())} > {DEPTH_LEVELS}")
        return _gather(_DEPTH_LUT, levels)

    def inverse(self, rgb: RGB) -> NDArray[np.uint16]:
        """Depth level of each pixel: nearest point on the colour path (0 if nearest to black)."""
        p = _check_rgb(rgb).astype(np.int32)
        best_d = (p**2).sum(axis=2)  # distance to black
        best_l = np.zeros(p.shape[:2], dtype=np.int32)
        for s in range(len(_DEPTH_PATH) - 1):
            a, b = _DEPTH_PATH[s], _DEPTH_PATH[s + 1]
            c = int(np.flatnonzero(b != a)[0])
            sign = int(np.sign(b[c] - a[c]))
            t = np.clip((p[..., c] - a[c]) * sign, 0, 255)
            q = np.broadcast_to(a, p.shape).copy()
            q[..., c] = a[c] + sign * t
            d = ((p - q) ** 2).sum(axis=2)
            better = d < best_d
            best_d = np.where(better, d, best_d)
            best_l = np.where(better, 1 + 255 * s + t, best_l)
        return best_l.astype(np.uint16)


class ReconstructionRenderer(_Base):
    """The image itself (the reconstruction proxy task)."""

    name = "reconstruction"
    task = TaskKind.RECONSTRUCTION

    def render(self, image: RGB) -> RGB:
        """Return the image."""
        return _check_rgb(image)

    def inverse(self, rgb: RGB) -> RGB:
        """Return the image."""
        return _check_rgb(rgb)


_RENDERERS: Final[dict[str, type[_Base]]] = {
    r.name: r
    for r in (
        InstanceRenderer,
        SemanticRenderer,
        PanopticRenderer,
        EdgeRenderer,
        DepthRenderer,
        ReconstructionRenderer,
    )
}


def renderer_from_spec(spec: RendererSpec) -> Any:
    """Rebuild a renderer from its manifest record."""
    cls = _RENDERERS.get(spec.name)
    if cls is None:
        raise RenderError(f"unknown renderer {spec.name!r}; known: {sorted(_RENDERERS)}")
    if spec.version != cls.version:
        raise RenderError(
            f"renderer {spec.name!r} version {spec.version} != supported {cls.version}"
        )
    params: dict[str, Any] = {
        k: v for k, v in spec.params.items() if k not in ("levels", "colormap")
    }
    seed = params.pop("seed", None)
    factory: Any = cls
    return factory(seed, **params) if seed is not None else factory(**params)
