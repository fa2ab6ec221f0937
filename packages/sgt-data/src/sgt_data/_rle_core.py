"""The shared layer under :mod:`sgt_data.rle` and :mod:`sgt_data._rle_polygon`: the lazily imported
kernel module, the choice of serial or parallel kernels, error context (``annotation <id> of image
<id>: ...``), and the validation and packing of RLE dicts into flat counts for the kernels.

Importing this module imports neither numba nor compiles anything (see :mod:`sgt_data.rle`).
"""

from __future__ import annotations

import itertools
import operator
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from sgt_data.errors import RLEError

#: largest ``h * w`` accepted (pycocotools stores counts and areas as uint32)
MAX_PIXELS = 2**32 - 1
#: output bytes from which batch kernels go parallel (when allowed)
_PARALLEL_MIN_BYTES = 64 * 2**20

RLEDict = dict[str, Any]
IdLike = int | str
_Uint8 = npt.NDArray[np.uint8]

_kernels: ModuleType | None = None
_forked_child = False


def _mark_forked_child() -> None:
    global _forked_child
    _forked_child = True


os.register_at_fork(after_in_child=_mark_forked_child)


def _k() -> Any:
    """The kernel module, imported (not compiled) on first use."""
    global _kernels
    if _kernels is None:
        from sgt_data import _rle_kernels

        _kernels = _rle_kernels
    return _kernels


def _use_parallel(nbytes: int, n: int, parallel: bool | None) -> bool:
    if parallel is False or n < 2 or _forked_child:
        return False
    if parallel is None and nbytes < _PARALLEL_MIN_BYTES:
        return False
    import numba

    return int(getattr(numba.config, "NUMBA_NUM_THREADS", 1)) > 1


# ------------------------------------------------------------------------------------------------
# error context
# ------------------------------------------------------------------------------------------------


def _where(index: int | None, image_id: object, ann_ids: Sequence[IdLike] | None) -> str:
    ann = None
    if ann_ids is not None and index is not None and 0 <= index < len(ann_ids):
        ann = ann_ids[index]
    head = f"annotation {ann!r}" if ann is not None else f"RLE #{index}"
    if image_id is not None:
        head += f" of image {image_id!r}"
    return head


def _error(
    reason: str,
    index: int | None = 0,
    image_id: object = None,
    ann_ids: Sequence[IdLike] | None = None,
) -> RLEError:
    err = RLEError(f"{_where(index, image_id, ann_ids)}: {reason}")
    err.index = index  # type: ignore[attr-defined]
    err.image_id = image_id  # type: ignore[attr-defined]
    err.ann_id = (  # type: ignore[attr-defined]
        ann_ids[index]
        if ann_ids is not None and index is not None and 0 <= index < len(ann_ids)
        else None
    )
    return err


def _ids(ann_id: IdLike | None) -> list[IdLike] | None:
    return None if ann_id is None else [ann_id]


def _kernel_error(
    status: int,
    info: npt.NDArray[np.int64],
    sizes: Sequence[tuple[int, int]],
    image_id: object,
    ann_ids: Sequence[IdLike] | None,
    index_map: Sequence[int] | None = None,
) -> RLEError:
    k = _k()
    i = int(info[0])
    h, w = sizes[i]
    if index_map is not None:
        i = index_map[i]
    a, b = int(info[1]), int(info[2])
    if status == k.ERR_CHAR:
        reason = (
            f"invalid character {chr(b)!r} (byte {b}) at offset {a} of the compressed counts; "
            "valid characters are '0'..'o' (48..111)"
        )
    elif status == k.ERR_TRUNCATED:
        reason = f"compressed counts end in the middle of a value at offset {a} (truncated string)"
    elif status == k.ERR_TOO_LONG:
        reason = f"the value at offset {a} of the compressed counts is longer than 7 characters (count overflows)"
    elif status == k.ERR_NEGATIVE:
        reason = f"count #{a} decodes to a negative value ({b})"
    elif status == k.ERR_SUM:
        reason = f"counts sum to {a}, expected h*w = {h}x{w} = {h * w}"
    else:  # pragma: no cover - every kernel status is handled above
        reason = f"kernel status {status}"
    return _error(reason, i, image_id, ann_ids)


