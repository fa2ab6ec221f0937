"""Bad input raises RLEError (a ValueError) with a message naming the annotation and image."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sgt_data import rle
from sgt_data.errors import RLEError, SgtDataError

mask_api = pytest.importorskip("pycocotools.mask")


def _ok(h: int = 4, w: int = 5) -> dict[str, Any]:
    m = np.zeros((h, w), np.uint8, order="F")
    m[1:3, 1:4] = 1
    return rle.encode(m)  # type: ignore[return-value]


def test_error_hierarchy() -> None:
    assert issubclass(RLEError, SgtDataError)
    assert issubclass(SgtDataError, ValueError)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (b"92 03", r"invalid character ' ' \(byte 32\) at offset 2"),
        ("92\u00e903", r"invalid character 'é' at offset 2"),
        (
            b"922P",
            r"compressed counts end in the middle of a value at offset 4 \(truncated string\)",
        ),
        (b"9ooooooo0", r"the value at offset 1 .* longer than 7 characters \(count overflows\)"),
        (b"9@", r"count #1 decodes to a negative value \(-16\)"),
        (b"92", r"counts sum to 11, expected h\*w = 4x5 = 20"),
        (b"92203c0", r"counts sum to \d+, expected h\*w = 4x5 = 20"),
    ],
)
def test_malformed_strings(counts: Any, message: str) -> None:
    bad = {"size": [4, 5], "counts": counts}
    for call in (
        lambda: rle.decode(bad),
        lambda: rle.decode([_ok(), bad]),
        lambda: rle.area([_ok(), bad]),
    ):
        with pytest.raises(RLEError, match=message):
            call()
    with pytest.raises(RLEError, match=r"^annotation 17 of image 'img-3': " + message):
        rle.paint_label_map([_ok(), bad], 4, 5, image_id="img-3", ann_ids=[16, 17])
    with pytest.raises(RLEError, match=r"^RLE #1: "):
        rle.decode_rows([_ok(), bad])


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([3, 4], r"counts sum to 7, expected h\*w = 4x5 = 20"),  # pycocotools: uninitialised memory
        ([3, 4, 25], r"count #2 \(25\) exceeds h\*w = 4x5 = 20"),
        ([10, -2, 12], r"count #1 is negative \(-2\)"),
        ([2**64, 1], r"count #0 overflows"),
        ([2**63 + 5, 1], r"count #0 overflows"),
        ([10, 2.5, 7.5], r"count #1 is not an integer \(2.5\)"),
        ([10, float("nan"), 10], r"count #1 is not an integer"),
        ([[10], [10]], r"'counts' must be flat"),
        (None, r"'counts' must be a compressed str/bytes or a list of integers, got NoneType"),
    ],
)
def test_bad_uncompressed_counts(counts: Any, message: str) -> None:
    bad = {"size": [4, 5], "counts": counts}
    with pytest.raises(RLEError, match=r"^annotation 'a9' of image 12: " + message):
        rle.as_counts(bad, image_id=12, ann_id="a9")
    with pytest.raises(RLEError, match=message):
        rle.decode(bad)
    with pytest.raises(RLEError, match=message):
        rle.frPyObjects(bad, 4, 5)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ([-1, 5], r"size \[-1, 5\] is negative"),
        ([100000, 100000], r"size \[100000, 100000\] exceeds the limit of 4294967295 pixels"),
        ([4.0, 5], r"size must be two integers"),
        ([4], r"needs 'size': \[h, w\]"),
    ],
)
def test_bad_sizes(size: Any, message: str) -> None:
    with pytest.raises(RLEError, match=message):
        rle.decode({"size": size, "counts": b"0"})


def test_sizes_that_disagree() -> None:
    a, b = _ok(4, 5), _ok(5, 4)
    with pytest.raises(
        RLEError,
        match=r"annotation 2 of image 1: size \[5, 4\] disagrees with the image size \[4, 5\]",
    ):
        rle.paint_label_map([a, b], 4, 5, image_id=1, ann_ids=[1, 2])
    with pytest.raises(
        RLEError, match=r"RLE #1: size \[5, 4\] differs .* decode needs equal sizes"
    ):
        rle.decode([a, b])
    with pytest.raises(RLEError, match=r"merge needs equal sizes"):
        rle.merge([a, b])
    with pytest.raises(RLEError, match=r"gt size \[5, 4\] differs from the dt size \[4, 5\]"):
        rle.iou([a], [b], [0])
    uncompressed = {"size": [5, 4], "counts": [20]}
    with pytest.raises(RLEError, match=r"size \[5, 4\] disagrees with the image size \[4, 5\]"):
        rle.frPyObjects(uncompressed, 4, 5)
    with pytest.raises(RLEError, match=r"70000 instances do not fit uint16 ids .* in image 5"):
        rle.paint_label_map([a] * 70000, 4, 5, image_id=5)


@pytest.mark.parametrize(
    ("polygon", "message"),
    [
        ([0, 0, 5, 5], r"polygon #0 has 2 points; a polygon needs at least 3"),
        ([0, 0, 5, 5, 3], r"polygon #0 has an odd number of coordinates \(5\)"),
        ([0, 0, 5, float("nan"), 3, 3], r"polygon #0 has a non-finite coordinate #3 \(nan\)"),
        ([0, 0, 5, float("inf"), 3, 3], r"polygon #0 has a non-finite coordinate #3 \(inf\)"),
        ([0, 0, 5, 1e12, 3, 3], r"polygon #0 coordinate #3 \(1e\+12\) is out of range"),
        ([[0, 0], [5, 5], [3, 3]], r"polygon #0 must be a flat \[x0, y0, x1, y1, ...\] list"),
        (["a", 0, 5, 5, 3, 3], r"polygon #0 is not a flat list of numbers"),
    ],
)
def test_bad_polygons(polygon: Any, message: str) -> None:
    with pytest.raises(RLEError, match=r"^annotation 8 of image 3: " + message):
        rle.polygons_to_rle([polygon], 20, 20, image_id=3, ann_id=8)


def test_four_coordinate_polygon_is_not_a_box() -> None:
    """pycocotools reads [[x0, y0, x1, y1]] as a box (TypeError) and a later one as area 0."""
    good = [1.0, 1.0, 8.0, 1.0, 8.0, 6.0, 1.0, 6.0]
    with pytest.raises(RLEError, match=r"polygon #1 has 2 points"):
        rle.frPyObjects([good, [2.0, 2.0, 6.0, 6.0]], 10, 10)
    with pytest.raises(RLEError, match=r"polygon #0 has 2 points"):
        rle.frPyObjects([2.0, 2.0, 6.0, 6.0], 10, 10)
    with pytest.raises(RLEError, match=r"polygon #0 has 2 points"):
        rle.frPyObjects([[2.0, 2.0, 6.0, 6.0]], 10, 10)


def test_polygon_too_long_to_rasterise() -> None:
    zigzag = [0.0, 0.0] + [1e6, 1.0, -1e6, 2.0] * 8
    with pytest.raises(RLEError, match=r"polygon #0 is too long to rasterise"):
        rle.polygons_to_rle([zigzag], 10, 10)


def test_other_bad_inputs() -> None:
    with pytest.raises(RLEError, match=r"decode needs at least one RLE"):
        rle.decode([])
    with pytest.raises(RLEError, match=r"an RLE must be a dict"):
        rle.decode("92203")  # type: ignore[arg-type]
    with pytest.raises(RLEError, match=r"an RLE needs 'counts'"):
        rle.decode({"size": [4, 5]})
    with pytest.raises(RLEError, match=r"encode needs a uint8 or bool mask, got dtype int64"):
        rle.encode(np.zeros((3, 3), np.int64))
    with pytest.raises(RLEError, match=r"iscrowd must hold one flag per gt \(1\)"):
        rle.iou([_ok()], [_ok()], [0, 1])
    with pytest.raises(RLEError, match=r"input type is not supported \(str\)"):
        rle.frPyObjects("x", 4, 5)
    with pytest.raises(RLEError, match=r"box #0 has a non-finite coordinate"):
        rle.frPyObjects(np.array([[0.0, np.nan, 2.0, 2.0]]), 4, 5)
    with pytest.raises(RLEError, match=r"got 1 ann_ids for 2 RLEs"):
        rle.decode_rows([_ok(), _ok()], ann_ids=[1])
