"""Sample stores on disk: a Zarr v3 group written batch by batch, and its reader.

Layout (see the package README for the reasoning)::

    STORE/
      zarr.json              group; attributes["sgt"] = layout description (fields, columns, task bits)
      index                  int64 (N, C): height, width, task bits, crc32, then per field offset, length
      image                  uint8 flat: the source image files' bytes (JPEG/PNG, verbatim)
      labels/<name>          flat label maps (row-major), e.g. labels/segments uint16, labels/edge uint8
      meta                   uint8 flat: one UTF-8 JSON record per sample
      manifest.json          the StoreManifest (written last; its presence marks a finished store)
      _sgt_progress.json     the commit journal (committed items/samples, field extents, skipped)

Every flat array is sharded; each batch of samples starts on a shard boundary of every array, so
no batch makes zarr rewrite a shard holding committed samples (zarr rewrites whole shards). A
batch is committed by writing its data, then atomically replacing the journal; readers of an
unfinished store see nothing, and a re-run resumes after the last committed batch, overwriting
whatever an interrupted batch left behind.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from sgt_data._shards import ShardLayout, encode_shards, sync_path, write_file
from sgt_data.errors import SgtDataError, StoreError
from sgt_data.schema import RendererSpec, SkippedItem, SourceSpec, StoreManifest, TaskKind, Turn

__all__ = [
    "LAYOUT_VERSION",
    "TASK_BITS",
    "FieldSpec",
    "SampleRecord",
    "SampleStore",
    "StoreWriter",
    "encode_frame",
    "label_field",
    "seal_record",
    "verify_store",
]

_log = logging.getLogger(__name__)

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
        return {
            "path": self.path,
            "dtype": self.dtype,
            "chunk": self.chunk,
            "zstd_level": self.zstd_level,
            "chunks_per_shard": self.chunks_per_shard,
            "frame_dtype": self.frame_dtype,
        }


def label_field(path: str, dtype: str) -> FieldSpec:
    """A label-map field: one zstd frame (level 1) per sample, 1 MiB chunks, 64 MiB shards."""
    return FieldSpec(
        path, "uint8", chunk=1 << 20, zstd_level=0, chunks_per_shard=64, frame_dtype=dtype
    )


#: zstd level of label-map frames: on COCO instance maps level 1 is ~12% faster than 3 and its
#: frames ~6% smaller (measured on the bench's 640x480 maps: 0.15 vs 0.17 ms, 6.9 vs 7.3 KB)
_FRAME_LEVEL: Final = 1


@functools.cache
def _zstd(level: int) -> Any:
    from numcodecs import Zstd

    return Zstd(level=level)


def encode_frame(a: NDArray[Any], dtype: str) -> NDArray[np.uint8]:
    """One sample's label map as a zstd frame (the stored form of label fields): its values as
    ``dtype``, row-major, or (store layout 2) as uint8 when ``dtype`` is a wider unsigned type
    and every value is below 256 (half the bytes to compress; a reader tells the two apart by
    the decompressed size: height x width bytes means uint8)."""
    want = np.dtype(dtype)
    if a.dtype == np.uint8 and want.kind == "u":  # a uint8 map: every value fits already
        raw = np.ascontiguousarray(a)
    else:
        raw = np.ascontiguousarray(a, dtype=want)
        if want.kind == "u" and want.itemsize > 1 and raw.size and int(raw.max()) < 256:
            raw = raw.astype(np.uint8)
    return np.frombuffer(_zstd(_FRAME_LEVEL).encode(raw), dtype=np.uint8)


def _decode_frame(b: NDArray[np.uint8], dtype: str, size: int) -> NDArray[Any]:
    """The ``size`` values of a label-map frame as ``dtype`` (see :func:`encode_frame`)."""
    out = _zstd(0).decode(b.tobytes())
    dt = np.dtype(dtype)
    if dt.itemsize > 1 and len(out) == size:  # stored narrow
        return np.frombuffer(out, dtype=np.uint8).astype(dt)
    return np.frombuffer(out, dtype=dt)


#: per-process reader caches: chunk-aligned blocks of ``meta`` (64 KiB each), parsed records
_META_BLOCKS: Final = 8
_META_RECORDS: Final = 32

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


def _atomic_write_text(path: Path, text: str, sync: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        sync_path(path.parent)


def _align(n: int, k: int) -> int:
    return -(-n // k) * k


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


def _create_flat(group: Any, spec: FieldSpec) -> Any:
    from zarr.codecs import ZstdCodec

    compressors = ZstdCodec(level=spec.zstd_level) if spec.zstd_level > 0 else None
    return group.create_array(
        spec.path,
        shape=(0,),
        dtype=spec.dtype,
        chunks=(spec.chunk,),
        shards=(spec.chunk * spec.chunks_per_shard,),
        compressors=compressors,
        fill_value=0,
        overwrite=True,
    )


def _array_digest(arr: Any) -> str:
    """sha256 of an array's decoded contents in C order, read shard by shard."""
    h = hashlib.sha256()
    step = arr.shards[0] if arr.shards is not None else arr.chunks[0]
    for s in range(0, arr.shape[0], step):
        h.update(np.ascontiguousarray(arr[s : s + step]).tobytes())
    return h.hexdigest()


