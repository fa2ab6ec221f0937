"""Merging finished stores by copying their samples' stored bytes.

A store sample is stored as it was encoded (JPEG/PNG bytes verbatim, label maps as zstd frames,
the JSON record), so the merge never decodes or re-encodes it: each output batch takes the byte
ranges of its samples from the part stores' arrays (a part's batch is one contiguous run per
array, read in one call), hashes each sample's bytes (the manifest digest is defined over the
per-sample sha256 digests, so every sample must be hashed once), and writes them as fresh shard
files through the writer's own commit. Height, width, task bits and crc32 are the part's index
row (the crc32 is over the same bytes). The result is byte-identical to reading every record and
writing it again, and to a single conversion of the same input with the same batch size.

Measured on the SA-1B-like input of ``bench/bench_scale.py``: the record-by-record merge spent
its CPU on re-staging (JSON decode and encode, crc32 over every byte, per-sample zeroed read
buffers and a per-record Python path) besides the unavoidable copy and hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sgt_data._shard_reader import DirectArray, LocalSource, ZarrArray, open_array
from sgt_data._shards import encode_shards, write_file
from sgt_data._store_layout import TASK_BITS, FieldSpec
from sgt_data._store_stage import BatchStager, StagedBatch
from sgt_data._store_writer import StoreWriter
from sgt_data.errors import StoreError

__all__ = ["copy_samples"]

#: batches staged ahead of the commit by threads (hashing, reads and writes release the GIL)
_AHEAD = 2


@dataclass
class _Part:
    """One part store opened for copying: its arrays and its index."""

    name: str
    arrays: dict[str, DirectArray | ZarrArray]
    rows: NDArray[np.int64]
    col: dict[str, int]

    @classmethod
    def open(cls, path: str | os.PathLike[str], fields: Sequence[FieldSpec], n: int) -> _Part:
        source = LocalSource(Path(path))
        name = str(path)
        try:
            attrs = json.loads(source.read_bytes("zarr.json").decode("utf-8"))["attributes"]["sgt"]
            cols = list(attrs["index_columns"])
            index = open_array(source, "index")
            rows = np.asarray(index.read(0, n, required=True), dtype=np.int64)
            arrays = {f.path: open_array(source, f.path) for f in fields}
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise StoreError(f"{name}: cannot be read for the merge: {exc}") from exc
        if rows.shape[0] != n:
            raise StoreError(f"{name}: index holds {rows.shape[0]} samples, manifest says {n}")
        return cls(name, arrays, rows, {c: i for i, c in enumerate(cols)})

    def read(self, spec: FieldSpec, lo: int, hi: int) -> NDArray[Any]:
        """Elements ``lo:hi`` of a field, as the merged store's dtype."""
        try:
            got = self.arrays[spec.path].read(lo, hi, required=True)
        except (OSError, ValueError, RuntimeError, StoreError) as exc:
            raise StoreError(
                f"{self.name}: array {spec.path!r} cannot be read at {lo}:{hi}: "
                f"{str(exc).rstrip('.')}; `sgt-data verify {self.name}` lists the damage"
            ) from exc
        if got.shape[0] != hi - lo:
            raise StoreError(
                f"{self.name}: array {spec.path!r} ends before {hi} (the index points past it)"
            )
        return np.ascontiguousarray(got, dtype=spec.dtype).reshape(-1)


@dataclass
class _Batch:
    """One output batch read from the parts: staged, with its samples' ids and parts."""

    staged: StagedBatch
    ids: list[str]
    where: list[str]


