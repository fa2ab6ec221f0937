"""Types that cross package boundaries: task kinds, the model-agnostic `Sample`, the store manifest.

Everything here is a pydantic v2 model with ``extra="forbid"``; records written to disk carry a
``schema_version`` so that readers can refuse what they do not understand.
"""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

__all__ = [
    "GENERATIVE_TASKS",
    "MANIFEST_SCHEMA_VERSION",
    "ImageArray",
    "MixtureConfig",
    "MixtureSource",
    "RendererSpec",
    "Sample",
    "SkippedItem",
    "SourceSpec",
    "StoreManifest",
    "TaskKind",
    "Turn",
]

MANIFEST_SCHEMA_VERSION: Literal[1] = 1


class TaskKind(StrEnum):
    """What a sample trains. The first four are generative proxy tasks drawn by the generation branch."""

    SEGMENTATION = "segmentation"
    EDGE = "edge"
    DEPTH = "depth"
    RECONSTRUCTION = "reconstruction"
    UNDERSTANDING = "understanding"
    TEXT_TO_IMAGE = "text_to_image"


#: Tasks whose supervision is an image drawn by the generation branch.
GENERATIVE_TASKS: frozenset[TaskKind] = frozenset(
    {
        TaskKind.SEGMENTATION,
        TaskKind.EDGE,
        TaskKind.DEPTH,
        TaskKind.RECONSTRUCTION,
        TaskKind.TEXT_TO_IMAGE,
    }
)


