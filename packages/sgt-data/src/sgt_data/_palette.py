"""Palettes: the seeded colour tables the renderers draw from, decoding to the nearest colour, and
the per-image choice of instance colours.

One palette per seed: ``num_classes`` class colours followed by ``max_instances`` instance
colours, all chosen by farthest-point sampling in RGB so that every two colours of the palette
(and black) are far apart. Instance colours are assigned per image by greedy graph colouring:
touching instances (found by one compiled pass over the runs of equal labels) get the palette
colours furthest from each other's. The two kernels compile on first use (``cache=True``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from sgt_data.errors import RenderError

RGB = NDArray[np.uint8]
Labels = NDArray[np.integer[Any]]

#: default palette sizes (COCO-Stuff has 182 class ids; SA-1B images hold up to ~500 masks)
DEFAULT_NUM_CLASSES: Final = 256
DEFAULT_MAX_INSTANCES: Final = 256
#: palette colours keep at least this distance from black (the background)
_MIN_DIST_FROM_BLACK: Final = 60.0


@functools.lru_cache(maxsize=16)
def _palette_cached(n: int, seed: int) -> RGB:
    rng = np.random.default_rng(seed)
    # a dense seeded candidate set; farthest-point sampling picks n of them
    candidates = rng.integers(0, 256, size=(max(32 * n, 16384), 3)).astype(np.float64)
    candidates = candidates[np.linalg.norm(candidates, axis=1) >= _MIN_DIST_FROM_BLACK]
    if len(candidates) < n:
        raise RenderError(f"cannot draw {n} distinct palette colours")
    # distance to the nearest already chosen colour; black counts as chosen
    nearest = np.linalg.norm(candidates, axis=1)
    chosen = np.empty((n, 3), dtype=np.float64)
    for i in range(n):
        j = int(np.argmax(nearest))
        chosen[i] = candidates[j]
        nearest = np.minimum(nearest, np.linalg.norm(candidates - candidates[j], axis=1))
    out = chosen.astype(np.uint8)
    out.setflags(write=False)
    return out


def distinct_palette(n: int, seed: int = 0) -> RGB:
    """``n`` RGB colours, pairwise far apart and far from black, deterministic per seed."""
    if n < 1:
        raise RenderError(f"palette size must be >= 1, got {n}")
    return _palette_cached(int(n), int(seed))


def _pack(rgb: RGB) -> NDArray[np.int32]:
    c = rgb.astype(np.int32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def _check_rgb(rgb: NDArray[Any]) -> RGB:
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or rgb.ndim != 3
        or rgb.shape[2] != 3
    ):
        shape = getattr(rgb, "shape", None)
        raise RenderError(
            f"expected an HxWx3 uint8 image, got {getattr(rgb, 'dtype', None)} {shape}"
        )
    return rgb


def _check_labels(labels: NDArray[Any]) -> Labels:
    if not isinstance(labels, np.ndarray) or labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise RenderError(
            f"expected an HxW integer label map, got {getattr(labels, 'dtype', None)} "
            f"{getattr(labels, 'shape', None)}"
        )
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise RenderError("label maps must be non-negative")
    return labels


def _gather(lut: NDArray[Any], labels: Labels) -> RGB:
    """``lut[labels]`` for a (K, 3) colour table (``np.take`` is ~4x faster than fancy indexing)."""
    out: RGB = np.take(lut, labels, axis=0)
    return out


def nearest_colour(rgb: RGB, colours: NDArray[Any]) -> NDArray[np.int32]:
    """Index into ``colours`` (Kx3) of the nearest colour to each pixel of ``rgb`` (HxW)."""
    rgb = _check_rgb(rgb)
    codes, inverse = np.unique(_pack(rgb).ravel(), return_inverse=True)
    uniq = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=1).astype(np.int32)
    pal = np.asarray(colours, dtype=np.int32)
    best = np.empty(len(uniq), dtype=np.int32)
    step = max(1, 4_000_000 // max(len(pal), 1))
    for s in range(0, len(uniq), step):
        d = ((uniq[s : s + step, None, :] - pal[None, :, :]) ** 2).sum(axis=2)
        best[s : s + step] = d.argmin(axis=1)
    return best[inverse].reshape(rgb.shape[:2])


def _adjacency_runs(
    flat: NDArray[Any],
    changes: NDArray[np.int64],
    h: int,
    w: int,
    offsets: NDArray[np.int64],
    k1: int,
    seen: NDArray[np.bool_],
    present: NDArray[np.bool_],
) -> NDArray[np.int64]:  # pragma: no cover - compiled by Numba (see _adjacency_kernel)
    """Mark the pairs of different non-zero labels at the given row/column offsets, working on
    the runs of equal labels of each row instead of on pixels: horizontal pairs can only cross a
    run boundary, and two rows ``d`` apart are compared run against overlapping run.
    ``changes``: the sorted flat positions p >= 1 where ``flat[p] != flat[p - 1]``. Pair codes
    ``lo * k1 + hi`` go into the table ``seen`` when it is non-empty, else into the returned
    array (unsorted, with repeats); ``present`` (if non-empty) marks every label seen."""
    cap = changes.size + h + 1
    starts = np.empty(cap, dtype=np.int64)
    labs = np.empty(cap, dtype=np.int64)
    row_off = np.empty(h + 1, dtype=np.int64)
    n = 0
    ci = 0
    for y in range(h):
        row_off[y] = n
        base = y * w
        starts[n] = 0
        labs[n] = np.int64(flat[base])
        n += 1
        while ci < changes.size and changes[ci] <= base:
            ci += 1  # a change at the row start is the row's first run
        while ci < changes.size and changes[ci] < base + w:
            starts[n] = changes[ci] - base
            labs[n] = np.int64(flat[changes[ci]])
            n += 1
            ci += 1
    row_off[h] = n
    if present.size:
        for i in range(n):
            present[labs[i]] = True
    use_table = seen.size > 0
    codes = [np.int64(0) for _ in range(0)]
    max_d = np.int64(0)
    for d in offsets:
        max_d = max(max_d, d)
    # along rows: run i (label a) and a later run j (label b) hold a pair at distance d when
    # [s_i + d, e_i + d) overlaps [s_j, e_j)
    for y in range(h):
        r0, r1 = row_off[y], row_off[y + 1]
        for i in range(r0, r1):
            a = labs[i]
            if a == 0:
                continue
            s_i = starts[i]
            e_i = starts[i + 1] if i + 1 < r1 else w
            j = i + 1
            while j < r1 and starts[j] < e_i + max_d:
                b = labs[j]
                if b != 0 and b != a:
                    s_j = starts[j]
                    e_j = starts[j + 1] if j + 1 < r1 else w
                    for d in offsets:
                        if s_i + d < e_j and s_j < e_i + d:
                            c = min(a, b) * k1 + max(a, b)
                            if use_table:
                                seen[c] = True
                            else:
                                codes.append(c)
                            break
                j += 1
    # along columns: rows y and y + d, run against overlapping run
    for d in offsets:
        for y in range(h - d):
            p, pe = row_off[y], row_off[y + 1]
            q, qe = row_off[y + d], row_off[y + d + 1]
            while p < pe and q < qe:
                a, b = labs[p], labs[q]
                if a != b and a != 0 and b != 0:
                    c = min(a, b) * k1 + max(a, b)
                    if use_table:
                        seen[c] = True
                    else:
                        codes.append(c)
                end_p = starts[p + 1] if p + 1 < pe else w
                end_q = starts[q + 1] if q + 1 < qe else w
                if end_p <= end_q:
                    p += 1
                if end_q <= end_p:
                    q += 1
    out = np.empty(len(codes), dtype=np.int64)
    for k in range(len(codes)):
        out[k] = codes[k]
    return out


@functools.cache
def _adjacency_kernel() -> Any:
    """:func:`_adjacency_runs` compiled (serial, so safe in forked workers; cached on disk)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_adjacency_runs)