def _samples_digest(arr: Any, offsets: NDArray[np.int64], lengths: NDArray[np.int64]) -> str:
    """sha256 of the samples' bytes of a flat array, in index order (the padding between batches
    is not part of it); contiguous samples are read together, a shard at a time."""
    h = hashlib.sha256()
    step = arr.shards[0] if arr.shards is not None else arr.chunks[0]
    keep = lengths > 0
    offs, lens = offsets[keep], lengths[keep]
    if offs.size == 0:
        return h.hexdigest()
    ends = offs + lens
    # runs of samples that follow each other without a gap (a batch)
    breaks = np.flatnonzero(offs[1:] != ends[:-1]) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [offs.size]])
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        lo, hi = int(offs[a]), int(ends[b - 1])
        for s in range(lo, hi, step):
            h.update(np.ascontiguousarray(arr[s : min(s + step, hi)]).tobytes())
    return h.hexdigest()


def _sample_sha_digest(arr: Any, offsets: NDArray[np.int64], lengths: NDArray[np.int64]) -> str:
    """sha256 of the concatenated sha256 digests of the samples' bytes in index order (absent
    samples left out); contiguous samples are read together, about a shard at a time."""
    h = hashlib.sha256()
    step = arr.shards[0] if arr.shards is not None else arr.chunks[0]
    keep = lengths > 0
    offs, lens = offsets[keep].tolist(), lengths[keep].tolist()
    i = 0
    while i < len(offs):
        lo = offs[i]
        j = i + 1
        hi = lo + lens[i]
        # the following samples that continue this run, up to about a shard of bytes
        while j < len(offs) and offs[j] == hi and hi + lens[j] - lo <= step:
            hi += lens[j]
            j += 1
        block = np.ascontiguousarray(arr[lo:hi])
        for k in range(i, j):
            a = offs[k] - lo
            h.update(hashlib.sha256(block[a : a + lens[k]].data).digest())
        i = j
    return h.hexdigest()


#: how a store's flat-array checksums are defined (``zarr.json`` attribute ``sgt.digest``):
#: "sample-sha256" (layout 2) = sha256 of the concatenated sha256 digests of each sample's bytes,
#: in index order (each sample's digest computed where it is encoded, in parallel; the writer
#: only chains 32 bytes per sample); "samples" (layout 1) = sha256 of the samples' bytes in
#: index order; absent = sha256 of the whole array (before 0.2). Batches start on shard
#: boundaries, so the arrays hold unwritten gaps that none of these covers
_DIGEST_SAMPLE_SHA: Final = "sample-sha256"
_DIGEST_SAMPLES: Final = "samples"


def _field_digests(
    arrays: Mapping[str, Any],
    fields: Sequence[FieldSpec],
    index: NDArray[np.int64],
    columns: Sequence[str],
    method: str | None,
) -> dict[str, str]:
    col = {c: i for i, c in enumerate(columns)}
    out: dict[str, str] = {}
    for spec in fields:
        if spec.path not in arrays:
            continue
        if method == _DIGEST_SAMPLE_SHA:
            out[spec.path] = _sample_sha_digest(
                arrays[spec.path],
                index[:, col[f"{spec.path}.offset"]],
                index[:, col[f"{spec.path}.length"]],
            )
        elif method == _DIGEST_SAMPLES:
            out[spec.path] = _samples_digest(
                arrays[spec.path],
                index[:, col[f"{spec.path}.offset"]],
                index[:, col[f"{spec.path}.length"]],
            )
        else:
            out[spec.path] = _array_digest(arrays[spec.path])
    return out