# ------------------------------------------------------------------------------------------------
# input validation and packing
# ------------------------------------------------------------------------------------------------


def _check_hw(h: object, w: object, where: tuple[int, object, Sequence[IdLike] | None]) -> None:
    if type(h) is not int or type(w) is not int:
        raise _error(f"size must be two integers [h, w], got [{h!r}, {w!r}]", *where)
    if h < 0 or w < 0:
        raise _error(f"size [{h}, {w}] is negative", *where)
    if h * w > MAX_PIXELS:
        raise _error(f"size [{h}, {w}] exceeds the limit of {MAX_PIXELS} pixels", *where)


def _size(
    rle: object, i: int, image_id: object, ann_ids: Sequence[IdLike] | None
) -> tuple[int, int]:
    where = (i, image_id, ann_ids)
    if not isinstance(rle, dict):
        raise _error(
            f"an RLE must be a dict with 'size' and 'counts', got {type(rle).__name__}", *where
        )
    try:
        size = rle["size"]
        h, w = size
    except (KeyError, TypeError, ValueError):
        raise _error("an RLE needs 'size': [h, w]", *where) from None
    if (
        isinstance(h, np.integer | int)
        and isinstance(w, np.integer | int)
        and not isinstance(h, bool)
        and not isinstance(w, bool)
    ):
        h, w = int(h), int(w)
    _check_hw(h, w, where)
    if "counts" not in rle:
        raise _error("an RLE needs 'counts'", *where)
    return h, w


def _string_of(
    counts: object, i: int, image_id: object, ann_ids: Sequence[IdLike] | None
) -> bytes | None:
    """The compressed string of ``counts``, or None when the counts are uncompressed."""
    if type(counts) is bytes:
        return counts
    if isinstance(counts, str):
        try:
            return counts.encode("ascii")
        except UnicodeEncodeError as exc:
            raise _error(
                f"invalid character {counts[exc.start]!r} at offset {exc.start} of the compressed counts",
                i,
                image_id,
                ann_ids,
            ) from None
    if isinstance(counts, (bytes, bytearray, memoryview)):
        return bytes(counts)
    return None


def _counts_of_list(
    counts: object, h: int, w: int, i: int, image_id: object, ann_ids: Sequence[IdLike] | None
) -> npt.NDArray[np.int64]:
    """Validated uncompressed counts."""
    if (
        type(counts) is np.ndarray
        and counts.dtype == np.int64
        and counts.ndim == 1
        and counts.size
        and int(counts.min()) >= 0
        and int(counts.sum()) == h * w  # with no negative count, none exceeds h * w
    ):  # the common case of counts computed here (e.g. polygons_to_counts): two reductions
        return np.ascontiguousarray(counts)
    where = (i, image_id, ann_ids)
    if not isinstance(counts, (list, tuple, np.ndarray)):
        raise _error(
            f"'counts' must be a compressed str/bytes or a list of integers, got {type(counts).__name__}",
            *where,
        )
    try:
        arr = np.asarray(counts)
    except (ValueError, TypeError, OverflowError):
        raise _error("'counts' is not a flat list of integers", *where) from None
    if arr.ndim != 1:
        raise _error(f"'counts' must be flat, got shape {arr.shape}", *where)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.floor(arr)))
        if bad.size:
            j = int(bad[0])
            raise _error(f"count #{j} is not an integer ({arr[j].item()!r})", *where)
    elif arr.dtype.kind == "O":
        for j, c in enumerate(arr.tolist()):
            if not isinstance(c, (int, np.integer)) or isinstance(c, bool):
                raise _error(f"count #{j} is not an integer ({c!r})", *where)
            if not -(2**63) <= c < 2**63:
                raise _error(f"count #{j} overflows ({c})", *where)
        raise _error("'counts' is not a flat list of integers", *where)  # pragma: no cover
    elif arr.dtype.kind not in "iu":
        raise _error(f"'counts' must hold integers, got {arr.dtype}", *where)
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) >= 2**63:
        j = int(np.argmax(arr))
        raise _error(f"count #{j} overflows ({int(arr[j])})", *where)
    if arr.dtype.kind == "f" and arr.size and float(np.abs(arr).max()) >= 2.0**63:
        j = int(np.argmax(np.abs(arr)))
        raise _error(f"count #{j} overflows ({arr[j].item()!r})", *where)
    c64 = arr.astype(np.int64)
    neg = np.flatnonzero(c64 < 0)
    if neg.size:
        j = int(neg[0])
        raise _error(f"count #{j} is negative ({int(c64[j])})", *where)
    hw = h * w
    if c64.size and int(c64.max()) > hw:
        j = int(np.argmax(c64))
        raise _error(f"count #{j} ({int(c64[j])}) exceeds h*w = {h}x{w} = {hw}", *where)
    total = int(c64.sum())
    if total != hw:
        raise _error(f"counts sum to {total}, expected h*w = {h}x{w} = {hw}", *where)
    return np.ascontiguousarray(c64)