#: pair tables (k1 * k1 bools) are used up to this many labels; beyond, codes are sorted
_TABLE_LABELS: Final = 1024
#: ``present`` flags are collected up to this label value; beyond, ids come from ``np.unique``
_PRESENT_LABELS: Final = 1 << 22
#: from this label value on, pair codes ``lo * k1 + hi`` could overflow int64
_CODE_LABELS: Final = 1 << 31

#: the signature of :func:`_adjacency_runs` (compiled by :func:`_adjacency_kernel`, or not)
AdjacencyKernel = Callable[..., NDArray[np.int64]]


def scan_runs(
    labels: Labels, radius: int, kernel: AdjacencyKernel
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(Pairs (a, b), a < b, of non-zero labels that come within ``radius`` pixels of each other
    along a row or column, checked at offsets 1, 2, 4, ... <= radius; the non-zero labels
    present), in one pass of ``kernel`` (:func:`_adjacency_runs`, compiled or not) over the runs
    of the map."""
    lab = np.ascontiguousarray(labels)
    if lab.dtype.kind not in "iu" or lab.dtype.itemsize > 8 or lab.ndim != 2:
        raise RenderError(f"expected an HxW integer label map, got {lab.dtype} {lab.shape}")
    if lab.size and lab.dtype.kind == "i" and int(lab.min()) < 0:
        raise RenderError("label maps must be non-negative")
    if lab.size and int(lab.max()) >= _CODE_LABELS:
        # pair codes lo * k1 + hi would overflow int64: scan the ranks of the labels (same order)
        uniq, inverse = np.unique(lab, return_inverse=True)
        if uniq[0] != 0:
            uniq = np.concatenate([np.zeros(1, uniq.dtype), uniq])
            inverse = inverse + 1
        rank_pairs, rank_ids = scan_runs(
            inverse.reshape(lab.shape).astype(np.int64), radius, kernel
        )
        return uniq[rank_pairs].astype(np.int64), uniq[rank_ids].astype(np.int64)
    if lab.dtype == np.uint64:
        lab = lab.astype(np.int64)
    h, w = lab.shape
    k1 = int(lab.max()) + 1 if lab.size else 1
    offsets = np.array(
        [1 << i for i in range(max(radius, 1).bit_length()) if 1 << i <= radius], dtype=np.int64
    )
    offsets = offsets[offsets < max(h, w)]
    seen = np.zeros(k1 * k1 if k1 <= _TABLE_LABELS else 0, dtype=bool)
    present = np.zeros(k1 if k1 <= _PRESENT_LABELS else 0, dtype=bool)
    if lab.size:
        flat = lab.reshape(-1)
        changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        codes = kernel(flat, changes, h, w, offsets, k1, seen, present)
    else:
        codes = np.empty(0, dtype=np.int64)
    allc = np.flatnonzero(seen).astype(np.int64) if seen.size else np.unique(codes)
    pairs = np.stack([allc // k1, allc % k1], axis=1)
    if present.size:
        ids = np.flatnonzero(present[1:]).astype(np.int64) + 1
    else:
        uniq = np.unique(lab)
        ids = np.asarray(uniq[uniq > 0], dtype=np.int64)
    return pairs, ids


@functools.lru_cache(maxsize=8)
def _slot_tables(
    n_total: int, start: int, seed: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Pairwise distances of the instance colours, and the seeded tie-break rank of each slot."""
    p = distinct_palette(n_total, seed)[start:].astype(np.float64)
    dist = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(axis=2))
    order = np.random.default_rng(seed).permutation(len(p))
    rank = np.empty(len(p), dtype=np.int64)
    rank[order] = np.arange(len(p))
    return dist, rank


