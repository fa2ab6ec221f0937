"""The scene world's model: classes, colours, the scene config, geometry and the seeded generator.

The public names are re-exported (and listed in ``__all__``) by :mod:`sgt_data.scenes` (see
its docstring for the world's rules); this module holds what both the generator and the
question writer (:mod:`sgt_data.scene_questions`) need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sgt_data.errors import SgtDataError

#: Shape classes; COCO category id = index + 1.
SCENE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon")

#: Colour names (GenEval's ten) and the RGB each is drawn with.
SCENE_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (240, 140, 30),
    "yellow": (245, 235, 35),
    "green": (40, 150, 60),
    "blue": (40, 80, 210),
    "purple": (130, 50, 160),
    "pink": (240, 150, 190),
    "brown": (125, 75, 35),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
}

#: How often each class starts a scene (so POPE's "popular" negatives mean something).
_CLASS_PRIOR = np.array([0.25, 0.20, 0.18, 0.15, 0.12, 0.10])
#: Families of classes that co-occur more often and resemble each other (rounded / angular).
_FAMILY = np.array([0, 1, 1, 0, 1, 0])
_SAME_FAMILY_AFFINITY = 3.0
_AFFINITY = np.where(_FAMILY[:, None] == _FAMILY[None, :], _SAME_FAMILY_AFFINITY, 1.0)

#: Muted background colours; object colours too close to the background are redrawn.
_BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (170, 168, 160),
    (200, 188, 160),
    (150, 170, 148),
    (135, 150, 170),
    (190, 165, 165),
    (210, 206, 198),
    (140, 140, 120),
)
_MIN_COLOR_CONTRAST = 90.0
_BACKGROUND_DEPTH_TOP_M = 14.0
_BACKGROUND_DEPTH_BOTTOM_M = 10.0
_COLOR_JITTER = 6
_PIXEL_NOISE = 3
_TEXTURE_AMPLITUDE = 10


class SceneConfig(BaseModel):
    """How scenes are drawn and which questions are asked about them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: int = Field(default=64, ge=16, le=4096)
    width: int = Field(default=64, ge=16, le=4096)
    min_objects: int = Field(default=1, ge=1)
    max_objects: int = Field(default=5, ge=1, le=12)
    min_depth_m: float = Field(default=2.0, gt=0)
    max_depth_m: float = Field(default=6.0, gt=0)
    #: Apparent radius (px) = size * min(height, width) / depth, size drawn in this range.
    min_size: float = Field(default=0.3, gt=0)
    max_size: float = Field(default=0.5, gt=0)
    #: Visible-area rule (see module docstring): fraction of the image area ...
    min_visible_area: float = Field(default=0.004, ge=0, le=1)
    #: ... and fraction of the shape's own unoccluded area.
    min_visible_ratio: float = Field(default=0.35, ge=0, le=1)
    #: GenEval's position margin (``POSITION_THRESHOLD``): a fraction of the summed box sizes.
    relation_margin: float = Field(default=0.1, ge=0)
    #: Nearer/farther is asked only about shapes whose depths differ by at least this much.
    depth_margin_m: float = Field(default=0.5, ge=0)
    #: Also write the reasoning questions (count sums, comparisons, differences) into the train
    #: split; the held-out split always has them (``sgt_data.scene_questions``).
    train_reasoning: bool = False
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(default=95, ge=1, le=100)

    @model_validator(mode="after")
    def _check_ranges(self) -> SceneConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) exceeds max_objects ({self.max_objects})"
            )
        if self.min_depth_m > self.max_depth_m:
            raise ValueError(
                f"min_depth_m ({self.min_depth_m}) exceeds max_depth_m ({self.max_depth_m})"
            )
        if self.max_depth_m >= _BACKGROUND_DEPTH_BOTTOM_M:
            raise ValueError(
                f"max_depth_m ({self.max_depth_m}) must stay in front of the background "
                f"({_BACKGROUND_DEPTH_BOTTOM_M} m)"
            )
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) exceeds max_size ({self.max_size})")
        return self


