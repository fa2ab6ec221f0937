"""Fuzzing: random and mutated RLE strings and count lists never crash, hang or return garbage.

Every input either raises RLEError or decodes to a mask that pycocotools decodes identically.
The default run is short; ``SGT_FUZZ_FULL=1`` (``nox -s fuzz``) runs the full length.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from sgt_data import rle
from sgt_data.errors import RLEError

mask_api = pytest.importorskip("pycocotools.mask")

SHORT_CASES = 2_000
FULL_CASES = 100_000


def _has_seven_group_value(s: bytes) -> bool:
    """pycocotools shifts a C int by 30 for a value's 7th character (undefined behaviour)."""
    run = 0
    for b in s:
        if (b - 48) & 0x20:
            run += 1
            if run >= 6:
                return True
        else:
            run = 0
    return False


def _valid_string(rng: np.random.Generator, h: int, w: int) -> bytes:
    m = np.asfortranarray((rng.random((h, w)) < rng.uniform(0.1, 0.9)).astype(np.uint8))
    counts: bytes = mask_api.encode(m)["counts"]
    return counts


def _mutate(rng: np.random.Generator, s: bytes) -> bytes:
    b = bytearray(s)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 5))
        pos = int(rng.integers(0, len(b) + 1))
        if op == 0 and b:  # replace with a valid-alphabet char
            b[min(pos, len(b) - 1)] = int(rng.integers(48, 112))
        elif op == 1:  # insert any byte
            b.insert(pos, int(rng.integers(0, 256)))
        elif op == 2 and b:  # delete
            del b[min(pos, len(b) - 1)]
        elif op == 3:  # truncate
            b = b[:pos]
        else:  # flip a bit
            if b:
                b[min(pos, len(b) - 1)] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def _cases(n: int, seed: int) -> Iterator[tuple[int, int, Any]]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = int(rng.integers(0, 13)), int(rng.integers(0, 13))
        kind = int(rng.integers(0, 6))
        if kind == 0:  # random bytes
            yield h, w, rng.integers(0, 256, int(rng.integers(0, 20))).astype(np.uint8).tobytes()
        elif kind == 1:  # random valid-alphabet strings, as str
            yield (
                h,
                w,
                rng.integers(48, 112, int(rng.integers(0, 20))).astype(np.uint8).tobytes().decode(),
            )
        elif kind in (2, 3):  # mutated real encodings
            yield h, w, _mutate(rng, _valid_string(rng, h, w))
        elif kind == 4:  # random count lists, sometimes summing to h*w
            k = int(rng.integers(0, 8))
            c = rng.integers(-3, max(h * w, 1) + 3, k).tolist()
            if c and rng.random() < 0.5:
                c[-1] = h * w - sum(c[:-1])
            yield h, w, c
        else:  # extreme count values
            c = [int(v) for v in rng.choice([0, 1, -1, 2**31, 2**32, 2**63 - 1, -(2**63)], 3)]
            yield h, w, c


def _check(h: int, w: int, counts: Any) -> bool:
    obj = {"size": [h, w], "counts": counts}
    try:
        got = rle.decode(obj)
    except RLEError:
        with pytest.raises(RLEError):
            rle.as_counts(obj)
        # the fused batch kernels (strings parsed while writing) reject it too
        with pytest.raises(RLEError):
            rle.decode([obj, obj])
        with pytest.raises(RLEError):
            rle.paint_label_map([obj], h, w)
        return False
    np.testing.assert_array_equal(rle.decode([obj, obj]), np.stack([got, got], axis=2))
    np.testing.assert_array_equal(rle.paint_label_map([obj], h, w), got)
    c = rle.as_counts(obj)
    assert (c >= 0).all()
    assert int(c.sum()) == h * w
    assert got.shape == (h, w)
    assert int(rle.area(obj)) == int(got.sum())
    np.testing.assert_array_equal(rle.decode_rows(obj), got)
    assert rle.encode(got) == mask_api.encode(got)
    if h * w:
        if isinstance(counts, list):
            ref = mask_api.decode(mask_api.frPyObjects(obj, h, w))
            np.testing.assert_array_equal(got, ref)
        elif not _has_seven_group_value(counts.encode() if isinstance(counts, str) else counts):
            np.testing.assert_array_equal(got, mask_api.decode(obj))
    return True


def _run(n: int, seed: int) -> None:
    decoded = 0
    for h, w, counts in _cases(n, seed):
        decoded += _check(h, w, counts)
    assert decoded > n // 20  # the fuzzer reaches the success path, not only errors


def test_fuzz_decode_short() -> None:
    _run(SHORT_CASES, seed=1)


@pytest.mark.fuzz_full
@pytest.mark.skipif(
    os.environ.get("SGT_FUZZ_FULL") != "1", reason="set SGT_FUZZ_FULL=1 (nox -s fuzz)"
)
def test_fuzz_decode_full() -> None:
    _run(FULL_CASES, seed=2)