def _task_counts(bits: NDArray[np.int64]) -> dict[str, int]:
    """Samples per task kind (``TaskKind`` values), as the stager counts them, in the order it
    meets them (the journal's JSON keeps that order)."""
    kinds: dict[str, int] = {}
    for (task, _), b in TASK_BITS.items():
        kinds[task.value] = kinds.get(task.value, 0) | b
    counts = {k: int(np.count_nonzero(bits & m)) for k, m in kinds.items()}
    want = sum(1 for c in counts.values() if c)
    out: dict[str, int] = {}
    for v in bits.tolist():  # the stager's order: per sample, the set of its task kinds
        if len(out) == want:
            break
        tasks = frozenset(k for k, b in TASK_BITS.items() if v & b)
        for t in {t for t, _ in tasks}:
            out.setdefault(t.value, counts[t.value])
    return out


def _runs(offs: NDArray[np.int64], lens: NDArray[np.int64]) -> list[tuple[int, int, int, int]]:
    """Runs of present samples stored one after the other: (first, last + 1, lo, hi) as sample
    positions and element range."""
    keep = np.flatnonzero(lens > 0)
    if keep.size == 0:
        return []
    o, n = offs[keep], lens[keep]
    breaks = np.flatnonzero(o[1:] != o[:-1] + n[:-1]) + 1
    starts = np.concatenate([[0], breaks]).tolist()
    stops = np.concatenate([breaks, [keep.size]]).tolist()
    return [
        (int(keep[a]), int(keep[b - 1]) + 1, int(o[a]), int(o[b - 1] + n[b - 1]))
        for a, b in zip(starts, stops, strict=True)
    ]


class _Reader:
    """The parts in flat order (part after part), each opened when first needed."""

    def __init__(
        self,
        parts: Sequence[str | os.PathLike[str]],
        sizes: Sequence[int],
        fields: Sequence[FieldSpec],
    ) -> None:
        self._parts = list(parts)
        self._sizes = [int(s) for s in sizes]
        self._fields = tuple(fields)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)]).astype(np.int64).tolist()
        self._open: dict[int, _Part] = {}

    def _part(self, pi: int) -> _Part:
        got = self._open.get(pi)
        if got is None:
            for k in [k for k in self._open if k < pi]:  # read in order: done with those
                del self._open[k]
            got = _Part.open(self._parts[pi], self._fields, self._sizes[pi])
            self._open[pi] = got
        return got

    def segments(self, lo: int, hi: int) -> list[tuple[_Part, int, int]]:
        """Flat samples ``lo:hi`` as (part, first, last + 1) in the parts' own numbering."""
        out = []
        for pi, size in enumerate(self._sizes):
            s = self._starts[pi]
            a, b = max(lo, s), min(hi, s + size)
            if a < b:
                out.append((self._part(pi), a - s, b - s))
        return out

    def ids(self, lo: int, hi: int) -> tuple[list[str], list[str]]:
        """The sample ids of flat samples ``lo:hi`` and the parts they are in."""
        meta = next(f for f in self._fields if f.path == "meta")
        ids: list[str] = []
        where: list[str] = []
        for p, a, b in self.segments(lo, hi):
            sub = p.rows[a:b]
            offs, lens = sub[:, p.col["meta.offset"]], sub[:, p.col["meta.length"]]
            for first, last, elo, ehi in _runs(offs, lens):
                block = p.read(meta, elo, ehi)
                for k in range(first, last):
                    if lens[k] == 0:
                        continue
                    ids.append(_sample_id(p, a + k, block, int(offs[k]) - elo, int(lens[k])))
                    where.append(p.name)
        return ids, where