def _greedy_slots(
    ids: NDArray[np.int64],
    pairs: NDArray[np.int64],
    dist: NDArray[np.float64],
    rank: NDArray[np.int64],
) -> NDArray[np.int64]:  # pragma: no cover - compiled by Numba (see _greedy_kernel)
    """Greedy palette slot of each of the sorted, unique ``ids`` given the touching ``pairs``
    (P x 2; pairs naming an id not in ``ids`` are ignored). Most-connected ids first, ties by
    id; each takes the free slot with the largest score (distance to the nearest slot of a
    coloured neighbour, capped by twice the distance to the nearest slot used so far), ties
    broken by the smallest ``rank``."""
    k = ids.size
    # neighbour lists (CSR) of the nodes 0..k-1 (node i is ids[i])
    a = np.searchsorted(ids, pairs[:, 0])
    b = np.searchsorted(ids, pairs[:, 1])
    degree = np.zeros(k, dtype=np.int64)
    ok = np.zeros(pairs.shape[0], dtype=np.bool_)
    for q in range(pairs.shape[0]):
        if a[q] < k and b[q] < k and ids[a[q]] == pairs[q, 0] and ids[b[q]] == pairs[q, 1]:
            ok[q] = True
            degree[a[q]] += 1
            degree[b[q]] += 1
    nbr_off = np.zeros(k + 1, dtype=np.int64)
    for i in range(k):
        nbr_off[i + 1] = nbr_off[i] + degree[i]
    fill = nbr_off[:-1].copy()
    nbr = np.empty(nbr_off[k], dtype=np.int64)
    for q in range(pairs.shape[0]):
        if ok[q]:
            nbr[fill[a[q]]] = b[q]
            fill[a[q]] += 1
            nbr[fill[b[q]]] = a[q]
            fill[b[q]] += 1
    # visiting order: degree descending, then id ascending (node order is id order)
    order = np.argsort((degree.max() - degree) * k + np.arange(k))
    n_pal = rank.size
    k = order.size
    slot_of = np.full(k, -1, dtype=np.int64)
    free = np.ones(n_pal, dtype=np.bool_)
    used_min = np.full(n_pal, np.inf)
    near = np.empty(max(nbr.size, 1), dtype=np.int64)
    any_used = False
    for i in order:
        n_near = 0
        for q in range(nbr_off[i], nbr_off[i + 1]):
            s = slot_of[nbr[q]]
            if s >= 0:
                near[n_near] = s
                n_near += 1
        best = -1
        best_score = -np.inf
        for c in range(n_pal):
            if free[c]:
                score = np.inf
                for q in range(n_near):
                    score = min(score, dist[c, near[q]])
                if any_used:
                    score = min(score, 2.0 * used_min[c])
            else:
                score = -1.0
            if score > best_score or (score == best_score and rank[c] < rank[best]):
                best, best_score = c, score
        slot_of[i] = best
        free[best] = False
        for c in range(n_pal):
            used_min[c] = min(used_min[c], dist[c, best])
        any_used = True
    return slot_of


@functools.cache
def _greedy_kernel() -> Any:
    """:func:`_greedy_slots` compiled (serial, no fastmath: the slots must not change)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_greedy_slots)


def _greedy_colours(
    ids: NDArray[np.int64],
    pairs: NDArray[np.int64],
    tables: tuple[NDArray[np.float64], NDArray[np.int64]],
) -> dict[int, int]:
    """Assign each id a distinct palette slot: maximise the colour distance to touching ids, then
    (at half weight) to every id of the image; most-connected ids first, ties by id."""
    dist, rank = tables
    n_pal = len(rank)
    if len(ids) > n_pal:
        raise RenderError(
            f"{len(ids)} segments but the palette holds only {n_pal} instance colours"
        )
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return {}
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    slot_of = _greedy_kernel()(ids, pairs, dist, rank)
    return dict(zip(ids.tolist(), slot_of.tolist(), strict=True))
