"""``rle.polygons_to_counts``: the counts of ``polygons_to_rle``'s string (so pycocotools'), with
the same errors for malformed polygons; uncompressed int64 counts in ``paint_label_map`` are
still validated."""

from __future__ import annotations

import numpy as np
import pytest

from sgt_data import rle
from sgt_data.errors import RLEError

pycoco = pytest.importorskip("pycocotools.mask")


def _random_polygon(rng: np.random.Generator, h: int, w: int) -> list[float]:
    n = int(rng.integers(3, 12))
    cx, cy = rng.uniform(-10, w + 10), rng.uniform(-10, h + 10)
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(1, max(h, w) / 2, n)
    xy = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1)
    return [float(v) for v in xy.reshape(-1)]


@pytest.mark.parametrize("parts", [1, 2, 4])
def test_counts_are_those_of_polygons_to_rle_and_pycocotools(parts: int) -> None:
    rng = np.random.default_rng(parts)
    for h, w in [(480, 640), (37, 19), (1, 5), (0, 4)]:
        for _ in range(20):
            polys = [_random_polygon(rng, h, w) for _ in range(parts)]
            counts = rle.polygons_to_counts(polys, h, w)
            assert counts.dtype == np.int64
            ref = rle.polygons_to_rle(polys, h, w)
            np.testing.assert_array_equal(counts, rle.as_counts(ref))
            if h * w:
                coco = pycoco.merge(pycoco.frPyObjects(polys, h, w))
                assert coco["counts"] == ref["counts"]


def test_label_map_from_counts_equals_the_one_from_strings() -> None:
    rng = np.random.default_rng(7)
    h, w = 120, 160
    polys = [[_random_polygon(rng, h, w) for _ in range(int(rng.integers(1, 3)))] for _ in range(9)]
    from_strings = rle.paint_label_map([rle.polygons_to_rle(p, h, w) for p in polys], h, w)
    from_counts = rle.paint_label_map(
        [{"size": [h, w], "counts": rle.polygons_to_counts(p, h, w)} for p in polys], h, w
    )
    np.testing.assert_array_equal(from_counts, from_strings)
    assert from_counts.max() > 0


@pytest.mark.parametrize(
    ("polys", "reason"),
    [
        ([[0.0, 0.0, 5.0, 0.0, 5.0]], "odd number of coordinates"),
        ([[0.0, 0.0, 5.0, 0.0]], "a polygon needs at least 3"),
        ([[0.0, 0.0, 5.0, 0.0, 5.0, 5.0], [0.0, float("nan"), 5.0, 0.0, 5.0, 5.0]], "non-finite"),
        ([[0.0, 0.0, 5.0, 0.0, 5.0, 1e9]], "out of range"),
        ([], "non-empty list"),
    ],
)
def test_malformed_polygons_raise_what_polygons_to_rle_raises(
    polys: list[list[float]], reason: str
) -> None:
    with pytest.raises(RLEError, match=reason) as got:
        rle.polygons_to_counts(polys, 10, 10, image_id=3, ann_id=9)
    with pytest.raises(RLEError) as ref:
        rle.polygons_to_rle(polys, 10, 10, image_id=3, ann_id=9)
    assert str(got.value) == str(ref.value)
    assert "image 3" in str(got.value)


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        (np.array([10, -5, 95], np.int64), "count #1 is negative"),
        (np.array([10, 20], np.int64), "counts sum to 30, expected h\\*w"),
    ],
)
def test_bad_int64_counts_are_still_named(counts: np.ndarray, reason: str) -> None:
    with pytest.raises(RLEError, match=reason):
        rle.paint_label_map([{"size": [10, 10], "counts": counts}], 10, 10, ann_ids=[4])
