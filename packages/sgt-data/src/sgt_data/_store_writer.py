"""The store writer: creates or resumes a store, commits staged batches, writes the manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from sgt_data._shards import ShardLayout, encode_shards, sync_path, write_file
from sgt_data._store_digest import _DIGEST_SAMPLE_SHA, _array_digest, _field_digests
from sgt_data._store_layout import (
    JOURNAL_FILE,
    LAYOUT_VERSION,
    MANIFEST_FILE,
    TASK_BITS,
    FieldSpec,
    SampleRecord,
    _columns,
    _store_fields,
    _zarr,
)
from sgt_data._store_stage import STAGING_DIR, BatchStager, StagedBatch
from sgt_data.errors import StoreError
from sgt_data.schema import RendererSpec, SkippedItem, SourceSpec, StoreManifest, TaskKind

_log = logging.getLogger(__name__)


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


#: factor by which the writer grows an array's shape when a batch needs more room
_GROWTH: Final = 8


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
