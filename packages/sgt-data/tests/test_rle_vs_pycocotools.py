"""sgt_data.rle against pycocotools: bit-identical masks, byte-identical strings, equal measures."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgt_data import rle

mask_api = pytest.importorskip("pycocotools.mask")

SETTINGS = settings(max_examples=60, deadline=None)


def _random_mask(h: int, w: int, seed: int, kind: int) -> np.ndarray:
    """Binary masks with few or many runs: noise, blocks, stripes, empty, full."""
    rng = np.random.default_rng(seed)
    if kind == 0:
        m = rng.random((h, w)) < rng.uniform(0.05, 0.95)
    elif kind == 1:  # axis-aligned blocks
        m = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(1, 6))):
            y0, x0 = rng.integers(0, max(h, 1)), rng.integers(0, max(w, 1))
            m[y0 : y0 + rng.integers(1, h + 2), x0 : x0 + rng.integers(1, w + 2)] = True
    elif kind == 2:  # horizontal stripes: a run boundary in every column
        m = (np.arange(h)[:, None] % int(rng.integers(1, 4)) == 0) & np.ones((h, w), bool)
    elif kind == 3:
        m = np.zeros((h, w), bool)
    else:
        m = np.ones((h, w), bool)
    return np.asfortranarray(m.astype(np.uint8))


sizes = st.tuples(st.integers(0, 40), st.integers(0, 40)) | st.sampled_from(
    [(1, 1), (0, 7), (7, 0), (1, 97), (97, 1), (131, 77)]
)
masks = st.builds(
    lambda hw, seed, kind: _random_mask(hw[0], hw[1], seed, kind),
    sizes,
    st.integers(0, 2**32 - 1),
    st.integers(0, 4),
)


@st.composite
def mask_stacks(draw: Any) -> np.ndarray:
    h, w = draw(st.tuples(st.integers(1, 30), st.integers(1, 30)))
    n = draw(st.integers(1, 6))
    seeds = draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n))
    kinds = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    return np.asfortranarray(
        np.stack([_random_mask(h, w, s, k) for s, k in zip(seeds, kinds, strict=True)], axis=2)
    )


@SETTINGS
@given(masks)
def test_encode_single_mask_is_byte_identical(m: np.ndarray) -> None:
    ours = rle.encode(m)
    assert ours == mask_api.encode(m)
    assert type(ours["counts"]) is bytes
    assert type(ours["size"][0]) is int


@SETTINGS
@given(masks)
def test_decode_is_bit_identical(m: np.ndarray) -> None:
    ref = mask_api.encode(m)
    for counts in (ref["counts"], ref["counts"].decode()):
        got = rle.decode({"size": ref["size"], "counts": counts})
        assert got.dtype == np.uint8
        assert got.shape == m.shape
        assert got.flags.f_contiguous
        np.testing.assert_array_equal(got, m)
        if m.size:
            np.testing.assert_array_equal(got, mask_api.decode(ref))
    rows = rle.decode_rows(ref)
    assert rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, m)


@SETTINGS
@given(mask_stacks())
def test_batch_functions_match(stack: np.ndarray) -> None:
    ref = mask_api.encode(stack)
    assert rle.encode(stack) == ref
    got = rle.decode(ref)
    assert got.flags.f_contiguous
    assert got.shape == stack.shape
    np.testing.assert_array_equal(got, mask_api.decode(ref))
    np.testing.assert_array_equal(rle.decode_rows(ref), np.moveaxis(stack, 2, 0))
    out = np.empty(stack.shape, np.uint8, order="F")
    assert rle.decode(ref, out=out) is out
    np.testing.assert_array_equal(out, stack)

    areas = rle.area(ref)
    assert areas.dtype == np.uint32
    np.testing.assert_array_equal(areas, mask_api.area(ref))
    assert rle.area(ref[0]) == mask_api.area(ref[0])
    assert isinstance(rle.area(ref[0]), np.uint32)

    boxes = rle.toBbox(ref)
    assert boxes.dtype == np.float64
    np.testing.assert_array_equal(boxes, mask_api.toBbox(ref))
    np.testing.assert_array_equal(rle.toBbox(ref[0]), mask_api.toBbox(ref[0]))

    for intersect in (0, 1):
        assert rle.merge(ref, intersect) == mask_api.merge(ref, intersect)

    crowd = [i % 2 for i in range(len(ref))]
    expected = mask_api.iou(ref, ref[::-1], crowd)
    got_iou = rle.iou(ref, ref[::-1], crowd)
    assert got_iou.dtype == np.float64
    np.testing.assert_array_equal(got_iou, expected)


@SETTINGS
@given(masks)
def test_uncompressed_counts_convert_like_pycocotools(m: np.ndarray) -> None:
    counts = rle.as_counts(mask_api.encode(m)).tolist()
    uncompressed = {"size": list(m.shape), "counts": counts}
    ref = mask_api.frPyObjects(uncompressed, *m.shape)
    assert rle.frPyObjects(uncompressed, *m.shape) == ref
    assert rle.as_compressed(uncompressed) == ref
    np.testing.assert_array_equal(rle.decode(uncompressed), m)


@st.composite
def polygon_cases(draw: Any) -> tuple[list[list[float]], int, int]:
    h, w = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    polys = []
    for _ in range(draw(st.integers(1, 3))):
        k = int(rng.integers(3, 14))
        if draw(st.booleans()):  # integer and half-pixel vertices: rounding ties
            xs = rng.integers(-3, 2 * w + 6, k) / 2
            ys = rng.integers(-3, 2 * h + 6, k) / 2
        else:
            xs = rng.uniform(-5, w + 5, k)
            ys = rng.uniform(-5, h + 5, k)
        polys.append(np.stack([xs, ys], 1).ravel().tolist())
    return polys, h, w


@settings(max_examples=150, deadline=None)
@given(polygon_cases())
def test_polygons_rasterise_like_pycocotools(case: tuple[list[list[float]], int, int]) -> None:
    polys, h, w = case
    ref = mask_api.frPyObjects(polys, h, w)
    assert rle.frPyObjects(polys, h, w) == ref
    assert rle.polygons_to_rle(polys, h, w) == mask_api.merge(ref)
    assert rle.frPyObjects(polys[0], h, w) == ref[0]


@settings(max_examples=40, deadline=None)
@given(polygon_cases())
def test_polygon_containers_agree(case: tuple[list[list[float]], int, int]) -> None:
    """Lists, tuples, float64 arrays and strided float64 views of a polygon rasterise alike."""
    polys, h, w = case
    ref = mask_api.frPyObjects([polys[0]], h, w)[0]
    xy = np.array(polys[0], dtype=np.float64)
    strided = np.repeat(xy, 2)[::2]
    assert not strided.flags.c_contiguous
    for p in (polys[0], tuple(polys[0]), xy, strided):
        assert rle.polygons_to_rle([p], h, w) == ref  # type: ignore[list-item]
        assert rle.frPyObjects([p], h, w) == [ref]


@SETTINGS
@given(
    st.integers(1, 50),
    st.integers(1, 50),
    st.lists(
        st.tuples(*[st.floats(-10, 60, allow_nan=False)] * 2, *[st.floats(0, 40)] * 2),
        min_size=1,
        max_size=5,
    ),
)
def test_boxes_match_pycocotools(h: int, w: int, boxes: list[tuple[float, ...]]) -> None:
    bb = np.array(boxes, dtype=np.float64)
    ref = mask_api.frPyObjects(bb, h, w)
    assert rle.frPyObjects(bb, h, w) == ref
    crowd = [0] * (len(boxes) - 1) + [1]
    np.testing.assert_array_equal(rle.iou(bb, bb[::-1], crowd), mask_api.iou(bb, bb[::-1], crowd))


def test_thousands_of_runs() -> None:
    m = np.asfortranarray((np.indices((301, 211)).sum(0) % 2).astype(np.uint8))  # checkerboard
    ref = mask_api.encode(m)
    assert len(rle.as_counts(ref)) == m.size
    assert rle.encode(m) == ref
    np.testing.assert_array_equal(rle.decode(ref), m)
    np.testing.assert_array_equal(rle.decode_rows(ref), m)
    assert rle.area(ref) == mask_api.area(ref)


@SETTINGS
@given(mask_stacks(), st.integers(0, 3))
def test_batch_decode_every_counts_form_into_a_slice(stack: np.ndarray, form: int) -> None:
    """The fused string kernel (bytes, str) and the packed-counts kernel (lists, a mix) give
    pycocotools' masks, and writing into a slice of a bigger buffer touches nothing outside it
    (the run writer may spill past a run, never past the output)."""
    ref = mask_api.encode(stack)
    if form == 1:
        ref = [{"size": r["size"], "counts": r["counts"].decode()} for r in ref]
    elif form == 2:
        ref = [{"size": r["size"], "counts": rle.as_counts(r).tolist()} for r in ref]
    elif form == 3:
        ref[0] = {"size": ref[0]["size"], "counts": rle.as_counts(ref[0]).tolist()}
    h, w, n = stack.shape
    big = np.full((h, w, n + 2), 7, np.uint8, order="F")
    view = big[:, :, 1 : n + 1]
    assert rle.decode(ref, out=view) is view
    np.testing.assert_array_equal(view, stack)
    assert (big[:, :, 0] == 7).all()
    assert (big[:, :, n + 1] == 7).all()


def test_encode_any_alignment_and_nonzero_values() -> None:
    """The word-at-a-time scan: unaligned buffers, sizes not a multiple of 8, long runs that
    cross words and masks, and foreground bytes other than 1."""
    rng = np.random.default_rng(3)
    h, w, n = 37, 29, 3
    m = np.zeros((h, w, n), np.uint8, order="F")
    m[5:, 3:20, 0] = 1  # runs over whole columns and across the mask boundary
    m[:, :, 1] = rng.random((h, w)) < 0.5
    m[:, 27:, 2] = 1
    m[0, 0, 2] = 1
    ref = mask_api.encode(m)
    raw = np.empty(m.size + 1, np.uint8)
    unaligned = raw[1:].reshape((h, w, n), order="F")
    unaligned[...] = m * rng.integers(1, 256, m.shape).astype(np.uint8)
    assert unaligned.ctypes.data % 8 == 1
    assert rle.encode(unaligned) == ref
    assert rle.encode(unaligned.astype(bool)) == ref
    assert rle.encode(np.ascontiguousarray(m * 255)) == ref


def test_iou_and_empty_inputs_follow_pycocotools() -> None:
    r = mask_api.encode(np.asfortranarray(np.eye(5, dtype=np.uint8)))
    assert rle.iou([r], [], []) == mask_api.iou([r], [], []) == []
    assert rle.area([]).shape == (0,)
    assert rle.encode(np.zeros((3, 4, 0), np.uint8, order="F")) == []


def test_area_of_many_rles_does_not_overflow() -> None:
    """pycocotools 2.0.11 raises OverflowError for 256+ RLEs under numpy 2; we do not."""
    one = np.zeros((8, 8), np.uint8, order="F")
    one[2:5, 3:7] = 1
    rles = [mask_api.encode(one)] * 300
    got = rle.area(rles)
    assert got.shape == (300,)
    assert (got == 12).all()


def test_importing_rle_does_not_import_numba() -> None:
    import subprocess
    import sys

    code = "import sys, sgt_data.rle; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