def _sample_id(p: _Part, k: int, block: NDArray[np.uint8], at: int, n: int) -> str:
    try:
        return str(json.loads(block[at : at + n].tobytes().decode("utf-8"))["id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{p.name}: sample {k} has no readable metadata record: {exc}") from exc


def _stage(reader: _Reader, stager: BatchStager, lo: int, hi: int) -> _Batch:
    """Read flat samples ``lo:hi`` from the parts and stage them as one batch of the output."""
    fields = stager.fields
    nf = len(fields)
    rows = np.zeros((hi - lo, 4 + nf), dtype=np.int64)
    blocks: list[list[NDArray[Any]]] = [[] for _ in fields]
    digests: list[list[bytes]] = [[] for _ in fields]
    ids: list[str] = []
    where: list[str] = []
    r = 0
    for p, a, b in reader.segments(lo, hi):
        sub = p.rows[a:b]
        n = b - a
        missing = np.flatnonzero(sub[:, p.col["meta.length"]] == 0)
        if missing.size:
            raise StoreError(f"{p.name}: sample {a + int(missing[0])} has no metadata record")
        rows[r : r + n, 0:4] = sub[:, 0:4]
        for fi, spec in enumerate(fields):
            offs = sub[:, p.col[f"{spec.path}.offset"]]
            lens = sub[:, p.col[f"{spec.path}.length"]]
            rows[r : r + n, 4 + fi] = lens
            for first, last, elo, ehi in _runs(offs, lens):
                block = p.read(spec, elo, ehi)
                blocks[fi].append(block)
                for k in range(first, last):
                    if lens[k] == 0:
                        continue
                    at, ln = int(offs[k]) - elo, int(lens[k])
                    digests[fi].append(hashlib.sha256(block[at : at + ln].data).digest())
                    if spec.path == "meta":
                        ids.append(_sample_id(p, a + k, block, at, ln))
                        where.append(p.name)
        r += n
    out = Path(stager.root) / f"merge-{lo}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shards: list[int] = []
    for fi, layout in enumerate(stager.layouts):
        if not blocks[fi]:
            shards.append(0)
        elif layout is None:
            np.save(out / f"{fi}.npy", np.concatenate(blocks[fi]))
            shards.append(-1)
        else:
            files = encode_shards(blocks[fi], layout)
            for k, bufs in enumerate(files):
                write_file(out / f"{fi}.{k}", bufs, sync=stager.sync)
            shards.append(len(files))
    staged = StagedBatch(
        str(out),
        rows,
        tuple(b"".join(d) for d in digests),
        tuple(shards),
        _task_counts(rows[:, 2]),
    )
    return _Batch(staged, ids, where)


def copy_samples(
    parts: Sequence[str | os.PathLike[str]],
    sizes: Sequence[int],
    writer: StoreWriter,
    *,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Append the samples of the finished stores ``parts`` (``sizes`` samples each, fields as
    the writer's), in order, to ``writer`` in batches of ``batch_size``, from its committed
    samples on (a killed merge resumes). A sample id met twice is a ``StoreError`` naming both
    stores; the batches before it stay committed."""
    if writer.batch_size != batch_size:
        raise ValueError(f"writer batches {writer.batch_size} samples, not {batch_size}")
    total = int(sum(sizes))
    reader = _Reader(parts, sizes, writer.stager.fields)
    done = writer.items_done
    seen: dict[str, str] = {}
    for lo in range(0, done, batch_size):  # the committed samples' ids (checked then)
        ids, where = reader.ids(lo, min(lo + batch_size, done))
        seen.update(zip(ids, where, strict=True))
    bounds = [(lo, min(lo + batch_size, total)) for lo in range(done, total, batch_size)]
    stager = writer.stager
    # the next batches are read, hashed and written by a thread while this one commits
    # (one thread: the parts' readers are used by one thread at a time)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[Future[_Batch]] = deque()
        ahead = iter(bounds)
        try:
            for lo, hi in bounds:
                while len(pending) <= _AHEAD and (b := next(ahead, None)) is not None:
                    pending.append(pool.submit(_stage, reader, stager, *b))
                batch = pending.popleft().result()
                for sid, part in zip(batch.ids, batch.where, strict=True):
                    if sid in seen:
                        raise StoreError(f"{part}: sample id {sid!r} also in {seen[sid]}")
                    seen[sid] = part
                writer.commit(batch.staged, hi)
                if progress and hi - lo == batch_size:
                    progress(hi, total)
        finally:
            for f in pending:
                f.cancel()
