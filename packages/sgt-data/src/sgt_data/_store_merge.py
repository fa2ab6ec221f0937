"""Merging finished stores by copying their samples' stored bytes.

A store sample is stored as it was encoded (JPEG/PNG bytes verbatim, label maps as zstd frames,
the JSON record), so the merge never decodes or re-encodes it. Each output batch takes its
samples' byte ranges from the part stores (a part's batch is one contiguous run per array):
uncompressed arrays (images, label frames) are copied from the parts' shard files into the new
shard files inside the kernel (``os.copy_file_range``; a reflink where the file system has them)
and hashed where they lie (mapped read-only); the compressed JSON records are read and encoded
again. The new shard files get the padding and index :func:`encode_shards` gives them, and the
batch is committed by the writer's own ``commit``. Height, width, task bits and crc32 are the
part's index row (the crc32 covers the same bytes). The result is byte-identical to reading
every record and writing it again, and to a single conversion of the same input with the same
batch size (``tests/test_store_merge.py``).

Every sample is hashed once: the manifest digests chain per-sample sha256 digests, which the
parts do not keep. Measured (cProfile with ``time.process_time``, 256 SA-1B-like images of
~0.52 MB in 4 parts, batches of 8): the record-by-record merge spent its ~1.2-1.8 ms per image
on writing from memory (``writev``, the largest part), sha256, reading into zeroed buffers,
crc32 over every byte and a JSON decode and encode per record; this one spends ~0.36 ms on
sha256, ~0.2 ms on the kernel copy and ~0.2 ms in the writer's commits. Staging runs in up to
``_THREADS`` threads (hashing, mapping and copying release the GIL) while the caller's thread
commits in order.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import shutil
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sgt_data._shard_reader import (
    DirectArray,
    LocalSource,
    ZarrArray,
    open_array,
    shard_layout_from_metadata,
)
from sgt_data._shards import ShardLayout, encode_shards, write_file
from sgt_data._store_layout import TASK_BITS, FieldSpec
from sgt_data._store_stage import BatchStager, StagedBatch
from sgt_data._store_writer import StoreWriter
from sgt_data.errors import StoreError
from sgt_data.schema import SkippedItem

__all__ = ["Batch", "copy_batches", "copy_samples"]

#: copy uncompressed samples' bytes file to file in the kernel where the system can
_COPY = hasattr(os, "copy_file_range")
#: threads staging batches while the caller's thread commits them in order (hashing, mapping
#: and copying release the GIL, so they run on as many cores)
_THREADS = max(1, min(4, os.cpu_count() or 1))


@dataclass
class _Part:
    """One part store opened for copying: its arrays and its index."""

    name: str
    source: LocalSource
    arrays: dict[str, DirectArray | ZarrArray]
    #: per field: the encoding of its shard files (None: one this module does not copy)
    layouts: dict[str, ShardLayout | None]
    rows: NDArray[np.int64]
    col: dict[str, int]
    #: (field, shard #) -> the shard's (offset, nbytes) rows (None: not copyable)
    _indexes: dict[tuple[str, int], NDArray[np.uint64] | None] = field(default_factory=dict)
    #: the arrays' readers keep caches: one staging thread at a time reads through them
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
            layouts = {
                f.path: shard_layout_from_metadata(
                    json.loads(source.read_bytes(f"{f.path}/zarr.json").decode("utf-8"))
                )
                for f in fields
            }
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise StoreError(f"{name}: cannot be read for the merge: {exc}") from exc
        if rows.shape[0] != n:
            raise StoreError(f"{name}: index holds {rows.shape[0]} samples, manifest says {n}")
        return cls(name, source, arrays, layouts, rows, {c: i for i, c in enumerate(cols)})

    def read(self, spec: FieldSpec, lo: int, hi: int) -> NDArray[Any]:
        """Elements ``lo:hi`` of a field, as the merged store's dtype."""
        try:
            with self._lock:
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

    def _shard_index(self, path: str, shard: int, lay: ShardLayout) -> NDArray[np.uint64] | None:
        if (path, shard) in self._indexes:
            return self._indexes[(path, shard)]
        size = lay.chunks_per_shard * 16 + 4
        try:
            tail = self.source.read_tail(f"{path}/{lay.key(shard)}", size)
        except OSError:
            tail = b""
        idx = None
        if len(tail) == size and _crc32c(tail[:-4]) == int.from_bytes(tail[-4:], "little"):
            idx = np.frombuffer(tail[:-4], dtype="<u8").reshape(-1, 2)
        self._indexes[(path, shard)] = idx
        return idx

    def pieces(self, spec: FieldSpec, lo: int, hi: int) -> list[_Piece] | None:
        """Where elements ``lo:hi`` of an uncompressed field lie in the part's shard files, as
        (file, offset, nbytes) ranges; None where they cannot be copied as bytes (compressed,
        another encoding than the merged store's, a chunk left as fill value)."""
        lay = self.layouts[spec.path]
        if lay is None or lay.zstd_level is not None or lay.ndim != 1:
            return None
        isz, chunk = lay.itemsize, lay.chunk
        out: list[_Piece] = []
        pos = lo
        while pos < hi:
            c = pos // chunk
            shard, k = divmod(c, lay.chunks_per_shard)
            idx = self._shard_index(spec.path, shard, lay)
            if idx is None or int(idx[k, 1]) != chunk * isz or int(idx[k, 0]) == _ABSENT:
                return None
            end = min(hi, (c + 1) * chunk)
            file = self.source.where(f"{spec.path}/{lay.key(shard)}")
            at, n = int(idx[k, 0]) + (pos - c * chunk) * isz, (end - pos) * isz
            if out and out[-1][0] == file and out[-1][1] + out[-1][2] == at:
                out[-1] = (file, out[-1][1], out[-1][2] + n)
            else:
                out.append((file, at, n))
            pos = end
        return out