class _Packed:
    """Counts of several RLEs, concatenated, with their sizes."""

    __slots__ = ("counts", "hs", "offs", "sizes", "ws")

    def __init__(
        self,
        counts: npt.NDArray[np.int64],
        offs: npt.NDArray[np.int64],
        sizes: list[tuple[int, int]],
    ) -> None:
        self.counts = counts
        self.offs = offs
        self.sizes = sizes
        self.hs = np.array([s[0] for s in sizes], dtype=np.int64)
        self.ws = np.array([s[1] for s in sizes], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sizes)

    def one(self, i: int) -> npt.NDArray[np.int64]:
        return self.counts[self.offs[i] : self.offs[i + 1]]


def _parse_strings(
    strings: list[bytes],
    sizes: list[tuple[int, int]],
    image_id: object,
    ann_ids: Sequence[IdLike] | None,
    index_map: Sequence[int] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    n = len(strings)
    buf = np.frombuffer(b"".join(strings), dtype=np.uint8)
    soffs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(s) for s in strings], out=soffs[1:])
    hw = np.array([h * w for h, w in sizes], dtype=np.int64)
    counts = np.empty(buf.shape[0] + 1, dtype=np.int64)
    coffs = np.empty(n + 1, dtype=np.int64)
    info = np.zeros(3, dtype=np.int64)
    status = _k().parse_strings(buf, soffs, hw, counts, coffs, info)
    if status:
        raise _kernel_error(status, info, sizes, image_id, ann_ids, index_map)
    return counts[: coffs[n]], coffs


def _pack(
    rles: Sequence[object],
    image_id: object = None,
    ann_ids: Sequence[IdLike] | None = None,
    what: str = "RLE",
) -> _Packed:
    """Parse and validate a list of RLE dicts (compressed or not) into packed counts."""
    if ann_ids is not None and len(ann_ids) != len(rles):
        raise RLEError(f"got {len(ann_ids)} ann_ids for {len(rles)} RLEs")
    sizes: list[tuple[int, int]] = []
    strings: list[bytes] = []
    string_idx: list[int] = []
    lists: dict[int, npt.NDArray[np.int64]] = {}
    for i, r in enumerate(rles):
        h, w = _size(r, i, image_id, ann_ids)
        sizes.append((h, w))
        c = r["counts"]  # type: ignore[index]
        s = _string_of(c, i, image_id, ann_ids)
        if s is None:
            lists[i] = _counts_of_list(c, h, w, i, image_id, ann_ids)
        else:
            strings.append(s)
            string_idx.append(i)
    if not lists:
        counts, coffs = _parse_strings(strings, sizes, image_id, ann_ids)
        return _Packed(counts, coffs, sizes)
    parts: list[npt.NDArray[np.int64]] = [np.empty(0, np.int64)] * len(rles)
    if strings:
        sc, so = _parse_strings(
            strings, [sizes[i] for i in string_idx], image_id, ann_ids, string_idx
        )
        for j, i in enumerate(string_idx):
            parts[i] = sc[so[j] : so[j + 1]]
    for i, arr in lists.items():
        parts[i] = arr
    offs = np.zeros(len(rles) + 1, dtype=np.int64)
    np.cumsum([p.shape[0] for p in parts], out=offs[1:])
    counts = np.concatenate(parts) if parts else np.empty(0, np.int64)
    return _Packed(counts.astype(np.int64, copy=False), offs, sizes)


