"""What a store holds: its fields, index columns, task bits and the stored form of a sample."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from sgt_data._frames import encode_frame
from sgt_data.errors import StoreError
from sgt_data.schema import TaskKind

LAYOUT_VERSION: Final = 2
#: layouts this reader opens: 1 (sgt-data < 0.4: whole-batch sha256 digests) and 2
_READABLE_LAYOUTS: Final = (1, 2)
MANIFEST_FILE: Final = "manifest.json"
JOURNAL_FILE: Final = "_sgt_progress.json"

#: bit of each (task, variant) in the ``tasks`` column of the index
TASK_BITS: Final[dict[tuple[TaskKind, str | None], int]] = {
    (TaskKind.SEGMENTATION, "instance"): 1 << 0,
    (TaskKind.SEGMENTATION, "semantic"): 1 << 1,
    (TaskKind.SEGMENTATION, "panoptic"): 1 << 2,
    (TaskKind.EDGE, None): 1 << 3,
    (TaskKind.DEPTH, None): 1 << 4,
    (TaskKind.RECONSTRUCTION, None): 1 << 5,
    (TaskKind.UNDERSTANDING, None): 1 << 6,
    (TaskKind.TEXT_TO_IMAGE, None): 1 << 7,
}
_FIXED_COLUMNS: Final = ("height", "width", "tasks", "crc32")


@dataclass(frozen=True)
class FieldSpec:
    """One flat per-sample array: its path, dtype, chunk size (elements), zarr-level zstd level
    (0: none) and shard size in chunks. With ``frame_dtype`` set, the array is uint8 and each
    sample is one zstd frame of a row-major ``frame_dtype`` array (label maps)."""

    path: str
    dtype: str
    chunk: int = 1 << 18
    zstd_level: int = 1
    chunks_per_shard: int = 64
    frame_dtype: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Every field by name, in the order declared (as the journal and manifest hold it)."""
        return asdict(self)


def label_field(path: str, dtype: str) -> FieldSpec:
    """A label-map field: one zstd frame (level 1) per sample, 1 MiB chunks, 64 MiB shards."""
    return FieldSpec(
        path, "uint8", chunk=1 << 20, zstd_level=0, chunks_per_shard=64, frame_dtype=dtype
    )


IMAGE_FIELD: Final = FieldSpec("image", "uint8", chunk=1 << 20, zstd_level=0, chunks_per_shard=64)
META_FIELD: Final = FieldSpec("meta", "uint8", chunk=1 << 16, zstd_level=3, chunks_per_shard=256)


@dataclass
class SampleRecord:
    """One converted sample, ready to be written: flat field arrays, a JSON record, its tasks."""

    sample_id: str
    height: int
    width: int
    tasks: frozenset[tuple[TaskKind, str | None]]
    arrays: dict[str, NDArray[Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: label fields already hold their stored zstd frames (records read back from a store)
    framed: bool = False
    #: the stored form computed ahead by :func:`seal_record` (field paths, each field's flat
    #: bytes or None, crc32), so that the writer only writes it
    sealed: tuple[tuple[str, ...], tuple[NDArray[Any] | None, ...], int] | None = None


def _store_fields(fields: Sequence[FieldSpec]) -> list[FieldSpec]:
    """A store's fields in stored order: image, meta, then the label fields."""
    return [IMAGE_FIELD, META_FIELD, *[f for f in fields if f.path not in ("image", "meta")]]


def _stored_form(
    rec: SampleRecord, fields: Sequence[FieldSpec]
) -> tuple[list[NDArray[Any] | None], int]:
    """Each field's flat stored array (None: absent) and the sample's crc32 over them in order."""
    flats: list[NDArray[Any] | None] = []
    crc = 0
    for spec in fields:
        if spec.path == "meta":
            a = np.frombuffer(
                json.dumps({"id": rec.sample_id, **rec.meta}, sort_keys=True).encode("utf-8"),
                dtype=np.uint8,
            )
        else:
            got = rec.arrays.get(spec.path)
            if got is None:
                flats.append(None)
                continue
            a = got
        if a.size == 0:
            flats.append(None)
            continue
        if spec.frame_dtype is not None and not (
            a.dtype == np.uint8 and a.ndim == 1 and rec.framed
        ):
            a = encode_frame(a, spec.frame_dtype)
        flat = np.ascontiguousarray(a, dtype=spec.dtype)
        if flat.ndim != 1:
            flat = flat.reshape(-1)
        crc = zlib.crc32(flat.data, crc)
        flats.append(flat)
    return flats, crc


def seal_record(rec: SampleRecord, fields: Sequence[FieldSpec]) -> None:
    """Compute ``rec``'s stored form for a store with these label ``fields`` now (label maps
    compressed to frames, metadata bytes, crc32), e.g. in a conversion worker, so that the
    writer, which runs serially, only writes it. The label arrays are replaced by their frames."""
    specs = _store_fields(fields)
    flats, crc = _stored_form(rec, specs)
    for spec, flat in zip(specs, flats, strict=True):
        if spec.frame_dtype is not None and flat is not None:
            rec.arrays[spec.path] = flat
    rec.framed = True
    rec.sealed = (tuple(s.path for s in specs), tuple(flats), crc)


def _task_bits(tasks: frozenset[tuple[TaskKind, str | None]]) -> int:
    bits = 0
    for key in tasks:
        if key not in TASK_BITS:
            raise StoreError(f"unknown (task, variant) {key}; known: {sorted(map(str, TASK_BITS))}")
        bits |= TASK_BITS[key]
    return bits


def _columns(fields: Sequence[FieldSpec]) -> list[str]:
    cols = list(_FIXED_COLUMNS)
    for f in fields:
        cols += [f"{f.path}.offset", f"{f.path}.length"]
    return cols


def _zarr() -> Any:
    import zarr

    return zarr