def _validate_image(value: Any) -> NDArray[np.uint8]:
    """Accept an HxWx3 uint8 array, or its JSON form ``{"shape", "dtype", "data"}`` (base64)."""
    if isinstance(value, dict):
        try:
            shape = tuple(int(s) for s in value["shape"])
            dtype = np.dtype(value["dtype"])
            raw = base64.b64decode(value["data"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed serialised image: {exc}") from exc
        if dtype != np.uint8:
            raise ValueError(f"image dtype must be uint8, got {dtype}")
        if len(raw) != int(np.prod(shape)):
            raise ValueError(
                f"image data holds {len(raw)} bytes, shape {shape} needs {int(np.prod(shape))}"
            )
        value = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    if not isinstance(value, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise ValueError(f"image dtype must be uint8, got {value.dtype}")
    if value.ndim != 3 or value.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {value.shape}")
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {value.shape}")
    return value


def _serialise_image(value: NDArray[np.uint8]) -> dict[str, Any]:
    data = np.ascontiguousarray(value)
    return {
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "data": base64.b64encode(data.tobytes()).decode("ascii"),
    }


#: An RGB image: ``HxWx3`` uint8, serialised to JSON as base64 with its shape.
ImageArray = Annotated[
    NDArray[np.uint8],
    PlainValidator(_validate_image),
    PlainSerializer(_serialise_image, when_used="json"),
    WithJsonSchema(
        {
            "type": "object",
            "properties": {
                "shape": {"type": "array", "items": {"type": "integer"}},
                "dtype": {"const": "uint8"},
                "data": {"type": "string", "contentEncoding": "base64"},
            },
            "required": ["shape", "dtype", "data"],
        }
    ),
]


class Turn(BaseModel):
    """One earlier turn of a multi-turn conversation (understanding samples)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["user", "assistant"]
    text: str


class Sample(BaseModel):
    """One model-agnostic training or evaluation sample.

    The adapter of a model family turns a list of these into its own batch (tokenising, resizing).
    For generative proxy tasks the input ``image`` reaches the model only through its
    understanding encoder and ``target_image`` is what the generation branch must draw.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    sample_id: str = Field(
        min_length=1, description="globally unique id, e.g. 'coco-val:000000139'"
    )
    source: str = Field(min_length=1, description="name of the store or source it came from")
    task: TaskKind
    task_variant: str | None = Field(
        default=None, description="e.g. 'instance', 'semantic' or 'panoptic' for segmentation"
    )
    instruction: str = Field(description="the prompt, question or generation instruction")
    image: ImageArray | None = None
    target_image: ImageArray | None = None
    answer: str | None = None
    history: tuple[Turn, ...] = ()
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_task_fields(self) -> Sample:
        task = self.task
        if task is TaskKind.UNDERSTANDING:
            if self.answer is None:
                raise ValueError(
                    f"sample {self.sample_id!r}: an understanding sample needs an answer"
                )
            if self.target_image is not None:
                raise ValueError(
                    f"sample {self.sample_id!r}: an understanding sample has no target image"
                )
        elif task is TaskKind.TEXT_TO_IMAGE:
            if self.target_image is None:
                raise ValueError(
                    f"sample {self.sample_id!r}: a text-to-image sample needs a target image"
                )
        else:  # generative proxy tasks: image in, rendered map out
            if self.image is None or self.target_image is None:
                raise ValueError(
                    f"sample {self.sample_id!r}: a {task.value} sample needs both an input image "
                    "and a target image"
                )
        return self


class SourceSpec(BaseModel):
    """Where the samples of a store came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["coco", "coco-panoptic", "coco-stuff", "sa1b", "vqa", "scene", "captions"]
    path: str
    num_items: int = Field(ge=0)
    sha256: str | None = Field(default=None, description="digest of the annotation file, if one")


class RendererSpec(BaseModel):
    """A target renderer and the parameters it ran with (recorded so that targets can be reproduced)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    task: TaskKind
    version: int = Field(ge=1)
    params: dict[str, str | int | float | bool | list[int] | list[float]] = Field(
        default_factory=dict
    )


class SkippedItem(BaseModel):
    """An input item left out under ``--skip-bad``, with why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: str
    file: str
    reason: str


class StoreManifest(BaseModel):
    """The manifest of one sample store (``manifest.json`` at the store root)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    created_by: str = Field(description="'sgt-data <version>'")
    name: str
    sources: tuple[SourceSpec, ...]
    num_samples: int = Field(ge=0)
    task_counts: dict[TaskKind, int]
    renderers: tuple[RendererSpec, ...]
    palette_seed: int
    arrays: dict[str, str] = Field(
        default_factory=dict, description="array path -> sha256 of its decoded contents"
    )
    skipped: tuple[SkippedItem, ...] = ()

    @field_validator("task_counts")
    @classmethod
    def _non_negative(cls, counts: dict[TaskKind, int]) -> dict[TaskKind, int]:
        bad = {k.value: v for k, v in counts.items() if v < 0}
        if bad:
            raise ValueError(f"task counts must be >= 0, got {bad}")
        return counts


class MixtureSource(BaseModel):
    """One source of a training mixture: a store, which of its tasks to draw, how much of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    store: str = Field(min_length=1, description="path to a sample store")
    task: TaskKind
    task_variant: str | None = None
    ratio: float = Field(default=1.0, gt=0, description="relative share of samples drawn from it")
    max_samples: int | None = Field(
        default=None, ge=1, description="cap on distinct samples used (data-scale studies)"
    )
    where: dict[str, tuple[str | int | float | bool, ...]] | None = Field(
        default=None,
        description=(
            "keep only samples whose per-sample metadata field equals one of the listed values, "
            "e.g. {question_type: [existence, counting]}; every field must match (before "
            "max_samples)"
        ),
    )

    @field_validator("where", mode="before")
    @classmethod
    def _listify_where(cls, where: Any) -> Any:
        if isinstance(where, dict):  # {question_type: existence} means [existence]
            return {k: v if isinstance(v, (list, tuple)) else [v] for k, v in where.items()}
        return where

    @field_validator("where")
    @classmethod
    def _check_where(
        cls, where: dict[str, tuple[str | int | float | bool, ...]] | None
    ) -> dict[str, tuple[str | int | float | bool, ...]] | None:
        if where is None:
            return None
        if not where:
            raise ValueError("where must name at least one metadata field (or be omitted)")
        empty = sorted(k for k, v in where.items() if not v)
        if empty:
            raise ValueError(f"where: fields {empty} list no values; nothing could match")
        return where


class MixtureConfig(BaseModel):
    """How task sources are mixed into micro-batches.

    ``interleave``: every micro-batch holds one source, sources follow ``pattern``
    (e.g. ``[seg, seg, vqa]`` is the recipe's 2:1). ``within_batch``: each micro-batch draws its
    samples from all sources by ``ratio``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: tuple[MixtureSource, ...] = Field(min_length=1)
    mode: Literal["interleave", "within_batch"] = "interleave"
    pattern: tuple[str, ...] | None = Field(
        default=None, description="interleave order of source names; derived from ratios if absent"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check_names(self) -> MixtureConfig:
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique, repeated: {duplicates}")
        if self.pattern is not None:
            if self.mode != "interleave":
                raise ValueError("pattern is only meaningful with mode='interleave'")
            unknown = sorted(set(self.pattern) - set(names))
            if unknown:
                raise ValueError(f"pattern names unknown sources {unknown}; sources are {names}")
            if not self.pattern:
                raise ValueError("pattern must not be empty")
        return self