_ONLY_DICT = {dict}
_ONLY_INT = {int}
_ONLY_BYTES = {bytes}
_ONLY_STR = {str}
_get_size = operator.itemgetter("size")
_get_counts = operator.itemgetter("counts")


def _plain_strings(rles: Sequence[Any], h: int | None = None, w: int | None = None) -> Any:
    """``(h, w, joined bytes, int64 lengths)`` of RLE dicts that all hold compressed counts
    (all bytes or all ASCII str) of one plain ``[h, w]`` size (given, or the first one's);
    None when anything differs.

    The cheap common case, in C-level loops: callers fall back to :func:`_pack`, which
    validates and names the offending RLE.
    """
    if not rles or set(map(type, rles)) != _ONLY_DICT:
        return None
    try:
        sizes = list(map(_get_size, rles))
        strings = list(map(_get_counts, rles))
    except KeyError:
        return None
    first = sizes[0]
    if (type(first) is not list and type(first) is not tuple) or len(first) != 2:
        return None
    if sizes.count(first) != len(sizes):
        return None
    if set(map(type, itertools.chain.from_iterable(sizes))) != _ONLY_INT:
        return None
    if h is None:
        h, w = first
        if h < 0 or w < 0 or h * w > MAX_PIXELS:
            return None
    elif first[0] != h or first[1] != w:
        return None
    kinds = set(map(type, strings))
    if kinds == _ONLY_BYTES:
        data = b"".join(strings)
    elif kinds == _ONLY_STR:
        text = "".join(strings)
        if not text.isascii():
            return None
        data = text.encode("ascii")
    else:
        return None
    return h, w, data, np.fromiter(map(len, strings), np.int64, len(strings))


def _check_sizes(
    packed: _Packed,
    hw: tuple[int, int],
    mismatch: str,
    image_id: object = None,
    ann_ids: Sequence[IdLike] | None = None,
) -> None:
    """Refuse the first RLE of ``packed`` whose size is not ``hw``: "size [h, w] " + ``mismatch``
    (which says what ``hw`` is)."""
    for i, s in enumerate(packed.sizes):
        if s != hw:
            raise _error(f"size [{s[0]}, {s[1]}] {mismatch}", i, image_id, ann_ids)


def _same_size(
    packed: _Packed, what: str, image_id: object = None, ann_ids: Sequence[IdLike] | None = None
) -> tuple[int, int]:
    h, w = packed.sizes[0]
    mismatch = f"differs from the size [{h}, {w}] of the first RLE; {what} needs equal sizes"
    _check_sizes(packed, (h, w), mismatch, image_id, ann_ids)
    return h, w


def _strings(counts: npt.NDArray[np.int64], offs: npt.NDArray[np.int64]) -> list[bytes]:
    n = offs.shape[0] - 1
    out = np.empty(7 * counts.shape[0] + 1, dtype=np.uint8)
    soffs = np.empty(n + 1, dtype=np.int64)
    end = _k().counts_to_strings(counts, offs, out, soffs)
    data = out[:end].tobytes()
    so = soffs.tolist()
    return [data[so[i] : so[i + 1]] for i in range(n)]


def _rle_dicts(
    counts: npt.NDArray[np.int64], offs: npt.NDArray[np.int64], sizes: Sequence[tuple[int, int]]
) -> list[RLEDict]:
    return [
        {"size": [h, w], "counts": s}
        for (h, w), s in zip(sizes, _strings(counts, offs), strict=True)
    ]