#: factor by which the writer grows an array's shape when a batch needs more room
_GROWTH: Final = 8

#: the folder (in the store) where batches are encoded before their commit moves them in place
STAGING_DIR: Final = "_staging"


@dataclass(frozen=True)
class StagedBatch:
    """A batch of samples encoded into shard files under ``directory`` (e.g. by a conversion
    worker), ready to be moved into place by :meth:`StoreWriter.commit`."""

    directory: str
    #: per sample: height, width, task bits, crc32, then each field's stored length (0: absent)
    rows: NDArray[np.int64]
    #: per field: its samples' sha256 digests concatenated (absent samples left out)
    digests: tuple[bytes, ...]
    #: per field: the number of shard files staged as ``<field #>.<shard #>`` (or one
    #: ``<field #>.npy`` of raw data where the array's encoding is written through zarr)
    shards: tuple[int, ...]
    #: samples per task kind (``TaskKind`` values)
    task_counts: dict[str, int]


@dataclass(frozen=True)
class BatchStager:
    """Encodes a batch of records for one store into staged shard files. Picklable, and needs
    no open zarr handle: conversion workers stage their batches in parallel, and the writer's
    serial commit only renames files."""

    fields: tuple[FieldSpec, ...]
    layouts: tuple[ShardLayout | None, ...]
    root: str
    #: fsync every staged file (``StoreWriter.open(fsync=True)``)
    sync: bool = False

    def stage(self, records: Sequence[SampleRecord], name: str) -> StagedBatch:
        """Encode ``records`` (in order) into the staging folder ``name`` (replacing it)."""
        out = Path(self.root) / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        paths = tuple(f.path for f in self.fields)
        nf = len(self.fields)
        rows = np.zeros((len(records), 4 + nf), dtype=np.int64)
        stored: list[Sequence[NDArray[Any] | None]] = []
        counts: dict[str, int] = {}
        for i, rec in enumerate(records):
            flats: Sequence[NDArray[Any] | None]
            if rec.sealed is not None and rec.sealed[0] == paths:
                flats, crc = rec.sealed[1], rec.sealed[2]
            else:  # (not sealed ahead: merge, or a caller's own records)
                flats, crc = _stored_form(rec, self.fields)
            rows[i, 0:4] = (rec.height, rec.width, _task_bits(rec.tasks), crc)
            stored.append(flats)
            for t in {t for t, _ in rec.tasks}:
                counts[t.value] = counts.get(t.value, 0) + 1
        digests: list[bytes] = []
        shards: list[int] = []
        for fi, layout in enumerate(self.layouts):
            parts: list[NDArray[Any]] = []
            for i, sample in enumerate(stored):
                flat = sample[fi]
                if flat is not None:
                    rows[i, 4 + fi] = flat.size
                    parts.append(flat)
            digests.append(b"".join(hashlib.sha256(a.data).digest() for a in parts))
            if not parts:
                shards.append(0)
                continue
            if layout is None:
                np.save(out / f"{fi}.npy", np.concatenate(parts))
                shards.append(-1)
                continue
            files = encode_shards(parts, layout)  # views of the records' arrays, no joined copy
            for k, bufs in enumerate(files):
                write_file(out / f"{fi}.{k}", bufs, sync=self.sync)
            shards.append(len(files))
        return StagedBatch(str(out), rows, tuple(digests), tuple(shards), counts)


