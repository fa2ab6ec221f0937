"""The checksums of a store's arrays (the manifest's ``arrays`` digests)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from sgt_data._store_layout import FieldSpec


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
