"""Instruction sets for the generative proxy tasks, and their deterministic choice per sample.

Each set is composed from hand-written fragments (verb, object phrase, manner; or output noun
phrase, scope, detail) whose combinations are all grammatical English imperatives, giving several
hundred distinct instructions per task. A sample's instruction is picked by a stable hash of
``(seed, sample_id, epoch, task, variant)`` (BLAKE2b, not Python's salted ``hash``), so it is the
same on every run, rank and worker, and changes from one epoch to the next.
"""

from __future__ import annotations

import hashlib
from functools import cache
from itertools import product

from sgt_data.schema import TaskKind

__all__ = [
    "PROMPT_SET_KEYS",
    "choose_instruction",
    "instruction_set",
    "stable_hash",
]

#: The (task, variant) pairs that have an instruction set. Segmentation variant ``None`` means
#: ``"instance"`` (SA-1B style colour-per-object masks, the SGT recipe's target).
PROMPT_SET_KEYS: tuple[tuple[TaskKind, str | None], ...] = (
    (TaskKind.SEGMENTATION, "instance"),
    (TaskKind.SEGMENTATION, "semantic"),
    (TaskKind.SEGMENTATION, "panoptic"),
    (TaskKind.EDGE, None),
    (TaskKind.DEPTH, None),
    (TaskKind.RECONSTRUCTION, None),
)


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` (by their ``str``) that is identical in every process and run."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _imperatives(verbs: list[str], objects: list[str], manners: list[str]) -> list[str]:
    return [f"{v} {o}{m}." for v, o, m in product(verbs, objects, manners)]


def _requests(
    makers: list[str], outputs: list[str], scopes: list[str], details: list[str]
) -> list[str]:
    return [f"{m} {o}{s}{d}." for m, o, s, d in product(makers, outputs, scopes, details)]


_MAKERS = ["Generate", "Draw", "Produce", "Render", "Create", "Output"]
_SCOPES = ["", " of this image", " for this picture", " of the scene", " of the photo"]


def _instance() -> list[str]:
    verbs = ["Segment", "Color", "Paint", "Highlight", "Mask", "Fill", "Mark", "Shade"]
    each = [
        "each instance",
        "every instance",
        "each object",
        "every object",
        "each individual object",
        "every separate object",
        "each object instance",
        "every distinct object",
    ]
    each_manner = [
        " in a different color",
        " with its own color",
        " in a unique color",
        " with a distinct color",
        " in its own flat color",
    ]
    all_ = [
        "all instances",
        "all objects",
        "all object instances",
        "the individual objects",
        "the separate objects",
    ]
    all_manner = [
        " in different colors",
        " with unique colors",
        " using distinct colors",
        " in contrasting flat colors",
    ]
    outputs = [
        "an instance segmentation map",
        "an instance mask",
        "a color-coded instance map",
        "a map of the object instances",
    ]
    details = ["", ", one color per object", ", giving each object its own color"]
    return [
        *_imperatives(verbs, each, each_manner),
        *_imperatives(verbs, all_, all_manner),
        *_requests(_MAKERS, outputs, _SCOPES, details),
    ]


def _semantic() -> list[str]:
    unit_verbs = ["Color", "Paint", "Label", "Shade"]
    units = ["every pixel", "each pixel", "each region", "every region"]
    unit_manners = [
        " by its class",
        " by its semantic category",
        " according to its category",
        " with the color of its class",
    ]
    whole_verbs = ["Segment", "Color", "Paint", "Label"]
    wholes = ["the image", "the scene", "this picture"]
    whole_manners = [
        " by semantic category",
        " by class",
        " with one color per class",
        " using a fixed color for each category",
        " so that pixels of the same class share a color",
    ]
    outputs = [
        "a semantic segmentation map",
        "a semantic label map",
        "a class-colored segmentation",
        "a semantic mask",
        "a per-pixel class map",
    ]
    details = ["", ", one color per category", ", coloring things and stuff by class"]
    return [
        *_imperatives(unit_verbs, units, unit_manners),
        *_imperatives(whole_verbs, wholes, whole_manners),
        *_requests(_MAKERS, outputs, _SCOPES, details),
    ]


def _panoptic() -> list[str]:
    verbs = ["Segment", "Color", "Paint", "Mark"]
    objects = [
        "every object and background region",
        "each thing and stuff region",
        "all objects and background areas",
        "every instance and every stuff region",
        "the things and the stuff",
    ]
    manners = [
        " in distinct colors",
        " with a separate color for each segment",
        " so that every segment has its own color",
        " in unique colors, objects and background alike",
    ]
    outputs = [
        "a panoptic segmentation map",
        "a panoptic mask",
        "a color-coded panoptic map",
        "a panoptic label map",
        "a map of all things and stuff",
    ]
    details = [
        "",
        ", one color per segment",
        ", giving every object and background region its own color",
    ]
    return [
        *_imperatives(verbs, objects, manners),
        *_requests(_MAKERS, outputs, _SCOPES, details),
    ]


def _edge() -> list[str]:
    verbs = ["Detect", "Extract", "Find", "Trace", "Draw", "Highlight"]
    objects = [
        "the edges",
        "all edges",
        "the object boundaries",
        "the contours",
        "the outlines",
        "the strong edges",
    ]
    manners = [
        "",
        " in the image",
        " of this picture",
        " as white lines on black",
        " as a binary edge map",
        " with a Canny detector",
    ]
    outputs = [
        "an edge map",
        "a Canny edge map",
        "a line drawing of the edges",
        "a contour map",
        "a boundary map",
    ]
    details = ["", ", white edges on a black background", ", keeping only the edges"]
    return [
        *_imperatives(verbs, objects, manners),
        *_requests(_MAKERS, outputs, _SCOPES, details),
        "Apply Canny edge detection.",
        "Apply a Canny filter.",
        "Run an edge detector on this image.",
    ]


def _depth() -> list[str]:
    verbs = ["Estimate", "Predict", "Infer", "Compute", "Visualize", "Recover"]
    objects = [
        "the depth",
        "the scene depth",
        "the relative depth",
        "the depth of every pixel",
        "the distance to each surface",
        "the depth of the scene",
    ]
    manners = ["", " in this image", " in the picture", " as a depth map", " as a dense map"]
    outputs = [
        "a depth map",
        "a monocular depth map",
        "a relative depth map",
        "a dense depth map",
        "a color-coded depth map",
    ]
    details = ["", ", showing near and far surfaces", ", one depth value per pixel"]
    return [
        *_imperatives(verbs, objects, manners),
        *_requests(_MAKERS, outputs, _SCOPES, details),
    ]


def _reconstruction() -> list[str]:
    verbs = ["Reconstruct", "Redraw", "Reproduce", "Recreate", "Repaint", "Regenerate"]
    objects = [
        "the image",
        "this image",
        "the picture",
        "this photo",
        "the input image",
        "the scene",
    ]
    manners = [
        "",
        " exactly",
        " as faithfully as possible",
        " pixel by pixel",
        " with every detail",
        " without changing anything",
    ]
    outputs = [
        "an exact copy of the image",
        "a faithful reconstruction of the picture",
        "the same image again",
        "a pixel-accurate replica of the photo",
    ]
    details = [
        "",
        ", preserving every detail",
        ", keeping colors, shapes and layout unchanged",
        ", matching the original exactly",
    ]
    return [
        *_imperatives(verbs, objects, manners),
        *_requests(_MAKERS, outputs, [""], details),
    ]


_BUILDERS = {
    (TaskKind.SEGMENTATION, "instance"): _instance,
    (TaskKind.SEGMENTATION, "semantic"): _semantic,
    (TaskKind.SEGMENTATION, "panoptic"): _panoptic,
    (TaskKind.EDGE, None): _edge,
    (TaskKind.DEPTH, None): _depth,
    (TaskKind.RECONSTRUCTION, None): _reconstruction,
}


def _key(task: TaskKind, variant: str | None) -> tuple[TaskKind, str | None]:
    if task is TaskKind.SEGMENTATION and variant is None:
        return (task, "instance")
    key = (task, variant)
    if key not in _BUILDERS:
        known = ", ".join(f"{t.value}/{v}" for t, v in PROMPT_SET_KEYS)
        raise ValueError(
            f"no instruction set for task {task.value!r} variant {variant!r}; known: {known}"
        )
    return key


@cache
def instruction_set(task: TaskKind, variant: str | None = None) -> tuple[str, ...]:
    """All distinct instructions for a proxy task (segmentation variant None means instance)."""
    phrases = _BUILDERS[_key(task, variant)]()
    return tuple(dict.fromkeys(phrases))  # de-duplicate, keep the composed order


def choose_instruction(
    task: TaskKind, variant: str | None, *, seed: int, sample_id: str, epoch: int
) -> str:
    """The instruction of one sample in one epoch, identical in every process and run."""
    phrases = instruction_set(task, variant)
    key = _key(task, variant)
    return phrases[stable_hash(seed, sample_id, epoch, key[0].value, key[1]) % len(phrases)]