class StoreWriter:
    """Writes a store batch by batch; re-opening an unfinished store with the same fingerprint resumes it."""

    def __init__(self, path: Path, journal: dict[str, Any], fsync: bool = False) -> None:
        self.path = path
        self._journal = journal
        #: fsync what each commit makes durable before the journal says it is committed
        self._sync = fsync
        self._fields = [FieldSpec(**f) for f in journal["fields"]]
        self._columns = _columns(self._fields)
        self._group = _zarr().open_group(str(path), mode="r+")
        # writes always cover fresh chunks, so skip zarr's per-chunk "all fill value?" scan
        # (an all-zero chunk is then stored rather than left out; the values read are the same)
        cfg = {"write_empty_chunks": True}
        self._arrays = {f.path: self._group[f.path].with_config(cfg) for f in self._fields}
        self._index = self._group["index"].with_config(cfg)
        # batches on shard boundaries fill fresh shard files: written directly (byte-identical
        # to zarr's, a third of the CPU); another encoding goes through zarr
        self._layouts = {k: ShardLayout.of(a) for k, a in self._arrays.items()}
        self._stager = BatchStager(
            tuple(self._fields),
            tuple(self._layouts[f.path] for f in self._fields),
            str(path / STAGING_DIR),
            fsync,
        )
        # the index is written directly too (zarr's read-modify-write of its shard cost ~5 ms
        # per batch in the serial writer); the rows of its current shard are kept here
        self._index_layout = ShardLayout.of(self._index)
        self._index_rows: tuple[int, NDArray[np.int64]] | None = None
        # sha256 of each flat array's samples, fed batch by batch, when this writer saw every
        # batch (a fresh store); a resumed store's digests are read back from disk at finish
        self._hashes: dict[str, Any] | None = (
            {f.path: hashlib.sha256() for f in self._fields}
            if int(journal["samples"]) == 0
            and self._group.attrs["sgt"].get("digest") == _DIGEST_SAMPLE_SHA
            else None
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str,
        fields: Sequence[FieldSpec],
        batch_size: int,
        fingerprint: Mapping[str, Any],
        overwrite: bool = False,
        resumable_from: Mapping[str, Any] | None = None,
        fsync: bool = False,
    ) -> StoreWriter:
        """Create a store, or resume the unfinished one at ``path`` written with the same fingerprint.

        ``fsync``: make every commit durable (files and directory entries synced before the
        journal names the batch committed, and the journal itself), for runs that must survive
        a machine's crash or power loss, not only a killed process; slower on real disks.

        ``resumable_from`` maps fingerprint keys to the one earlier value from which a run may
        resume with another value (e.g. ``{"skip_bad": False}``: a strict run may go on with
        ``skip_bad``); the journal then takes the new value."""
        root = Path(path)
        fields = _store_fields(fields)
        fp = json.loads(json.dumps(dict(fingerprint), sort_keys=True))
        journal_path = root / JOURNAL_FILE
        if overwrite and root.exists():
            shutil.rmtree(root)
        if journal_path.exists():
            journal = json.loads(journal_path.read_text(encoding="utf-8"))
            if journal.get("layout", 1) != LAYOUT_VERSION:
                raise StoreError(
                    f"{root}: the unfinished store was started by an sgt-data with store layout "
                    f"{journal.get('layout', 1)}, this one writes layout {LAYOUT_VERSION}; "
                    "convert again with --overwrite (or into another --out)"
                )
            old_fp = journal.get("fingerprint")
            relax = dict(resumable_from or {})
            if isinstance(old_fp, dict):  # the relaxed keys compare equal from their old value
                old_fp = {
                    k: fp[k] if k in fp and k in relax and relax[k] == v else v
                    for k, v in old_fp.items()
                }
            differs = old_fp != fp or journal.get("batch_size") != batch_size
            nothing_committed = not journal.get("finished") and int(journal["items_done"]) == 0
            if differs and nothing_committed:
                # e.g. a mistyped --images failed the first item: nothing to keep, start afresh
                _log.info("restarting %s with new inputs (nothing was committed)", root)
                shutil.rmtree(root)
            elif differs:
                diff = _fp_diff(journal.get("fingerprint", {}), fp, journal, batch_size)
                what = (
                    "a finished store"
                    if journal.get("finished")
                    else f"{journal['samples']} samples committed"
                )
                raise StoreError(
                    f"{root}: the store was started with other inputs or options ({diff}; "
                    f"{what}); re-run with the values it was started with to resume it, or "
                    "use --overwrite to start over (or another --out)"
                )
        if journal_path.exists():
            if journal["fingerprint"] != fp and not journal.get("finished"):
                journal["fingerprint"] = fp  # a later resume compares with the new value
                _atomic_write_text(journal_path, json.dumps(journal))
            _remove_partials(root)
            _log.info(
                "resuming %s after %d items (%d samples)",
                root,
                journal["items_done"],
                journal["samples"],
            )
            return cls(root, journal, fsync)
        if root.exists() and any(root.iterdir()):
            if (root / MANIFEST_FILE).exists() or (root / "zarr.json").exists():
                raise StoreError(
                    f"{root}: exists and is not an unfinished conversion of these inputs; "
                    "use another --out or --overwrite"
                )
            raise StoreError(f"{root}: directory is not empty")
        zarr = _zarr()
        group = zarr.open_group(str(root), mode="w")
        for spec in fields:
            _create_flat(group, spec)
        cols = _columns(fields)
        group.create_array(
            "index",
            shape=(0, len(cols)),
            dtype="int64",
            chunks=(batch_size, len(cols)),
            shards=(batch_size * 64, len(cols)),
            fill_value=0,
            overwrite=True,
        )
        group.attrs["sgt"] = {
            "layout_version": LAYOUT_VERSION,
            "name": name,
            "complete": False,
            "index_columns": cols,
            "fields": [f.as_json() for f in fields],
            "task_bits": {f"{t.value}/{v or ''}": b for (t, v), b in TASK_BITS.items()},
            "batch_align": "shard",
            "digest": _DIGEST_SAMPLE_SHA,
        }
        journal = {
            "name": name,
            "fingerprint": fp,
            "batch_size": batch_size,
            "fields": [f.as_json() for f in fields],
            "items_done": 0,
            "samples": 0,
            "extent": {f.path: 0 for f in fields},
            "skipped": [],
            "task_counts": {},
            "finished": False,
            "layout": LAYOUT_VERSION,
        }
        if fsync:  # zarr's metadata of the new store, before the journal that vouches for it
            for meta in sorted(root.rglob("zarr.json")):
                sync_path(meta)
            for d in sorted({m.parent for m in root.rglob("zarr.json")}):
                sync_path(d)
        _atomic_write_text(journal_path, json.dumps(journal), fsync)
        return cls(root, journal, fsync)

    @property
    def items_done(self) -> int:
        """Input items consumed by committed batches (converted or skipped)."""
        return int(self._journal["items_done"])

    @property
    def num_samples(self) -> int:
        """Samples committed so far."""
        return int(self._journal["samples"])

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` has completed."""
        return bool(self._journal["finished"])

    @property
    def batch_size(self) -> int:
        """Samples per committed batch (the last may hold fewer)."""
        return int(self._journal["batch_size"])

    @property
    def stager(self) -> BatchStager:
        """What encodes batches for this store (picklable: conversion workers stage batches
        themselves, and :meth:`commit` only moves their files into place)."""
        return self._stager

    def write_batch(
        self,
        records: Sequence[SampleRecord],
        items_consumed: int,
        skipped: Sequence[SkippedItem] = (),
    ) -> None:
        """Write ``records`` after the committed samples, then commit them with the items they consumed."""
        if self.finished:
            raise StoreError(f"{self.path}: store is finished; cannot add samples")
        self.commit(self._stager.stage(records, "direct"), items_consumed, skipped)

    def commit(
        self,
        staged: StagedBatch,
        items_consumed: int,
        skipped: Sequence[SkippedItem] = (),
    ) -> None:
        """Move a staged batch's shard files after the committed samples, index them and commit
        them with the items they consumed (batches must be committed in order)."""
        if self.finished:
            raise StoreError(f"{self.path}: store is finished; cannot add samples")
        j = self._journal
        n0 = int(j["samples"])
        n = len(staged.rows)
        nf = len(self._fields)
        if staged.rows.shape[1:] != (4 + nf,) or len(staged.shards) != nf:
            raise StoreError(
                f"{self.path}: a batch staged for {len(staged.shards)} arrays cannot be "
                f"committed to a store of {nf} ({staged.directory})"
            )
        rows = np.zeros((n, len(self._columns)), dtype=np.int64)
        rows[:, 0:4] = staged.rows[:, 0:4]
        extent = dict(j["extent"])
        hashes = (
            {k: h.copy() for k, h in self._hashes.items()} if self._hashes is not None else None
        )
        src = Path(staged.directory)
        touched: set[Path] = set()  # directories and metadata files to fsync before the journal
        for fi, spec in enumerate(self._fields):
            lengths = staged.rows[:, 4 + fi]
            total = int(lengths.sum())
            if total == 0:
                continue
            unit = spec.chunk * spec.chunks_per_shard
            start = _align(int(extent[spec.path]), unit)
            present = lengths > 0
            ends = start + np.cumsum(lengths)
            rows[present, 4 + 2 * fi] = (ends - lengths)[present]
            rows[:, 5 + 2 * fi] = lengths
            pos = start + total
            arr = self._arrays[spec.path]
            if arr.shape[0] < pos:
                # grow by whole shards, geometrically (each resize rewrites the array's
                # metadata through zarr, ~2 ms; the shape alone costs no disk); finish() trims
                arr.resize((max(_align(pos, unit), _GROWTH * int(arr.shape[0])),))
                touched.add(self.path / spec.path / "zarr.json")
            layout = self._layouts[spec.path]
            if layout is not None:
                first = start // layout.shard
                target = self.path / spec.path
                for r in range(staged.shards[fi]):
                    dest = target / layout.key(first + r)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src / f"{fi}.{r}", dest)
                    touched.add(dest.parent)
            else:
                arr[start:pos] = np.load(src / f"{fi}.npy")
            if hashes is not None:
                hashes[spec.path].update(staged.digests[fi])
            extent[spec.path] = pos
        if n:
            if self._index.shape[0] < n0 + n:
                grown = max(n0 + n, _GROWTH * int(self._index.shape[0]))
                self._index.resize((grown, len(self._columns)))
                touched.add(self.path / "index" / "zarr.json")
            self._write_index(n0, rows)
        counts = dict(j["task_counts"])
        for t, c in staged.task_counts.items():
            counts[t] = counts.get(t, 0) + c
        j.update(
            items_done=int(items_consumed),
            samples=n0 + n,
            extent=extent,
            task_counts=counts,
            skipped=[*j["skipped"], *[s.model_dump() for s in skipped]],
        )
        if self._sync:
            for p in sorted(touched):
                sync_path(p)
        _atomic_write_text(self.path / JOURNAL_FILE, json.dumps(j), self._sync)
        self._hashes = hashes
        shutil.rmtree(src, ignore_errors=True)

    def _write_index(self, n0: int, rows: NDArray[np.int64]) -> None:
        """Write index rows ``n0:n0 + len(rows)``: each index shard they touch is encoded whole
        from the rows it holds (byte-identical to zarr's partial write) and replaces the old
        file atomically, since it holds committed rows."""
        layout = self._index_layout
        if layout is None:
            self._index[n0 : n0 + len(rows)] = rows
            return
        per = layout.shard
        end = n0 + len(rows)
        pos = n0
        while pos < end:
            s = pos // per
            lo = s * per
            hi = min(end, lo + per)
            if self._index_rows is None or self._index_rows[0] != s:
                buf = np.zeros((per, len(self._columns)), dtype=np.int64)
                if pos > lo:  # committed rows of this shard (after a resume): read back once
                    buf[: pos - lo] = self._index[lo:pos]
                self._index_rows = (s, buf)
            buf = self._index_rows[1]
            buf[pos - lo : hi - lo] = rows[pos - n0 : hi - n0]
            (bufs,) = encode_shards(buf[: hi - lo], layout)
            dest = self.path / "index" / layout.key(s)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            write_file(tmp, bufs, sync=self._sync)
            os.replace(tmp, dest)
            if self._sync:
                sync_path(dest.parent)
            pos = hi

    def finish(
        self,
        *,
        created_by: str,
        sources: Sequence[SourceSpec],
        renderers: Sequence[RendererSpec],
        palette_seed: int,
        extra_skipped: Sequence[SkippedItem] = (),
    ) -> StoreManifest:
        """Trim the arrays to what was committed, checksum them and write the manifest
        (``extra_skipped``: items left out before conversion, e.g. duplicate ids)."""
        j = self._journal
        n = int(j["samples"])
        if self._index.shape[0] != n:
            self._index.resize((n, len(self._columns)))
        for spec in self._fields:
            arr = self._arrays[spec.path]
            if arr.shape[0] != int(j["extent"][spec.path]):
                arr.resize((int(j["extent"][spec.path]),))
        digests = {"index": _array_digest(self._index)}
        if self._hashes is not None:  # every batch went through this writer
            digests.update({k: h.hexdigest() for k, h in self._hashes.items()})
        else:
            digests.update(
                _field_digests(
                    self._arrays,
                    self._fields,
                    np.asarray(self._index[:], dtype=np.int64),
                    self._columns,
                    self._group.attrs["sgt"].get("digest"),
                )
            )
        manifest = StoreManifest(
            created_by=created_by,
            name=str(j["name"]),
            sources=tuple(sources),
            num_samples=n,
            task_counts={TaskKind(k): v for k, v in sorted(j["task_counts"].items())},
            renderers=tuple(renderers),
            palette_seed=palette_seed,
            arrays=digests,
            skipped=(*extra_skipped, *(SkippedItem(**s) for s in j["skipped"])),
        )
        attrs = dict(self._group.attrs["sgt"])
        attrs["complete"] = True
        self._group.attrs["sgt"] = attrs
        if self._sync:  # zarr's metadata (trimmed shapes, attributes) before the manifest
            for meta in sorted(self.path.rglob("zarr.json")):
                sync_path(meta)
        _atomic_write_text(
            self.path / MANIFEST_FILE, manifest.model_dump_json(indent=2), self._sync
        )
        j["finished"] = True
        _atomic_write_text(self.path / JOURNAL_FILE, json.dumps(j), self._sync)
        shutil.rmtree(self.path / STAGING_DIR, ignore_errors=True)
        return manifest


#: Fingerprint keys -> the ``sgt-data convert`` options that set them.
_OPTION_OF = {
    "edge": "--edge/--edge-thresholds",
    "depth": "--depth-dir/--depth-model/--depth-range",
    "reconstruction": "--no-reconstruction",
    "format": "the input format",
    "merge": "the stores merged",
}


def _fp_diff(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    journal: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
) -> str:
    """The options that differ, as ``--option: old -> new``."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    parts = [
        f"{_OPTION_OF.get(k, '--' + k.replace('_', '-'))}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in keys
    ]
    if journal is not None and journal.get("batch_size") != batch_size:
        parts.append(f"--batch-size: {journal.get('batch_size')} -> {batch_size}")
    return ", ".join(parts) or "batch size"


def _remove_partials(root: Path) -> None:
    """Delete temporary files an interrupted writer left (zarr's ``*.partial``, our ``.*.tmp``,
    batches staged but not committed)."""
    shutil.rmtree(root / STAGING_DIR, ignore_errors=True)
    for p in root.rglob("*"):
        if p.is_file() and (
            p.name.endswith(".partial") or (p.name.startswith(".") and p.name.endswith(".tmp"))
        ):
            p.unlink(missing_ok=True)


class SampleStore:
    """Read-only access to a finished store (implements ``sgt_data.datasets.StoreReader``).

    Zarr arrays are opened lazily and re-opened after a fork, so one instance can be shared with
    forked DataLoader workers.
    """

    def __init__(self, path: Path, manifest: StoreManifest, layout: Mapping[str, Any]) -> None:
        self.path = path
        self._manifest = manifest
        self._fields = [FieldSpec(**f) for f in layout["fields"]]
        self._field = {f.path: f for f in self._fields}
        self._columns: list[str] = list(layout["index_columns"])
        self._digest: str | None = layout.get("digest")
        self._col = {c: i for i, c in enumerate(self._columns)}
        self._pid = -1
        self._arrays: dict[str, Any] = {}
        # per-process caches (dropped after a fork with the zarr handles): decoded chunk-aligned
        # blocks of the meta array (records are small; one zarr read serves a chunk's worth of
        # neighbours) and the last parsed records (a training sample reads its record 2-3 times)
        self._meta_blocks: dict[int, NDArray[np.uint8]] = {}
        self._meta_records: dict[int, dict[str, Any]] = {}
        index = _zarr().open_array(str(path / "index"), mode="r")
        self._index: NDArray[np.int64] = np.asarray(index[:], dtype=np.int64)
        if len(self._index) != manifest.num_samples:
            raise StoreError(
                f"{path}: index holds {len(self._index)} samples, manifest says {manifest.num_samples}"
            )
        self._renderers: dict[str, Any] = {}
        self._specs = {r.name: r for r in manifest.renderers}

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SampleStore:
        """Open a finished store read-only."""
        root = Path(path)
        mpath = root / MANIFEST_FILE
        if not mpath.exists():
            journal = root / JOURNAL_FILE
            if journal.exists():
                j = json.loads(journal.read_text(encoding="utf-8"))
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
            manifest = StoreManifest.model_validate_json(mpath.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise StoreError(f"{mpath}: invalid manifest: {exc}") from exc
        try:
            group_meta = json.loads((root / "zarr.json").read_text(encoding="utf-8"))
            layout = group_meta["attributes"]["sgt"]
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"{root}: zarr.json lacks the sgt layout attributes: {exc}") from exc
        if layout.get("layout_version") not in _READABLE_LAYOUTS:
            raise StoreError(
                f"{root}: layout version {layout.get('layout_version')}; this sgt-data reads "
                f"{', '.join(map(str, _READABLE_LAYOUTS))}"
            )
        return cls(root, manifest, layout)

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

    def _array(self, path: str) -> Any:
        pid = os.getpid()
        if pid != self._pid:  # first use in this process (or after a fork): open afresh
            self._arrays = {}
            self._meta_blocks = {}
            self._meta_records = {}
            self._pid = pid
        arr = self._arrays.get(path)
        if arr is None:
            arr = _zarr().open_array(str(self.path / path), mode="r")
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
            return np.asarray(self._array(path)[off : off + n])
        except (ValueError, OSError, RuntimeError) as exc:
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
        path = f"labels/{name}"
        raw = self._raw(index, path)
        if raw is None:
            raise KeyError(f"{self.path}: sample {index} has no label map {name!r}")
        spec = self._field[path]
        shape = self.image_shape(index)
        if spec.frame_dtype is not None:
            raw = _decode_frame(raw, spec.frame_dtype, shape[0] * shape[1])
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
        seg = self.read_labels(index, "segments")
        # one colour per segment id, then one gather over the map (no per-pixel relabelling);
        # the instance colours come from the slot table stored at conversion
        lut = self._segment_colours(index, variant)
        if seg.size and int(seg.max()) >= len(lut):
            raise StoreError(
                f"{self.path}: sample {index} segment id {int(seg.max())} has no record "
                f"({len(lut) - 1} segments)"
            )
        out: NDArray[np.uint8] = np.take(lut, seg, axis=0)
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


def verify_store(path: str | os.PathLike[str]) -> list[str]:
    """Check a store against its manifest; returns the problems found (empty when it is sound)."""
    root = Path(path)
    try:
        store = SampleStore.open(root)
    except StoreError as exc:
        return [str(exc)]
    problems: list[str] = []
    m = store.manifest
    zarr = _zarr()
    arrays: dict[str, Any] = {}
    for name in ["index", *[f.path for f in store.fields]]:
        try:
            arrays[name] = zarr.open_array(str(root / name), mode="r")
        except Exception as exc:  # a missing or unreadable array is a finding, not a crash
            problems.append(f"array {name!r}: cannot be opened: {exc}")
    for name, digest in sorted(m.arrays.items()):
        if name not in arrays:
            if not any(p.startswith(f"array {name!r}") for p in problems):
                problems.append(
                    f"array {name!r}: listed in the manifest but missing from the store"
                )
            continue
        try:
            spec = store._field.get(name)
            if name == "index" or spec is None:
                actual = _array_digest(arrays[name])
            else:
                actual = _field_digests(
                    arrays, [spec], store._index, store._columns, store._digest
                )[name]
        except Exception as exc:
            problems.append(f"array {name!r}: cannot be read: {exc}")
            continue
        if actual != digest:
            problems.append(f"array {name!r}: sha256 {actual[:16]}... != manifest {digest[:16]}...")
    extra = sorted(set(arrays) - set(m.arrays))
    problems += [f"array {name!r}: not listed in the manifest" for name in extra]
    index = store._index
    counts: dict[TaskKind, int] = {}
    for bits in index[:, 2].tolist():
        for t in {t for (t, _), b in TASK_BITS.items() if bits & b}:
            counts[t] = counts.get(t, 0) + 1
    if counts != {k: v for k, v in m.task_counts.items() if v}:
        problems.append(f"task counts {counts} != manifest {dict(m.task_counts)}")
    bad_samples: list[str] = []
    for i in range(len(store)):
        crc = 0
        try:
            for f in store.fields:
                raw = store._raw(i, f.path)
                if raw is None:
                    continue
                crc = zlib.crc32(np.ascontiguousarray(raw).tobytes(), crc)
                if f.frame_dtype is not None:
                    h, w = store.image_shape(i)
                    n = _decode_frame(raw, f.frame_dtype, h * w).size
                    if n != h * w:
                        bad_samples.append(
                            f"sample {i}: {f.path} holds {n} values, image is {h}x{w}"
                        )
        except Exception as exc:
            bad_samples.append(f"sample {i}: unreadable: {exc}")
            continue
        if crc != int(index[i, 3]):
            try:
                sid = store.sample_id(i)
            except Exception:
                sid = "?"
            bad_samples.append(f"sample {i} ({sid}): content crc32 does not match the index")
    problems += bad_samples[:20]
    if len(bad_samples) > 20:
        problems.append(f"... and {len(bad_samples) - 20} more damaged samples")
    return problems
