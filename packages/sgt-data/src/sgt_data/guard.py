"""Guard against a generative-proxy target that is really the input image.

A released SGT implementation packed its segmentation samples' images in the wrong order, so the
generation branch was trained to redraw the *input* (reconstruction) instead of the rendered map.
:func:`check_target` catches that: the target of a segmentation, edge or depth sample must differ
clearly from its input (mean absolute difference after resizing both to a common size), and a
segmentation target must look rendered (a small palette of flat colours, unlike a photograph).
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from sgt_data.errors import TargetGuardError
from sgt_data.schema import Sample, TaskKind

__all__ = [
    "DEFAULT_MAX_PALETTE_COLORS",
    "DEFAULT_MIN_MEAN_ABS_DIFF",
    "GUARDED_TASKS",
    "check_target",
    "check_target_arrays",
    "mean_abs_difference",
]

logger = logging.getLogger(__name__)

#: Tasks whose target must not be the input. Reconstruction's target *is* the input by design.
GUARDED_TASKS: frozenset[TaskKind] = frozenset(
    {TaskKind.SEGMENTATION, TaskKind.EDGE, TaskKind.DEPTH}
)

#: Below this mean absolute difference (0-255 scale, at the comparison size) a target counts as a
#: copy of the input. A JPEG (quality 75) re-encode or a 2x resize of a photo measured 0.3-0.8;
#: rendered instance, semantic and depth maps of the same photo 68-137 (tests/test_guard.py).
DEFAULT_MIN_MEAN_ABS_DIFF = 8.0

#: A rendered segmentation map holds one flat colour per segment (SA-1B: ~100 masks per image,
#: COCO panoptic: < 200 segments); a photograph sampled at the same points has thousands.
DEFAULT_MAX_PALETTE_COLORS = 1024

_COMPARE_SIZE = 64
_PALETTE_SAMPLES = 16_384


def _reduced(image: NDArray[np.uint8], factor: int) -> NDArray[np.float32]:
    from PIL import Image

    pil = Image.fromarray(image)
    return np.asarray(pil.reduce(factor) if factor > 1 else pil, dtype=np.float32)


def mean_abs_difference(image: NDArray[np.uint8], target: NDArray[np.uint8]) -> float:
    """Mean absolute difference (0-255) of two RGB images, box-averaged to about 64 px a side.

    A target of another size is first resized (bilinear) to the image's size, so that both are
    averaged over the same pixel blocks (an integer box reduction: fast, and exactly aligned).
    """
    from PIL import Image

    h, w = image.shape[:2]
    if target.shape[:2] != (h, w):
        target = np.asarray(Image.fromarray(target).resize((w, h), Image.Resampling.BILINEAR))
    factor = max(1, min(h, w) // _COMPARE_SIZE)
    return float(np.abs(_reduced(image, factor) - _reduced(target, factor)).mean())


def _palette_size(target: NDArray[np.uint8]) -> int:
    """Distinct colours at about 16,384 evenly strided pixels (no interpolation: exact colours)."""
    h, w = target.shape[:2]
    stride = max(1, int(np.ceil(np.sqrt(h * w / _PALETTE_SAMPLES))))
    px = np.ascontiguousarray(target[::stride, ::stride]).reshape(-1, 3).astype(np.uint32)
    packed = (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]
    return int(np.unique(packed).size)


def check_target_arrays(
    image: NDArray[np.uint8] | None,
    target: NDArray[np.uint8] | None,
    *,
    task: TaskKind,
    sample_id: str,
    source: str,
    min_mean_abs_diff: float = DEFAULT_MIN_MEAN_ABS_DIFF,
    max_palette_colors: int | None = DEFAULT_MAX_PALETTE_COLORS,
) -> None:
    """Raise :class:`TargetGuardError` if a proxy target is (nearly) its input or not a rendered map.

    Tasks outside :data:`GUARDED_TASKS` pass unchecked. ``max_palette_colors=None`` skips the
    palette check of segmentation targets.
    """
    if task not in GUARDED_TASKS:
        return
    if image is None or target is None:
        raise TargetGuardError(
            sample_id, source, f"a {task.value} sample needs both an input and a target image"
        )
    if target is image or (target.shape == image.shape and np.array_equal(target, image)):
        raise TargetGuardError(
            sample_id,
            source,
            f"the {task.value} target is identical to the input image "
            "(the input was fed as the generation target)",
        )
    diff = mean_abs_difference(image, target)
    if diff < min_mean_abs_diff:
        raise TargetGuardError(
            sample_id,
            source,
            f"the {task.value} target is nearly the input image (mean absolute difference "
            f"{diff:.2f} < {min_mean_abs_diff:.2f}); "
            "it must be the rendered map, not the input",
        )
    if task is TaskKind.SEGMENTATION and max_palette_colors is not None:
        colors = _palette_size(target)
        if colors > max_palette_colors:
            raise TargetGuardError(
                sample_id,
                source,
                f"the segmentation target has {colors} distinct colours (> {max_palette_colors}): "
                "it looks like a photograph, not a rendered colour-coded map",
            )


def check_target(
    sample: Sample,
    *,
    min_mean_abs_diff: float = DEFAULT_MIN_MEAN_ABS_DIFF,
    max_palette_colors: int | None = DEFAULT_MAX_PALETTE_COLORS,
) -> None:
    """Raise :class:`TargetGuardError` if a proxy sample's target is not its rendered map."""
    check_target_arrays(
        sample.image,
        sample.target_image,
        task=sample.task,
        sample_id=sample.sample_id,
        source=sample.source,
        min_mean_abs_diff=min_mean_abs_diff,
        max_palette_colors=max_palette_colors,
    )