#: (file, offset, nbytes) of stored bytes in a part's shard file
_Piece = tuple[str, int, int]
_ABSENT = 2**64 - 1
#: os.copy_file_range errors that mean "not here" (another file system, not supported): the
#: bytes are then written from memory
_NO_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


def _copy_into(fd: int, pieces: Sequence[_Piece], start: int, n: int) -> None:
    """Copy bytes ``start:start + n`` of the concatenated ``pieces`` to the start of ``fd``
    inside the kernel (no copy through this process; a reflink where the file system has
    them)."""
    pos = 0  # where the current piece starts in the concatenation
    dst = 0
    for file, off, size in pieces:
        a, b = max(start, pos), min(start + n, pos + size)
        if a < b:
            src = os.open(file, os.O_RDONLY)
            try:
                at, left = off + a - pos, b - a
                while left:
                    k = os.copy_file_range(src, fd, left, at, dst)
                    if k == 0:
                        raise StoreError(f"{file}: shard is truncated (at byte {at})")
                    at, dst, left = at + k, dst + k, left - k
            finally:
                os.close(src)
        pos += size


def _write_copied(
    out: Path, fi: int, pieces: Sequence[_Piece], spec: FieldSpec, layout: ShardLayout, sync: bool
) -> int | None:
    """The staged shard files of one field copied from the parts' files (the samples' bytes)
    and encoded (padding, index): byte-identical to :func:`encode_shards` of the same bytes.
    The number of files, or None where the file system cannot copy (write from memory then)."""
    total = sum(p[2] for p in pieces)
    shard_bytes = layout.shard * layout.itemsize
    files = 0
    for s0 in range(0, total, shard_bytes):
        n = min(shard_bytes, total - s0)
        # the shard's trailer (padding of its last chunk, index, checksum), as encode_shards
        # writes it after n bytes of data: the data itself is the copied bytes
        # (the data is pages of an anonymous mapping that nothing touches)
        zeros = np.frombuffer(mmap.mmap(-1, n), dtype=spec.dtype)
        (bufs,) = encode_shards(zeros, layout)
        fd = os.open(out / f"{fi}.{files}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            try:
                _copy_into(fd, pieces, s0, n)
            except OSError as exc:
                if exc.errno in _NO_COPY:
                    return None
                raise
            at = n
            for buf in bufs[1:]:
                view = memoryview(buf).cast("B")
                while view.nbytes:
                    k = os.pwrite(fd, view, at)
                    view, at = view[k:], at + k
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        files += 1
    return files


def _stage_copied(
    files: _Files,
    runs: Sequence[_Run],
    spec: FieldSpec,
    layout: ShardLayout | None,
    out: Path,
    fi: int,
    sync: bool,
) -> tuple[bytes, int] | None:
    """Stage a field's samples by copying their bytes from the parts' shard files, hashing them
    where they lie: (the samples' digests, shard files), or None where the field's bytes cannot
    be copied (compressed, encoded otherwise than the merged store's, no kernel copy here)."""
    if not (_COPY and runs and layout is not None and layout.zstd_level is None):
        return None
    if spec.path == "meta":  # read: the records give the sample ids
        return None
    pieces: list[_Piece] = []
    sums: list[bytes] = []
    for run in runs:
        if run.part.layouts[spec.path] != layout:
            return None
        got = run.part.pieces(spec, run.lo, run.hi)
        if got is None:
            return None
        sums += _hash_pieces(files, got, run.samples(), layout.itemsize)
        pieces += got
    n = _write_copied(out, fi, pieces, spec, layout, sync)
    return None if n is None else (b"".join(sums), n)


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
        self._lock = threading.Lock()

    def _part(self, pi: int) -> _Part:
        with self._lock:
            got = self._open.get(pi)
            if got is None:
                # batches are staged about in order: done with the parts two before
                for k in [k for k in self._open if k < pi - 1]:
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


@dataclass(frozen=True)
class _Run:
    """Present samples ``first:last`` (in a segment starting at part sample ``base``) stored one
    after the other at elements ``lo:hi`` of a part's field."""

    part: _Part
    base: int
    first: int
    last: int
    lo: int
    hi: int
    offs: NDArray[np.int64]
    lens: NDArray[np.int64]

    def samples(self) -> list[tuple[int, int, int]]:
        """(sample # in the part, element offset in the run, length) of its present samples."""
        return [
            (self.base + k, int(self.offs[k]) - self.lo, int(self.lens[k]))
            for k in range(self.first, self.last)
            if self.lens[k] > 0
        ]


class _Files:
    """The parts' shard files mapped read-only, for hashing their bytes where they lie."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}

    def view(self, piece: _Piece) -> memoryview:
        file, off, n = piece
        m = self._maps.get(file)
        if m is None:
            fd = os.open(file, os.O_RDONLY)
            try:
                m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except ValueError as exc:  # an empty file
                raise StoreError(f"{file}: shard cannot be mapped: {exc}") from exc
            finally:
                os.close(fd)
            self._maps[file] = m
        if off + n > len(m):
            raise StoreError(f"{file}: shard is truncated ({len(m)} bytes, data to {off + n})")
        return memoryview(m)[off : off + n]

    def close(self) -> None:
        for m in self._maps.values():
            with contextlib.suppress(BufferError):  # a view still held: freed with it
                m.close()
        self._maps.clear()


def _hash_pieces(
    files: _Files, pieces: Sequence[_Piece], samples: Sequence[tuple[int, int, int]], isz: int
) -> list[bytes]:
    """The sha256 of each sample (element offset and length in the run whose bytes ``pieces``
    hold, in order), hashed where the bytes lie in the parts' files."""
    out: list[bytes] = []
    pi, pstart = 0, 0  # the piece the next sample starts in and its byte offset in the run
    for _, at, n in samples:
        a, b = at * isz, (at + n) * isz
        while pstart + pieces[pi][2] <= a:
            pstart += pieces[pi][2]
            pi += 1
        h = hashlib.sha256()
        k, kstart = pi, pstart
        while kstart < b:
            file, off, size = pieces[k]
            lo, hi = max(a, kstart) - kstart, min(b, kstart + size) - kstart
            h.update(files.view((file, off + lo, hi - lo)))
            kstart += size
            k += 1
        out.append(h.digest())
    return out


def _stage(reader: _Reader, stager: BatchStager, lo: int, hi: int, name: str) -> _Batch:
    """Read flat samples ``lo:hi`` from the parts and stage them as one batch of the output, in
    the staging folder ``name`` (one per batch: batches of skipped items alone hold no samples,
    so ``lo`` does not tell two batches apart)."""
    fields = stager.fields
    nf = len(fields)
    rows = np.zeros((hi - lo, 4 + nf), dtype=np.int64)
    runs: list[list[_Run]] = [[] for _ in fields]
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
                runs[fi].append(_Run(p, a, first, last, elo, ehi, offs, lens))
        r += n
    out = Path(stager.root) / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    digests: list[bytes] = []
    shards: list[int] = []
    ids: list[str] = []
    where: list[str] = []
    files = _Files()
    try:
        for fi, (spec, layout) in enumerate(zip(fields, stager.layouts, strict=True)):
            got = _stage_copied(files, runs[fi], spec, layout, out, fi, stager.sync)
            if got is not None:
                digests.append(got[0])
                shards.append(got[1])
                continue
            blocks: list[NDArray[Any]] = []
            sums: list[bytes] = []
            for run in runs[fi]:
                block = run.part.read(spec, run.lo, run.hi)
                blocks.append(block)
                for k, at, n in run.samples():
                    sums.append(hashlib.sha256(block[at : at + n].data).digest())
                    if spec.path == "meta":
                        ids.append(_sample_id(run.part, k, block, at, n))
                        where.append(run.part.name)
            digests.append(b"".join(sums))
            if not blocks:
                shards.append(0)
            elif layout is None:
                np.save(out / f"{fi}.npy", np.concatenate(blocks))
                shards.append(-1)
            else:
                encoded = encode_shards(blocks, layout)
                for k, bufs in enumerate(encoded):
                    write_file(out / f"{fi}.{k}", bufs, sync=stager.sync)
                shards.append(len(encoded))
    finally:
        files.close()
    staged = StagedBatch(
        str(out),
        rows,
        tuple(digests),
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
    done = writer.items_done
    batches = [
        Batch(lo, min(lo + batch_size, total), min(lo + batch_size, total))
        for lo in range(done, total, batch_size)
    ]

    def full(b: Batch, total_items: int) -> None:  # progress after whole batches only
        if progress and b.hi - b.lo == batch_size:
            progress(b.items, total_items)

    copy_batches(parts, sizes, writer, batches, total, full)


@dataclass(frozen=True)
class Batch:
    """One batch to commit: the parts' samples ``lo:hi`` (numbered over the parts in order),
    the input items consumed once it is committed, and the items skipped in it."""

    lo: int
    hi: int
    items: int
    skipped: tuple[SkippedItem, ...] = ()


def copy_batches(
    parts: Sequence[str | os.PathLike[str]],
    sizes: Sequence[int],
    writer: StoreWriter,
    batches: Sequence[Batch],
    total_items: int,
    progress: Callable[[Batch, int], None] | None = None,
) -> None:
    """Commit ``batches`` of the samples of the finished stores ``parts`` (``sizes`` samples
    each, fields as the writer's) to ``writer`` in order, after its committed samples (the
    first batch starts at ``writer.num_samples``; e.g. a conversion's batches of input items
    where some items were skipped). ``progress(batch, total_items)`` after each commit. A
    sample id met twice is a ``StoreError`` naming both stores; the batches before it stay
    committed."""
    committed = writer.num_samples
    if batches and batches[0].lo != committed:
        raise ValueError(f"the first batch starts at sample {batches[0].lo}, not {committed}")
    reader = _Reader(parts, sizes, writer.stager.fields)
    seen: dict[str, str] = {}
    step = max(1, writer.batch_size)
    for lo in range(0, committed, step):  # the committed samples' ids (checked then)
        ids, where = reader.ids(lo, min(lo + step, committed))
        seen.update(zip(ids, where, strict=True))
    stager = writer.stager
    # the next batches are read, hashed and written by threads while this one commits
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        pending: deque[Future[_Batch]] = deque()
        ahead = enumerate(batches)
        try:
            for b in batches:
                while len(pending) <= _THREADS and (nk := next(ahead, None)) is not None:
                    k, nb = nk
                    pending.append(pool.submit(_stage, reader, stager, nb.lo, nb.hi, f"merge-{k}"))
                got = pending.popleft().result()
                for sid, part in zip(got.ids, got.where, strict=True):
                    if sid in seen:
                        raise StoreError(f"{part}: sample id {sid!r} also in {seen[sid]}")
                    seen[sid] = part
                writer.commit(got.staged, b.items, b.skipped)
                if progress:
                    progress(b, total_items)
        finally:
            for f in pending:
                f.cancel()
