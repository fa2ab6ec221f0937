"""``verify_store``: a finished store checked against its manifest."""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from sgt_data._frames import _decode_frame
from sgt_data._shard_reader import open_array
from sgt_data._store_digest import _array_digest, _field_digests
from sgt_data._store_layout import TASK_BITS
from sgt_data._store_reader import SampleStore
from sgt_data.errors import StoreError
from sgt_data.schema import TaskKind


def verify_store(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Check a store (a directory or a URL) against its manifest; returns the problems found
    (empty when it is sound)."""
    try:
        store = SampleStore.open(path, storage_options=storage_options)
    except StoreError as exc:
        return [str(exc)]
    problems: list[str] = []
    m = store.manifest
    arrays: dict[str, Any] = {}
    for name in ["index", *[f.path for f in store.fields]]:
        try:
            arrays[name] = open_array(store._source, name)
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
