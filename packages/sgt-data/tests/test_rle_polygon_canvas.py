"""Polygon rasterisation works in proportion to the polygon, not the canvas; the box IoU of a
pair that does not overlap raises no floating-point warning."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from sgt_data import rle
from sgt_data.errors import RLEError

TRIANGLE = [[0.0, 0.0, 5.0, 0.0, 2.0, 0.9]]

_PEAK = """
import resource, sys
from sgt_data import rle
poly = [[0.0, 0.0, 5.0, 0.0, 2.0, 0.9]]
rle.polygons_to_rle(poly, 7, 13)  # compiles the kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = [rle.polygons_to_rle(poly, h, w)["counts"].decode() for h, w in ((1, 10**8), (2, 2**31 - 1))]
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(grown, *out)
"""


def test_a_small_polygon_on_a_huge_canvas_needs_little_memory() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK], capture_output=True, text=True, timeout=300, check=True
    )
    grown_kib, wide, tall = proc.stdout.split()
    # a bucket per canvas column took 1.7 GB here (and a MemoryError on the second canvas)
    assert int(grown_kib) < 64 * 1024, f"peak RSS grew by {int(grown_kib) // 1024} MiB"
    assert (wide, tall) == ("12mWh[o2", "2110hooooo3")  # pycocotools' strings for these


@pytest.mark.parametrize(("h", "w"), [(1, 10**8), (2, 2**31 - 1), (7, 13), (40, 3)])
def test_polygons_on_extreme_canvases_match_pycocotools(h: int, w: int) -> None:
    mask = pytest.importorskip("pycocotools.mask")
    assert (
        rle.polygons_to_rle(TRIANGLE, h, w)["counts"]
        == mask.merge(mask.frPyObjects(TRIANGLE, h, w))["counts"]
    )


def test_a_canvas_beyond_the_pixel_limit_is_an_rle_error() -> None:
    with pytest.raises(RLEError, match=r"size \[2, 2147483648\] exceeds the limit"):
        rle.polygons_to_rle(TRIANGLE, 2, 2**31)


def test_box_iou_of_a_tiny_crowd_box_beside_another_warns_nothing() -> None:
    # found by test_boxes_match_pycocotools: inter (a product of two negative extents) over a
    # crowd union of 2.2e-309 overflowed in a division whose result was then discarded
    boxes = [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 2.225073858507203e-309]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = rle.iou(boxes, boxes, [1, 1])
    np.testing.assert_array_equal(got, [[0.0, 0.0], [0.0, 1.0]])