@dataclass(frozen=True)
class SceneObject:
    """One visible shape of a scene."""

    class_name: str
    color: str
    depth_m: float
    #: The shape's outline as a flat COCO polygon ``[x0, y0, x1, y1, ...]`` (pixel units).
    polygon: tuple[float, ...]
    #: Its visible pixels after occlusion (``HxW`` bool).
    mask: NDArray[np.bool_]
    #: Visible pixel count.
    area: int
    #: COCO ``[x, y, w, h]`` of the visible mask.
    bbox: tuple[float, float, float, float]
    #: Whether nearer shapes hide part of it.
    occluded: bool

    @property
    def category_id(self) -> int:
        """COCO category id of its class."""
        return SCENE_CLASSES.index(self.class_name) + 1


@dataclass(frozen=True)
class Scene:
    """A generated scene: image, depth map and its visible shapes (far to near)."""

    seed: int
    image: NDArray[np.uint8]
    depth_m: NDArray[np.float32]
    objects: tuple[SceneObject, ...]
    background: str


# --------------------------------------------------------------------------- mask codec (sgt_data.rle)


def _rasterize_polygons(
    polygons: Sequence[Sequence[float]], height: int, width: int
) -> NDArray[np.bool_]:
    """Rasterise each polygon with COCO's polygon semantics: ``N x H x W`` bool."""
    from sgt_data import rle

    rles = rle.frPyObjects([list(p) for p in polygons], height, width)
    masks = np.asarray(rle.decode(rles), dtype=bool)  # H x W x N
    return np.ascontiguousarray(masks.transpose(2, 0, 1))


def _encode_rle(mask: NDArray[np.bool_]) -> dict[str, Any]:
    """Compressed COCO RLE of one mask, JSON-ready (``counts`` as str)."""
    from sgt_data import rle

    encoded = rle.encode(np.asfortranarray(mask, dtype=np.uint8))
    if isinstance(encoded, list):  # only for a stack of masks; ours is one
        encoded = encoded[0]
    counts = encoded["counts"]
    return {
        "size": [int(s) for s in encoded["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
    }


# --------------------------------------------------------------------------- geometry


def shape_outline(class_name: str) -> NDArray[np.float64]:
    """Vertices (``N x 2``, x right, y down) of a class's outline around the origin, radius about 1
    (drawn scaled by the shape's radius and turned by at most ``SCENE_MAX_ROTATION`` degrees)."""
    if class_name == "circle":
        angles = np.linspace(0.0, 2 * math.pi, 32, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if class_name == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if class_name == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.cos(angles), np.sin(angles) + 0.2], axis=1)
    if class_name == "star":
        angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if class_name == "diamond":
        return np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])
    if class_name == "hexagon":
        angles = np.deg2rad(60.0 * np.arange(6))
        return 0.95 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    raise ValueError(f"unknown scene class {class_name!r}; known: {list(SCENE_CLASSES)}")


_OUTLINES = {name: shape_outline(name) for name in SCENE_CLASSES}
#: Largest rotation (degrees) per class: enough variety, never turning a square into a diamond.
SCENE_MAX_ROTATION: dict[str, float] = {
    "circle": 0.0,
    "square": 15.0,
    "triangle": 15.0,
    "star": 20.0,
    "diamond": 10.0,
    "hexagon": 30.0,
}


def _polygon(
    class_name: str, cx: float, cy: float, radius: float, rotation_deg: float
) -> tuple[float, ...]:
    theta = math.radians(rotation_deg)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    points = _OUTLINES[class_name] @ rot.T * radius + np.array([cx, cy])
    return tuple(float(v) for v in np.round(points, 2).ravel())


def _mask_bbox(mask: NDArray[np.bool_]) -> tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (
        float(cols[0]),
        float(rows[0]),
        float(cols[-1] - cols[0] + 1),
        float(rows[-1] - rows[0] + 1),
    )


