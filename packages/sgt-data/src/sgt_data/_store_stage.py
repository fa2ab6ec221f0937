"""Batches encoded into shard files, ready for the writer's commit (picklable: conversion workers stage)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from sgt_data._shards import ShardLayout, encode_shards, write_file
from sgt_data._store_layout import FieldSpec, SampleRecord, _stored_form, _task_bits

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
