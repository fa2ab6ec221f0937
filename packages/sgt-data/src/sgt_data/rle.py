"""COCO run-length encoding (RLE): a drop-in for ``pycocotools.mask``, on Numba kernels.

``from sgt_data import rle as mask`` replaces ``from pycocotools import mask``: :func:`encode`,
:func:`decode`, :func:`area`, :func:`toBbox`, :func:`merge`, :func:`iou` and :func:`frPyObjects`
keep pycocotools' names, arguments, return types, dtypes and memory orders, and give bit-identical
masks and byte-identical compressed strings. Additions: :func:`paint_label_map` (all masks of an
image into one instance-id map), :func:`decode_rows` (row-major masks), :func:`polygons_to_rle`,
:func:`as_compressed` and :func:`as_counts`.

Differences from pycocotools, all on bad input or its known defects: every malformed RLE, polygon,
box or size raises :class:`~sgt_data.errors.RLEError` (a ``ValueError``) instead of returning
uninitialised memory or crashing; :func:`area` works for any number of RLEs; a polygon with two
points (four coordinates) is an error, never a box (boxes are given as an ``(N, 4)`` ndarray, the
only form pycocotools 2.0.11 accepts); RLEs with different sizes in one :func:`decode`,
:func:`merge` or :func:`iou` call are an error (pycocotools returns garbage or ``-1``);
:func:`encode` accepts any memory order and ``bool`` masks, and treats every nonzero byte as
foreground; :func:`merge` always returns canonical counts. ``decode``, ``merge`` and friends also
accept uncompressed (``list[int]``) counts and ``str`` counts wherever pycocotools takes bytes.

Error context: the additions take keyword-only ``image_id=`` and ``ann_ids=`` (one id per RLE of
a list) or ``ann_id=`` (single RLE); an :class:`RLEError` message then starts with
``"annotation <ann_id> of image <image_id>: "`` (else ``"RLE #<index>: "``), and the error
carries ``index``, ``ann_id`` and ``image_id`` attributes.

Import cost: importing this module imports neither numba nor compiles anything; the kernels in
:mod:`sgt_data._rle_kernels` compile on first use (``cache=True``; honours ``NUMBA_CACHE_DIR``).
Batches bigger than 64 MiB of output run a ``prange`` kernel, except in a process forked from a
parent that may already run an OpenMP thread pool (e.g. a ``DataLoader`` worker), where the serial
kernels are always used: GNU OpenMP aborts a forked child that starts a parallel region.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from sgt_data.errors import RLEError

__all__ = [
    "MAX_PIXELS",
    "RLEError",
    "area",
    "as_compressed",
    "as_counts",
    "decode",
    "decode_rows",
    "encode",
    "frPyObjects",
    "iou",
    "merge",
    "paint_label_map",
    "polygons_to_counts",
    "polygons_to_rle",
    "toBbox",
]

logger = logging.getLogger(__name__)

#: largest ``h * w`` accepted (pycocotools stores counts and areas as uint32)
MAX_PIXELS = 2**32 - 1
#: largest absolute polygon / box coordinate accepted
_MAX_COORD = 2.0**20
#: most upsampled boundary points a polygon may have (bounds rasterisation time)
_MAX_POLY_STEPS = 2**26
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


def _same_size(
    packed: _Packed, what: str, image_id: object = None, ann_ids: Sequence[IdLike] | None = None
) -> tuple[int, int]:
    h, w = packed.sizes[0]
    for i, s in enumerate(packed.sizes):
        if s != (h, w):
            raise _error(
                f"size [{s[0]}, {s[1]}] differs from the size [{h}, {w}] of the first RLE; {what} needs equal sizes",
                i,
                image_id,
                ann_ids,
            )
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


# ------------------------------------------------------------------------------------------------
# pycocotools-compatible API
# ------------------------------------------------------------------------------------------------


def encode(bimask: npt.ArrayLike) -> RLEDict | list[RLEDict]:
    """Binary mask(s) ``(h, w)`` or ``(h, w, n)`` -> compressed RLE dict (or list of dicts).

    Same output as ``pycocotools.mask.encode``; any memory order and ``bool`` are accepted.
    """
    a = np.asarray(bimask)
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    elif a.dtype != np.uint8:
        raise RLEError(f"encode needs a uint8 or bool mask, got dtype {a.dtype}")
    if a.ndim == 2:
        single = True
        a = a[:, :, None]
    elif a.ndim == 3:
        single = False
    else:
        raise RLEError(f"encode needs a (h, w) or (h, w, n) mask, got shape {a.shape}")
    h, w, n = (int(d) for d in a.shape)
    _check_hw(h, w, (0, None, None))
    flat = np.asfortranarray(a).reshape(-1, order="F")
    if flat.ctypes.data % 8:
        flat = flat.copy()
    words = flat[: flat.shape[0] // 8 * 8].view(np.uint64)
    chars, soffs = _k().encode_masks(flat, words, n, h * w)
    data = chars.tobytes()
    so = soffs.tolist()
    objs: list[RLEDict] = [{"size": [h, w], "counts": data[so[i] : so[i + 1]]} for i in range(n)]
    return objs[0] if single else objs


def _decode_one(rle: object, out: _Uint8 | None) -> _Uint8:
    if type(rle) is not dict:
        raise _error(f"an RLE must be a dict with 'size' and 'counts', got {type(rle).__name__}")
    h, w = _size(rle, 0, None, None)
    s = _string_of(rle["counts"], 0, None, None)
    hw = h * w
    if out is None:
        flat: _Uint8 = np.empty(hw, dtype=np.uint8)
        res = flat.reshape((h, w), order="F")
    else:
        if out.shape != (h, w) or out.dtype != np.uint8 or not out.flags.f_contiguous:
            raise RLEError(f"out must be a Fortran-ordered uint8 array of shape ({h}, {w})")
        res = out
        flat = out.reshape(-1, order="F")
    if s is None:
        counts = _counts_of_list(rle["counts"], h, w, 0, None, None)
        _k().fill_colmajor(counts, np.array([0, counts.shape[0]], np.int64), hw, flat)
        return res
    info = np.zeros(3, dtype=np.int64)
    status = _k().decode_string_colmajor(np.frombuffer(s, dtype=np.uint8), flat, info)
    if status:
        raise _kernel_error(status, info, [(h, w)], None, None)
    return res


def decode(
    rleObjs: RLEDict | list[RLEDict], *, out: _Uint8 | None = None, parallel: bool | None = None
) -> _Uint8:
    """RLE dict -> ``(h, w)`` mask, or list of RLEs -> ``(h, w, n)`` masks; uint8, Fortran order.

    ``out`` (an addition): a preallocated Fortran-ordered uint8 array of the result's shape to
    write into. ``parallel``: None chooses (see the module docstring), False forces the serial
    kernel, True asks for the parallel one where it is safe.
    """
    if type(rleObjs) is not list:
        return _decode_one(rleObjs, out)
    if not rleObjs:
        raise RLEError("decode needs at least one RLE, got an empty list")
    n = len(rleObjs)
    plain = _plain_strings(rleObjs)
    if plain is None:
        packed = _pack(rleObjs)
        h, w = _same_size(packed, "decode")
    else:
        h, w = plain[0], plain[1]
    if out is None:
        res: _Uint8 = np.empty((h, w, n), dtype=np.uint8, order="F")
    else:
        if out.shape != (h, w, n) or out.dtype != np.uint8 or not out.flags.f_contiguous:
            raise RLEError(f"out must be a Fortran-ordered uint8 array of shape ({h}, {w}, {n})")
        res = out
    flat = res.reshape(-1, order="F")
    k = _k()
    par = _use_parallel(flat.nbytes, n, parallel)
    if plain is not None and not par:
        # common case: compressed strings parsed and written in one pass
        info = np.empty(3, dtype=np.int64)  # written on error only
        status = k.decode_strings_colmajor(plain[2], plain[3], h * w, flat, info)
        if status:
            raise _kernel_error(status, info, [(h, w)] * n, None, None)
        return res
    if plain is not None:
        packed = _pack(rleObjs)
    (k.fill_colmajor_parallel if par else k.fill_colmajor)(packed.counts, packed.offs, h * w, flat)
    return res


def area(rleObjs: RLEDict | list[RLEDict]) -> Any:
    """Foreground pixel count: uint32 array for a list, ``np.uint32`` for one RLE."""
    if type(rleObjs) is not list:
        return area([rleObjs])[0]  # type: ignore[list-item]
    if not rleObjs:
        return np.empty(0, dtype=np.uint32)
    packed = _pack(rleObjs)
    out = np.empty(len(packed), dtype=np.uint32)
    _k().areas(packed.counts, packed.offs, out)
    return out


def toBbox(rleObjs: RLEDict | list[RLEDict]) -> npt.NDArray[np.float64]:
    """``[x, y, w, h]`` boxes: ``(n, 4)`` float64 for a list, ``(4,)`` for one RLE."""
    if type(rleObjs) is not list:
        one: npt.NDArray[np.float64] = toBbox([rleObjs])[0]  # type: ignore[list-item]
        return one
    if not rleObjs:
        return np.empty((0, 4), dtype=np.float64)
    packed = _pack(rleObjs)
    out = np.empty((len(packed), 4), dtype=np.float64)
    _k().bboxes(packed.counts, packed.offs, packed.hs, out)
    return out


def merge(rleObjs: list[RLEDict], intersect: int | bool = 0) -> RLEDict:
    """Union (or with ``intersect`` the intersection) of RLEs of one size, as one RLE dict."""
    if not isinstance(rleObjs, list) or not rleObjs:
        raise RLEError("merge needs a non-empty list of RLEs")
    packed = _pack(rleObjs)
    h, w = _same_size(packed, "merge")
    if len(packed) == 1:
        counts = packed.counts
    else:
        counts = _k().merge(packed.counts, packed.offs, bool(intersect))
    return _rle_dicts(counts, np.array([0, counts.shape[0]], np.int64), [(h, w)])[0]


def _boxes(objs: object, name: str) -> npt.NDArray[np.float64]:
    try:
        b = np.asarray(objs, dtype=np.float64)
    except (ValueError, TypeError):
        raise RLEError(f"{name}: boxes must be numbers") from None
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None, :]
    if b.ndim != 2 or b.shape[1] != 4:
        raise RLEError(f"{name}: boxes must have shape (N, 4), got {b.shape}")
    return b


def _iou_kind(objs: object, name: str) -> str:
    if isinstance(objs, np.ndarray):
        return "box"
    if not isinstance(objs, list):
        raise RLEError(
            f"{name}: expected a list of RLEs, a list of boxes or an (N, 4) ndarray, got {type(objs).__name__}"
        )
    if all(isinstance(o, dict) for o in objs):
        return "rle"
    if all(isinstance(o, (list, np.ndarray)) and len(o) == 4 for o in objs):
        return "box"
    raise RLEError(f"{name}: a list must hold only RLE dicts or only [x, y, w, h] boxes")


def iou(dt: Any, gt: Any, iscrowd: Any) -> Any:
    """IoU matrix ``(len(dt), len(gt))`` float64 of RLEs or of ``[x, y, w, h]`` boxes.

    For a crowd gt (``iscrowd[j]`` true) the dt area replaces the union. Returns ``[]`` when
    either side is empty, as pycocotools does.
    """
    if len(dt) == 0 or len(gt) == 0:
        return []
    kd, kg = _iou_kind(dt, "dt"), _iou_kind(gt, "gt")
    if kd != kg:
        raise RLEError("dt and gt must both be RLEs or both be boxes")
    ngt = len(gt)
    crowd = np.zeros(ngt, np.uint8) if iscrowd is None else np.asarray(iscrowd, dtype=np.uint8)
    if crowd.ndim != 1 or crowd.shape[0] != ngt:
        raise RLEError(f"iscrowd must hold one flag per gt ({ngt}), got shape {crowd.shape}")
    if kd == "box":
        d, g = _boxes(dt, "dt"), _boxes(gt, "gt")
        ix = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - np.maximum(
            d[:, None, 0], g[None, :, 0]
        )
        iy = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - np.maximum(
            d[:, None, 1], g[None, :, 1]
        )
        inter = ix * iy
        da = (d[:, 2] * d[:, 3])[:, None]
        ga = (g[:, 2] * g[:, 3])[None, :]
        union = np.where(crowd[None, :] != 0, da, da + ga - inter)
        # divide only where the boxes overlap: elsewhere ``inter`` (a product of two negative
        # extents) over a tiny crowd union overflowed, e.g. a gt of height 2.2e-309 beside a
        # dt of width 0 (found by test_boxes_match_pycocotools)
        overlap = (ix > 0) & (iy > 0)
        res = np.zeros(overlap.shape, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(inter, union, out=res, where=overlap)
        return np.asfortranarray(res)
    pd, pg = _pack(dt), _pack(gt)
    h, w = _same_size(pd, "iou")
    for j, s in enumerate(pg.sizes):
        if s != (h, w):
            raise _error(
                f"gt size [{s[0]}, {s[1]}] differs from the dt size [{h}, {w}]; iou needs equal sizes",
                j,
            )
    out = np.empty((len(pd), len(pg)), dtype=np.float64, order="F")
    _k().iou_rle(pd.counts, pd.offs, pg.counts, pg.offs, crowd, out)
    return out


def _polygon(
    p: object, h: int, w: int, i: int, image_id: object, ann_ids: Sequence[IdLike] | None
) -> npt.NDArray[np.float64]:
    where = (i, image_id, ann_ids)
    try:
        xy = np.asarray(p, dtype=np.float64)
    except (ValueError, TypeError):
        raise _error(f"polygon #{i} is not a flat list of numbers", *where) from None
    if xy.ndim != 1:
        raise _error(f"polygon #{i} must be a flat [x0, y0, x1, y1, ...] list", *where)
    if xy.shape[0] % 2:
        raise _error(f"polygon #{i} has an odd number of coordinates ({xy.shape[0]})", *where)
    if xy.shape[0] < 6:
        raise _error(
            f"polygon #{i} has {xy.shape[0] // 2} points; a polygon needs at least 3", *where
        )
    bad = np.flatnonzero(~np.isfinite(xy))
    if bad.size:
        j = int(bad[0])
        raise _error(f"polygon #{i} has a non-finite coordinate #{j} ({xy[j]:g})", *where)
    big = np.flatnonzero(np.abs(xy) > _MAX_COORD)
    if big.size:
        j = int(big[0])
        raise _error(
            f"polygon #{i} coordinate #{j} ({xy[j]:g}) is out of range (|c| <= {_MAX_COORD:.0f})",
            *where,
        )
    steps = int(_k().poly_steps(xy))
    if steps > _MAX_POLY_STEPS:
        raise _error(
            f"polygon #{i} is too long to rasterise ({steps} boundary steps > {_MAX_POLY_STEPS})",
            *where,
        )
    return np.ascontiguousarray(xy)


def _polygon_xy_fast(p: object) -> npt.NDArray[np.float64] | None:
    """One polygon's flat float64 coordinates for the one-call kernels; None when it is not a
    flat sequence of at least three points (the validating path then names the problem)."""
    if type(p) is np.ndarray:
        if p.dtype != np.float64 or p.ndim != 1:
            return None
        xy = p
    elif type(p) is list or type(p) is tuple:
        try:
            xy = np.array(p, dtype=np.float64)
        except (ValueError, TypeError):
            return None
        if xy.ndim != 1:
            return None
    else:
        return None
    if xy.shape[0] < 6 or xy.shape[0] % 2:
        return None
    return xy


def _polygon_rle_fast(p: object, h: int, w: int) -> RLEDict | None:
    """The compressed RLE of one well-formed polygon in one kernel call; None when the
    polygon is malformed in any way (the validating path then names the problem)."""
    xy = _polygon_xy_fast(p)
    if xy is None:
        return None
    status, chars = _k().polygon_string(xy, h, w, _MAX_COORD, _MAX_POLY_STEPS)
    if status:
        return None
    return {"size": [h, w], "counts": chars.tobytes()}


def _polygon_counts_fast(p: object, h: int, w: int) -> npt.NDArray[np.int64] | None:
    """The counts of one well-formed polygon in one kernel call; None when the polygon is
    malformed in any way (the validating path then names the problem)."""
    xy = _polygon_xy_fast(p)
    if xy is None:
        return None
    status, counts = _k().polygon_counts(xy, h, w, _MAX_COORD, _MAX_POLY_STEPS)
    return None if status else counts


def _poly_counts_list(
    polys: Sequence[object], h: int, w: int, image_id: object, ann_ids: Sequence[IdLike] | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    k = _k()
    parts = []
    for i, p in enumerate(polys):
        xy = _polygon(p, h, w, i, image_id, ann_ids)
        parts.append(k.poly_counts(xy, h, w) if h * w else np.zeros(1, np.int64))
    offs = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([c.shape[0] for c in parts], out=offs[1:])
    return np.concatenate(parts).astype(np.int64, copy=False), offs


def _frbbox(bb: npt.NDArray[np.float64], h: int, w: int) -> list[RLEDict]:
    if bb.ndim != 2 or bb.shape[1] != 4:
        raise RLEError(f"boxes must have shape (N, 4), got {bb.shape}")
    xs, ys = bb[:, 0], bb[:, 1]
    xe, ye = xs + bb[:, 2], ys + bb[:, 3]
    polys = np.stack([xs, ys, xs, ye, xe, ye, xe, ys], axis=1)
    for i, row in enumerate(polys):
        if not np.all(np.isfinite(row)):
            raise _error(f"box #{i} has a non-finite coordinate ({bb[i].tolist()})", i)
    counts, offs = _poly_counts_list(list(polys), h, w, None, None)
    return _rle_dicts(counts, offs, [(h, w)] * len(polys))


def frPyObjects(pyobj: Any, h: int, w: int) -> Any:
    """Boxes ``(N, 4)`` ndarray, polygons, or uncompressed RLEs -> compressed RLE dict(s).

    A list of polygons or RLE dicts gives a list (one RLE per polygon, not merged); a single
    flat polygon or a single RLE dict gives one dict.
    """
    try:
        h, w = operator.index(h), operator.index(w)
    except TypeError:
        raise RLEError(f"frPyObjects: h and w must be integers, got {h!r}, {w!r}") from None
    _check_hw(h, w, (0, None, None))
    if isinstance(pyobj, np.ndarray):
        return _frbbox(pyobj.astype(np.float64), h, w)
    if isinstance(pyobj, dict):
        return _rle_with_size([pyobj], h, w)[0]
    if isinstance(pyobj, list):
        if not pyobj:
            raise RLEError("frPyObjects got an empty list")
        if all(isinstance(o, dict) for o in pyobj):
            return _rle_with_size(pyobj, h, w)
        if all(isinstance(o, (list, tuple, np.ndarray)) for o in pyobj):
            fast = [_polygon_rle_fast(p, h, w) for p in pyobj]
            if None not in fast:
                return fast
            counts, offs = _poly_counts_list(pyobj, h, w, None, None)
            return _rle_dicts(counts, offs, [(h, w)] * len(pyobj))
        if all(isinstance(o, (int, float, np.number)) for o in pyobj):
            counts, offs = _poly_counts_list([pyobj], h, w, None, None)
            return _rle_dicts(counts, offs, [(h, w)])[0]
    raise RLEError(
        f"frPyObjects: input type is not supported ({type(pyobj).__name__}); give an (N, 4) "
        "ndarray of boxes, polygons, or RLE dicts"
    )


def _rle_with_size(rles: list[Any], h: int, w: int) -> list[RLEDict]:
    packed = _pack(rles)
    for i, s in enumerate(packed.sizes):
        if s != (h, w):
            raise _error(f"size [{s[0]}, {s[1]}] disagrees with the image size [{h}, {w}]", i)
    return _rle_dicts(packed.counts, packed.offs, packed.sizes)


# ------------------------------------------------------------------------------------------------
# additions
# ------------------------------------------------------------------------------------------------


def as_counts(
    rle: RLEDict, *, image_id: IdLike | None = None, ann_id: IdLike | None = None
) -> npt.NDArray[np.int64]:
    """Validated uncompressed counts (int64) of an RLE dict whose counts are str, bytes or ints."""
    packed = _pack([rle], image_id, _ids(ann_id))
    return packed.one(0).copy()


def as_compressed(
    rle: RLEDict, *, image_id: IdLike | None = None, ann_id: IdLike | None = None
) -> RLEDict:
    """Validated ``{'size': [h, w], 'counts': bytes}`` of an RLE dict whose counts are str, bytes or ints."""
    packed = _pack([rle], image_id, _ids(ann_id))
    return _rle_dicts(packed.counts, packed.offs, packed.sizes)[0]


def _check_polygons(
    polygons: object, h: int, w: int, image_id: IdLike | None, ann_id: IdLike | None
) -> list[IdLike] | None:
    """Check an annotation's size and that its polygons are a non-empty list; its ids for errors."""
    ids = _ids(ann_id)
    _check_hw(h, w, (0, image_id, ids))
    if not isinstance(polygons, (list, tuple)) or not polygons:
        raise _error(
            "polygons must be a non-empty list of [x0, y0, x1, y1, ...] lists", 0, image_id, ids
        )
    return ids


