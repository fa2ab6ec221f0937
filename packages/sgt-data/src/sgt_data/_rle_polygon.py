"""Polygons -> RLE: COCO polygons of one annotation (or boxes) rasterised exactly as pycocotools
does, by one kernel call per well-formed polygon, with a validating path that names the
malformed polygon, annotation and image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from sgt_data._rle_core import (
    IdLike,
    RLEDict,
    _check_hw,
    _error,
    _ids,
    _k,
    _rle_dicts,
)
from sgt_data.errors import RLEError

#: largest absolute polygon / box coordinate accepted
_MAX_COORD = 2.0**20
#: most upsampled boundary points a polygon may have (bounds rasterisation time)
_MAX_POLY_STEPS = 2**26


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
