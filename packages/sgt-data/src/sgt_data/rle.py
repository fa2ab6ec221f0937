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

Layout: this module is the public API; the polygon paths are in :mod:`sgt_data._rle_polygon`,
and the validation, packing and error context both use in :mod:`sgt_data._rle_core`.

Import cost: importing this module imports neither numba nor compiles anything; the kernels in
:mod:`sgt_data._rle_kernels` compile on first use (``cache=True``; honours ``NUMBA_CACHE_DIR``).
Batches bigger than 64 MiB of output run a ``prange`` kernel, except in a process forked from a
parent that may already run an OpenMP thread pool (e.g. a ``DataLoader`` worker), where the serial
kernels are always used: GNU OpenMP aborts a forked child that starts a parallel region.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from sgt_data._rle_core import (
    MAX_PIXELS,
    IdLike,
    RLEDict,
    _check_hw,
    _check_sizes,
    _counts_of_list,
    _error,
    _ids,
    _k,
    _kernel_error,
    _pack,
    _plain_strings,
    _rle_dicts,
    _same_size,
    _size,
    _string_of,
    _Uint8,
    _use_parallel,
)
from sgt_data._rle_polygon import (
    _frbbox,
    _poly_counts_list,
    _polygon_rle_fast,
    polygons_to_counts,
    polygons_to_rle,
)
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
    _check_sizes(packed, (h, w), f"disagrees with the image size [{h}, {w}]")
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
    mismatch = f"disagrees with the image size [{height}, {width}]"
    _check_sizes(packed, (height, width), mismatch, image_id, ann_ids)
    if order == "area_desc":
        ar = np.empty(n, dtype=np.int64)
        k.areas(packed.counts, packed.offs, ar)
        paint_order = np.argsort(-ar, kind="stable")
    else:
        paint_order = np.arange(n, dtype=np.int64)
    if height * width:
        k.paint_labels_rows(packed.counts, packed.offs, paint_order, labels, height, width, flat)
    return res