def geneval_relations(
    box_a: Sequence[float], box_b: Sequence[float], margin: float = 0.1
) -> frozenset[str]:
    """GenEval's position of box A relative to box B (COCO ``[x, y, w, h]`` boxes).

    Relations are among ``left of``, ``right of``, ``above``, ``below`` (image y points down);
    the centre offset is shrunk by ``margin`` times the summed box sizes before its direction is
    read, so boxes that are nearly aligned on an axis have no relation on it.
    """
    ax, ay, aw, ah = (float(v) for v in box_a)
    bx, by, bw, bh = (float(v) for v in box_b)
    offset = np.array([(ax + aw / 2) - (bx + bw / 2), (ay + ah / 2) - (by + bh / 2)])
    dims = np.array([aw + bw, ah + bh])
    revised = np.maximum(np.abs(offset) - margin * dims, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return frozenset()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return frozenset(relations)


# --------------------------------------------------------------------------- scene generation


def _background(
    rng: np.random.Generator, height: int, width: int
) -> tuple[NDArray[np.float32], str, list[NDArray[np.float64]]]:
    """Background image (float RGB), its kind, and the colours it is made of."""
    kind = ("solid", "gradient", "texture")[int(rng.integers(3))]
    first = np.array(_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))], dtype=np.float64)
    if kind == "solid":
        image = np.broadcast_to(first, (height, width, 3)).astype(np.float32)
        return image, kind, [first]
    if kind == "gradient":
        second = np.array(_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))], dtype=np.float64)
        angle = rng.uniform(0.0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width]
        ramp = math.cos(angle) * xx / max(width - 1, 1) + math.sin(angle) * yy / max(height - 1, 1)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        image = (first + (second - first) * ramp[..., None]).astype(np.float32)
        return image, kind, [first, second]
    # light texture: smooth low-amplitude noise plus faint stripes
    coarse = rng.uniform(-1.0, 1.0, (height // 8 + 2, width // 8 + 2))
    noise = np.kron(coarse, np.ones((8, 8)))[:height, :width]
    period = float(rng.uniform(4.0, 10.0))
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = np.sin(2 * math.pi * (xx + yy * rng.uniform(-1.0, 1.0)) / period)
    pattern = _TEXTURE_AMPLITUDE * (0.6 * noise + 0.4 * stripes)
    image = (first + pattern[..., None]).astype(np.float32)
    return image, kind, [first]


def _draw_classes(rng: np.random.Generator, count: int) -> list[int]:
    """Class indices of a scene: the first by the prior, the rest by affinity to the first."""
    first = int(rng.choice(len(SCENE_CLASSES), p=_CLASS_PRIOR))
    weights = _AFFINITY[first] * _CLASS_PRIOR
    rest = rng.choice(len(SCENE_CLASSES), size=count - 1, p=weights / weights.sum())
    return [first, *(int(c) for c in rest)]


_COLOR_NAMES = tuple(SCENE_COLORS)
_COLOR_TABLE = np.array([SCENE_COLORS[n] for n in _COLOR_NAMES], dtype=np.float64)


def _allowed_colors(background: list[NDArray[np.float64]]) -> list[str]:
    """Colour names far enough from every colour the background is made of."""
    distance = np.linalg.norm(_COLOR_TABLE[:, None, :] - np.array(background)[None], axis=-1)
    return [
        n
        for n, d in zip(_COLOR_NAMES, distance.min(axis=1), strict=True)
        if d >= _MIN_COLOR_CONTRAST
    ]


def generate_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """Draw the scene of one seed (the same seed and config always give the same scene)."""
    cfg = config or SceneConfig()
    if seed < 0:
        raise SgtDataError(f"scene seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    H, W = cfg.height, cfg.width
    bg_image, bg_kind, bg_colors = _background(rng, H, W)

    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    classes = _draw_classes(rng, count)
    short = min(H, W)
    allowed = _allowed_colors(bg_colors)
    placed: list[tuple[str, str, float, tuple[float, ...]]] = []
    for class_index in classes:
        name = SCENE_CLASSES[class_index]
        depth = float(rng.uniform(cfg.min_depth_m, cfg.max_depth_m))
        radius = float(rng.uniform(cfg.min_size, cfg.max_size)) * short / depth
        radius = min(radius, short / 2 - 1.5)
        cx = float(rng.uniform(radius + 1.0, W - 1.0 - radius))
        cy = float(rng.uniform(radius + 1.0, H - 1.0 - radius))
        rotation = float(rng.uniform(-1.0, 1.0)) * SCENE_MAX_ROTATION[name]
        color = allowed[int(rng.integers(len(allowed)))]
        placed.append((name, color, depth, _polygon(name, cx, cy, radius, rotation)))

    # far to near, so that nearer shapes paint over farther ones
    placed.sort(key=lambda item: -item[2])
    full = _rasterize_polygons([p[3] for p in placed], H, W)
    keep = _resolve_visibility(full, cfg)
    placed = [placed[i] for i in keep]
    full = full[keep]

    labels = np.full((H, W), -1, dtype=np.int16)
    for i in range(len(placed)):
        labels[full[i]] = i

    image = bg_image.copy()
    depth_map = np.broadcast_to(
        np.linspace(_BACKGROUND_DEPTH_TOP_M, _BACKGROUND_DEPTH_BOTTOM_M, H, dtype=np.float32)[
            :, None
        ],
        (H, W),
    ).copy()
    objects: list[SceneObject] = []
    for i, (name, color, depth, polygon) in enumerate(placed):
        visible = labels == i
        rgb = np.array(SCENE_COLORS[color], dtype=np.float32)
        rgb = rgb + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3)
        n_visible = int(visible.sum())
        image[visible] = rgb + rng.integers(-_PIXEL_NOISE, _PIXEL_NOISE + 1, (n_visible, 1))
        depth_map[visible] = depth
        objects.append(
            SceneObject(
                class_name=name,
                color=color,
                depth_m=depth,
                polygon=polygon,
                mask=visible,
                area=n_visible,
                bbox=_mask_bbox(visible),
                occluded=bool(n_visible < int(full[i].sum())),
            )
        )
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(
        seed=seed, image=pixels, depth_m=depth_map, objects=tuple(objects), background=bg_kind
    )


def _resolve_visibility(full: NDArray[np.bool_], cfg: SceneConfig) -> list[int]:
    """Indices (far-to-near order) of the shapes kept by the visible-area rule."""
    keep = list(range(full.shape[0]))
    image_area = full.shape[1] * full.shape[2]
    while keep:
        labels = np.full(full.shape[1:], -1, dtype=np.int16)
        for i in keep:
            labels[full[i]] = i
        visible = np.bincount(labels.ravel() + 1, minlength=full.shape[0] + 1)[1:]
        worst, worst_ratio = -1, math.inf
        for i in keep:
            own = int(full[i].sum())
            ratio = visible[i] / own if own else 0.0
            failing = (
                own == 0
                or visible[i] < cfg.min_visible_area * image_area
                or ratio < cfg.min_visible_ratio
            )
            if failing and ratio < worst_ratio:
                worst, worst_ratio = i, ratio
        if worst < 0:
            break
        keep.remove(worst)
    return keep


# --------------------------------------------------------------------------- derived annotations


def semantic_map(scene: Scene) -> NDArray[np.uint8]:
    """COCO-Stuff style label map: ``category_id - 1`` on each shape, 255 elsewhere (unlabeled)."""
    out = np.full(scene.image.shape[:2], 255, dtype=np.uint8)
    for obj in scene.objects:
        out[obj.mask] = obj.category_id - 1
    return out


def coco_annotations(scene: Scene, image_id: int, first_annotation_id: int) -> list[dict[str, Any]]:
    """COCO instance annotations of a scene's visible shapes (polygon if unoccluded, else RLE)."""
    annotations = []
    for k, obj in enumerate(scene.objects):
        segmentation: Any = _encode_rle(obj.mask) if obj.occluded else [list(obj.polygon)]
        annotations.append(
            {
                "id": first_annotation_id + k,
                "image_id": image_id,
                "category_id": obj.category_id,
                "segmentation": segmentation,
                "area": float(obj.area),
                "bbox": list(obj.bbox),
                "iscrowd": 0,
                "color": obj.color,
                "depth_m": round(obj.depth_m, 3),
            }
        )
    return annotations
