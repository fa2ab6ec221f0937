"""The reader of a finished store (``SampleStore``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from sgt_data._frames import _decode_frame, _decode_frame_stored, paint_labels
from sgt_data._shard_reader import ByteSource, DirectArray, LocalSource, ZarrArray, open_array
from sgt_data._store_layout import (
    _READABLE_LAYOUTS,
    JOURNAL_FILE,
    MANIFEST_FILE,
    TASK_BITS,
    FieldSpec,
    SampleRecord,
)
from sgt_data.errors import SgtDataError, StoreError
from sgt_data.schema import StoreManifest, TaskKind, Turn

#: per-process reader caches: chunk-aligned blocks of ``meta`` (64 KiB each), parsed records
_META_BLOCKS: Final = 8
_META_RECORDS: Final = 32


def _first_lines(exc: ValueError) -> str:
    """A validation error in one line: its first problems (pydantic's own text spans lines)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors()[:3]
        ]
        more = exc.error_count() - len(parts)
        return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    return " ".join(str(exc).split())


class SampleStore:
    """Read-only access to a finished store (implements ``sgt_data.datasets.StoreReader``).

    The arrays are read straight from their shard files (or objects, for a store under a URL),
    zarr only for an encoding the store writer does not write (see ``sgt_data._shard_reader``).
    They are opened lazily and re-opened after a fork, so one instance can be shared with forked
    DataLoader workers.
    """

    def __init__(
        self,
        path: Path | str,
        manifest: StoreManifest,
        layout: Mapping[str, Any],
        source: ByteSource | None = None,
        *,
        direct: bool = True,
    ) -> None:
        #: the store's directory, or its URL (a ``str``) for a store on object storage
        self.path = path
        self._source: ByteSource = source if source is not None else LocalSource(Path(path))
        self._direct = direct
        self._manifest = manifest
        self._fields = [FieldSpec(**f) for f in layout["fields"]]
        self._field = {f.path: f for f in self._fields}
        self._columns: list[str] = list(layout["index_columns"])
        self._digest: str | None = layout.get("digest")
        self._col = {c: i for i, c in enumerate(self._columns)}
        self._pid = -1
        self._arrays: dict[str, DirectArray | ZarrArray] = {}
        # per-process caches (dropped after a fork with the zarr handles): decoded chunk-aligned
        # blocks of the meta array (records are small; one zarr read serves a chunk's worth of
        # neighbours) and the last parsed records (a training sample reads its record 2-3 times)
        self._meta_blocks: dict[int, NDArray[np.uint8]] = {}
        self._meta_records: dict[int, dict[str, Any]] = {}
        try:
            index = open_array(self._source, "index", direct=direct)
            rows = index.read(0, index.shape[0])
        except (OSError, ValueError, RuntimeError, StoreError) as exc:
            raise StoreError(
                f"{self._source.where('index')}: the index cannot be read: {exc}"
            ) from exc
        self._index: NDArray[np.int64] = np.asarray(rows, dtype=np.int64)
        if len(self._index) != manifest.num_samples:
            raise StoreError(
                f"{path}: index holds {len(self._index)} samples, manifest says {manifest.num_samples}"
            )
        self._renderers: dict[str, Any] = {}
        self._specs = {r.name: r for r in manifest.renderers}

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        storage_options: Mapping[str, Any] | None = None,
        direct: bool = True,
    ) -> SampleStore:
        """Open a finished store read-only: a directory, or a URL (``s3://bucket/prefix``;
        ``storage_options``: fsspec's options for its filesystem). ``direct=False`` reads
        every array through zarr (the reference the direct reads are tested against)."""
        from sgt_data.remote import RemoteSource, is_url

        root: Path | str
        source: ByteSource
        if is_url(path):
            root = str(path).rstrip("/")
            source = RemoteSource(root, storage_options)
        else:
            root = Path(path)
            source = LocalSource(root)
        try:
            return cls._open(root, source, direct)
        except OSError as exc:  # object storage unreachable, an object unreadable
            raise StoreError(f"{root}: cannot be read: {exc}") from exc

    @classmethod
    def _open(cls, root: Path | str, source: ByteSource, direct: bool) -> SampleStore:
        mpath = source.where(MANIFEST_FILE)
        if not source.exists(MANIFEST_FILE):
            if source.exists(JOURNAL_FILE):
                j = json.loads(source.read_bytes(JOURNAL_FILE).decode("utf-8"))
                done = int(j.get("samples", 0))
                hint = (
                    "re-run the same conversion to resume it"
                    if done
                    else "re-run the conversion (with corrected inputs, if they were wrong)"
                )
                raise StoreError(
                    f"{root}: conversion not finished ({done} samples committed); {hint}"
                )
            raise StoreError(f"{root}: not a sample store (no {MANIFEST_FILE})")
        try:
            manifest = StoreManifest.model_validate_json(source.read_bytes(MANIFEST_FILE))
        except ValueError as exc:
            raise StoreError(f"{mpath}: invalid manifest: {_first_lines(exc)}") from exc
        try:
            group_meta = json.loads(source.read_bytes("zarr.json").decode("utf-8"))
            layout = group_meta["attributes"]["sgt"]
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"{root}: zarr.json lacks the sgt layout attributes: {exc}") from exc
        if layout.get("layout_version") not in _READABLE_LAYOUTS:
            raise StoreError(
                f"{root}: layout version {layout.get('layout_version')}; this sgt-data reads "
                f"{', '.join(map(str, _READABLE_LAYOUTS))}"
            )
        return cls(root, manifest, layout, source, direct=direct)

    # -- protocol -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The manifest name."""
        return self._manifest.name

    @property
    def manifest(self) -> StoreManifest:
        """The store manifest."""
        return self._manifest

    def __len__(self) -> int:
        return int(self._manifest.num_samples)

    def _check(self, index: int) -> int:
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: sample index {index} out of range 0..{len(self) - 1}")
        return i

    def _array(self, path: str) -> DirectArray | ZarrArray:
        pid = os.getpid()
        if pid != self._pid:  # first use in this process (or after a fork): open afresh
            self._arrays = {}
            self._meta_blocks = {}
            self._meta_records = {}
            self._pid = pid
        arr = self._arrays.get(path)
        if arr is None:
            arr = open_array(self._source, path, direct=self._direct)
            self._arrays[path] = arr
        return arr

    def _raw(self, index: int, path: str) -> NDArray[Any] | None:
        i = self._check(index)
        off = int(self._index[i, self._col[f"{path}.offset"]])
        n = int(self._index[i, self._col[f"{path}.length"]])
        if n == 0:
            return None
        return self._read_slice(path, off, n, index)

    def _read_slice(self, path: str, off: int, n: int, index: int) -> NDArray[Any]:
        """``path[off:off+n]``; a damaged chunk raises ``StoreError`` naming array and sample."""
        try:
            return self._array(path).read(off, off + n, required=True)
        except (ValueError, OSError, RuntimeError, StoreError) as exc:
            sample = f"sample {index}"
            if path != "meta":
                with contextlib.suppress(SgtDataError, ValueError, OSError, RuntimeError):
                    sample += f" ({self.sample_id(index)})"
            raise StoreError(
                f"{self.path}: array {path!r} cannot be read for {sample}: {str(exc).rstrip('.')}; "
                f"`sgt-data verify {self.path}` lists the damage"
            ) from exc

    def _meta_raw(self, index: int) -> NDArray[np.uint8] | None:
        """A sample's JSON record bytes, served from a cached chunk-aligned block of ``meta``."""
        i = self._check(index)
        off = int(self._index[i, self._col["meta.offset"]])
        n = int(self._index[i, self._col["meta.length"]])
        if n == 0:
            return None
        arr = self._array("meta")  # (re)sets the caches after a fork
        chunk = self._field["meta"].chunk
        start = off // chunk * chunk
        block = self._meta_blocks.get(start)
        if block is None or start + block.size < off + n:
            end = min(-(-(off + n) // chunk) * chunk, int(arr.shape[0]))
            block = self._read_slice("meta", start, end - start, index)
            if len(self._meta_blocks) >= _META_BLOCKS:
                self._meta_blocks.pop(next(iter(self._meta_blocks)), None)
            self._meta_blocks[start] = block
        return block[off - start : off - start + n]

    def _meta(self, index: int) -> dict[str, Any]:
        """A sample's JSON record (parsed records of recent samples are cached; do not mutate)."""
        rec = self._meta_records.get(index) if self._pid == os.getpid() else None
        if rec is not None:
            return rec
        raw = self._meta_raw(index)
        if raw is None:
            raise StoreError(f"{self.path}: sample {index} has no metadata record")
        out: dict[str, Any] = json.loads(raw.tobytes().decode("utf-8"))
        if len(self._meta_records) >= _META_RECORDS:
            self._meta_records.pop(next(iter(self._meta_records)), None)
        self._meta_records[int(index)] = out
        return out

    def sample_id(self, index: int) -> str:
        """Globally unique id of a sample."""
        return str(self._meta(index)["id"])

    def tasks(self, index: int) -> frozenset[tuple[TaskKind, str | None]]:
        """(task, variant) pairs available for a sample."""
        bits = int(self._index[self._check(index), 2])
        return frozenset(k for k, b in TASK_BITS.items() if bits & b)

    def indices_with(self, task: TaskKind, variant: str | None = None) -> NDArray[np.int64]:
        """Sorted indices of the samples that have this (task, variant)."""
        bit = TASK_BITS.get((TaskKind(task), variant))
        if bit is None:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self._index[:, 2] & bit).astype(np.int64)

    def image_shape(self, index: int) -> tuple[int, int]:
        """(height, width) of a sample's image and targets."""
        i = self._check(index)
        return int(self._index[i, 0]), int(self._index[i, 1])

    def read_image(self, index: int) -> NDArray[np.uint8]:
        """The input image, HxWx3 uint8 RGB."""
        raw = self._raw(index, "image")
        if raw is None:
            raise KeyError(f"{self.path}: sample {index} has no image")
        from PIL import Image

        with Image.open(io.BytesIO(raw.tobytes())) as im:
            # one decode; convert() only when the file is not RGB already (it would copy)
            rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        if rgb.shape[:2] != self.image_shape(index):
            raise StoreError(
                f"{self.path}: sample {index} image is {rgb.shape[:2]}, index says {self.image_shape(index)}"
            )
        return rgb

    def read_labels(self, index: int, name: str) -> NDArray[Any]:
        """A stored label map (``segments``, ``classes``, ``edge``, ``depth``), HxW."""
        return self._labels(index, name, widen=True)

    def _labels(self, index: int, name: str, *, widen: bool) -> NDArray[Any]:
        """A label map; ``widen=False``: a map stored narrow stays uint8 (and read-only)."""
        path = f"labels/{name}"
        raw = self._raw(index, path)
        if raw is None:
            raise KeyError(f"{self.path}: sample {index} has no label map {name!r}")
        spec = self._field[path]
        shape = self.image_shape(index)
        if spec.frame_dtype is not None:
            decode = _decode_frame if widen else _decode_frame_stored
            raw = decode(raw, spec.frame_dtype, shape[0] * shape[1])
        return raw.reshape(shape)

    def _renderer(self, name: str) -> Any:
        r = self._renderers.get(name)
        if r is None:
            from sgt_data.render import renderer_from_spec

            spec = self._specs.get(name)
            if spec is None:
                raise StoreError(f"{self.path}: manifest records no {name!r} renderer")
            r = renderer_from_spec(spec)
            self._renderers[name] = r
        return r

    def read_label_map(
        self, index: int, task: TaskKind, variant: str | None = None
    ) -> NDArray[Any]:
        """The label map a target is drawn from (instance/panoptic: segment ids; semantic: class
        ids; edge: 0/1; depth: levels)."""
        key = (TaskKind(task), variant)
        if key not in self.tasks(index):
            raise KeyError(
                f"{self.path}: sample {index} has no {task} target (variant {variant!r})"
            )
        if key[0] is TaskKind.EDGE:
            return self.read_labels(index, "edge")
        if key[0] is TaskKind.DEPTH:
            return self.read_labels(index, "depth")
        if key[0] is not TaskKind.SEGMENTATION:
            raise KeyError(f"{self.path}: {task} targets have no label map")
        if variant == "semantic" and self._has(index, "labels/classes"):
            return self.read_labels(index, "classes")
        seg: NDArray[Any] = self.read_labels(index, "segments")
        cats, thing = self._segments(index)
        if variant == "semantic":
            sem: NDArray[Any] = np.concatenate([[0], cats]).astype(np.uint16)[seg]
            return sem
        if variant == "instance" and not thing.all():
            # things only, renumbered 1..K in segment order
            keep = np.concatenate([[0], np.cumsum(thing) * thing]).astype(np.uint16)
            inst: NDArray[Any] = keep[seg]
            return inst
        return seg

    def _has(self, index: int, path: str) -> bool:
        col = self._col.get(f"{path}.length")
        return col is not None and int(self._index[self._check(index), col]) > 0

    def _segments(self, index: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        seg = self._meta(index).get("segments", {})
        cats = np.asarray(seg.get("category", []), dtype=np.int64)
        thing = np.asarray(seg.get("isthing", [True] * len(cats)), dtype=bool)
        return cats, thing

    def read_target(
        self, index: int, task: TaskKind, variant: str | None = None
    ) -> NDArray[np.uint8]:
        """The rendered target, HxWx3 uint8; KeyError naming index and task if the sample lacks it."""
        task = TaskKind(task)
        if (task, variant) not in self.tasks(index):
            raise KeyError(
                f"{self.path}: sample {index} has no {task.value} target (variant {variant!r})"
            )
        if task is TaskKind.RECONSTRUCTION:
            return self.read_image(index)
        if task is TaskKind.EDGE:
            return np.asarray(
                self._renderer("edge").render(self.read_labels(index, "edge")), np.uint8
            )
        if task is TaskKind.DEPTH:
            return np.asarray(
                self._renderer("depth").render(self.read_labels(index, "depth")), np.uint8
            )
        if task is not TaskKind.SEGMENTATION or variant is None:
            raise KeyError(f"{self.path}: {task.value} has no rendered target")
        if variant == "semantic" and self._has(index, "labels/classes"):
            return np.asarray(
                self._renderer("semantic").render(self.read_labels(index, "classes")), np.uint8
            )
        seg = self._labels(index, "segments", widen=False)
        # one colour per segment id, then one gather over the map (no per-pixel relabelling);
        # the instance colours come from the slot table stored at conversion
        lut = self._segment_colours(index, variant)
        out, bad = paint_labels(seg, lut)
        if bad >= 0:
            raise StoreError(
                f"{self.path}: sample {index} segment id {bad} has no record "
                f"({len(lut) - 1} segments)"
            )
        return out

    def _segment_colours(self, index: int, variant: str) -> NDArray[np.uint8]:
        """Colour of each segment id 0..K of a sample for a segmentation variant."""
        seg_meta = self._meta(index).get("segments", {})
        cats, thing = self._segments(index)
        if variant == "semantic":
            sem: NDArray[np.uint8] = self._renderer("semantic").palette[
                np.concatenate([[0], cats]).astype(np.int64)
            ]
            return sem
        slots = seg_meta.get("slot")
        if slots is None:  # a store written before slot tables were stored: assign now
            slots = self._assign_slots(index, cats, thing)
        slots_a = np.asarray(slots, dtype=np.int32)
        if variant == "panoptic":
            pan: NDArray[np.uint8] = self._renderer("panoptic").colours(cats, thing, slots_a)
            return pan
        # instance: thing segments in their slot colours, stuff segments black
        inst: NDArray[np.uint8] = self._renderer("instance").colours(np.where(thing, slots_a, -1))
        return inst

    def _assign_slots(
        self, index: int, cats: NDArray[np.int64], thing: NDArray[np.bool_]
    ) -> NDArray[np.int32]:
        seg = self.read_labels(index, "segments")
        name = "panoptic" if "panoptic" in self._specs else "instance"
        if name == "panoptic":
            out: NDArray[np.int32] = self._renderer(name).assign(seg, cats, thing)
            return out
        slots = self._renderer(name).assign(seg)
        full = np.full(len(cats), -1, dtype=np.int32)
        full[: len(slots)] = slots
        return full

    def read_conversation(self, index: int) -> tuple[Turn, ...]:
        """The VQA turns of a sample (user/assistant alternating); () if none."""
        return tuple(Turn(**t) for t in self._meta(index).get("conversation", []))

    def read_metadata(self, index: int) -> dict[str, str | int | float | bool]:
        """Per-sample scalar metadata (source id, file, size, caption...)."""
        meta = self._meta(index).get("metadata", {})
        return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}

    def read_record(self, index: int) -> tuple[SampleRecord, dict[str, Any]]:
        """The sample as stored (raw field arrays and JSON record), for merging stores."""
        meta = dict(self._meta(index))
        arrays: dict[str, NDArray[Any]] = {}
        for spec in self._fields:
            if spec.path == "meta":
                continue
            raw = self._raw(index, spec.path)
            if raw is not None:
                arrays[spec.path] = raw
        h, w = self.image_shape(index)
        sid = str(meta.pop("id"))
        return SampleRecord(sid, h, w, self.tasks(index), arrays, meta, framed=True), meta

    @property
    def fields(self) -> list[FieldSpec]:
        """The flat arrays of the store."""
        return list(self._fields)