def polygons_to_rle(
    polygons: Sequence[Sequence[float]],
    h: int,
    w: int,
    *,
    image_id: IdLike | None = None,
    ann_id: IdLike | None = None,
) -> RLEDict:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` of one annotation -> one merged RLE dict.

    Pixel-identical to ``pycocotools.mask.merge(pycocotools.mask.frPyObjects(polygons, h, w))``.
    """
    ids = _check_polygons(polygons, h, w, image_id, ann_id)
    if len(polygons) == 1:
        fast = _polygon_rle_fast(polygons[0], h, w)
        if fast is not None:
            return fast
    counts, offs = _poly_counts_list(polygons, h, w, image_id, ids)
    if len(polygons) > 1:
        counts = _k().merge(counts, offs, False)
    return _rle_dicts(counts, np.array([0, counts.shape[0]], np.int64), [(h, w)])[0]


def polygons_to_counts(
    polygons: Sequence[Sequence[float]],
    h: int,
    w: int,
    *,
    image_id: IdLike | None = None,
    ann_id: IdLike | None = None,
) -> npt.NDArray[np.int64]:
    """COCO polygons of one annotation -> the uncompressed counts of their merged mask.

    The counts that :func:`polygons_to_rle`'s compressed string encodes, for callers that use
    them directly (``{"size": [h, w], "counts": counts}`` in :func:`paint_label_map`) instead
    of encoding a string that is parsed again.
    """
    ids = _check_polygons(polygons, h, w, image_id, ann_id)
    parts = []
    for p in polygons:
        c = _polygon_counts_fast(p, h, w)
        if c is None:  # malformed: the validating path below names the problem
            break
        parts.append(c)
    else:
        if len(parts) == 1:
            return parts[0]
        offs = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([c.shape[0] for c in parts], out=offs[1:])
        merged: npt.NDArray[np.int64] = _k().merge(np.concatenate(parts), offs, False)
        return merged
    counts, offs = _poly_counts_list(polygons, h, w, image_id, ids)
    if len(polygons) > 1:
        counts = _k().merge(counts, offs, False)
    return counts


def decode_rows(
    rle_or_list: RLEDict | list[RLEDict],
    out: _Uint8 | None = None,
    *,
    image_id: IdLike | None = None,
    ann_ids: Sequence[IdLike] | None = None,
    parallel: bool | None = None,
) -> _Uint8:
    """RLE -> ``(h, w)`` or list -> ``(n, h, w)`` uint8 masks in row-major (C) order, no transpose."""
    single = type(rle_or_list) is not list
    rles = [rle_or_list] if single else rle_or_list
    if not rles:
        raise RLEError("decode_rows needs at least one RLE, got an empty list")
    packed = _pack(rles, image_id, ann_ids)  # type: ignore[arg-type]
    h, w = _same_size(packed, "decode_rows", image_id, ann_ids)
    n = len(packed)
    shape = (h, w) if single else (n, h, w)
    if out is None:
        res: _Uint8 = np.empty(shape, dtype=np.uint8)
    else:
        if out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise RLEError(f"out must be a C-ordered uint8 array of shape {shape}")
        res = out
    flat = res.reshape(-1)
    k = _k()
    fill = k.fill_rowmajor_parallel if _use_parallel(flat.nbytes, n, parallel) else k.fill_rowmajor
    if h * w:
        fill(packed.counts, packed.offs, h, w, flat)
    return res


_LABEL_DTYPES = (np.uint8, np.uint16, np.uint32)


def paint_label_map(
    rles: Sequence[RLEDict],
    height: int,
    width: int,
    *,
    order: Literal["area_desc", "given"] = "area_desc",
    dtype: npt.DTypeLike = np.uint16,
    out: npt.NDArray[Any] | None = None,
    image_id: IdLike | None = None,
    ann_ids: Sequence[IdLike] | None = None,
) -> npt.NDArray[Any]:
    """All instance masks of one image -> one row-major ``(height, width)`` instance-id map.

    Instance ``k`` of ``rles`` gets id ``k + 1``; 0 is background. Where masks overlap, the one
    painted last wins: with ``order="area_desc"`` (default) larger masks are painted first, so
    smaller objects stay visible (ties keep list order); with ``order="given"`` masks are painted
    in list order. No per-mask array is materialised. ``dtype`` is uint8, uint16 or uint32.
    """
    dt = np.dtype(dtype)
    if dt.type not in _LABEL_DTYPES:
        raise RLEError(f"dtype must be uint8, uint16 or uint32, got {dt}")
    if order not in ("area_desc", "given"):
        raise RLEError(f"order must be 'area_desc' or 'given', got {order!r}")
    _check_hw(height, width, (0, image_id, None))
    n = len(rles)
    if n > np.iinfo(dt).max:
        raise RLEError(
            f"{n} instances do not fit {dt} ids (max {np.iinfo(dt).max})"
            + (f" in image {image_id!r}" if image_id is not None else "")
        )
    if out is None:
        res = np.empty((height, width), dtype=dt)
    else:
        if out.shape != (height, width) or out.dtype != dt or not out.flags.c_contiguous:
            raise RLEError(f"out must be a C-ordered {dt} array of shape ({height}, {width})")
        res = out
    if n == 0:
        res.fill(0)
        return res
    k = _k()
    labels = np.arange(1, n + 1, dtype=dt)
    flat = res.reshape(-1)
    if ann_ids is None or len(ann_ids) == n:
        plain = _plain_strings(rles, height, width)
        if plain is not None and height * width:
            info = np.zeros(3, dtype=np.int64)
            status = k.label_map_from_strings(
                plain[2], plain[3], order == "area_desc", labels, height, width, flat, info
            )
            if status:
                raise _kernel_error(status, info, [(height, width)] * n, image_id, ann_ids)
            return res
    packed = _pack(list(rles), image_id, ann_ids)
    for i, s in enumerate(packed.sizes):
        if s != (height, width):
            raise _error(
                f"size [{s[0]}, {s[1]}] disagrees with the image size [{height}, {width}]",
                i,
                image_id,
                ann_ids,
            )
    if order == "area_desc":
        ar = np.empty(n, dtype=np.int64)
        k.areas(packed.counts, packed.offs, ar)
        paint_order = np.argsort(-ar, kind="stable")
    else:
        paint_order = np.arange(n, dtype=np.int64)
    if height * width:
        k.paint_labels_rows(packed.counts, packed.offs, paint_order, labels, height, width, flat)
    return res
