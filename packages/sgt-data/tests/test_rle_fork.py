"""The kernels run in forked DataLoader workers after the parent already ran parallel kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sgt_data import rle

mask_api = pytest.importorskip("pycocotools.mask")
torch = pytest.importorskip("torch")
numba = pytest.importorskip("numba")


def _rles(n: int = 6, h: int = 48, w: int = 64) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    masks = np.zeros((h, w, n), np.uint8, order="F")
    for i in range(n):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        masks[y : y + rng.integers(4, 30), x : x + rng.integers(4, 40), i] = 1
    out: list[dict[str, Any]] = mask_api.encode(masks)
    return out


class _Masks(torch.utils.data.Dataset):  # type: ignore[misc]
    def __init__(self, rles: list[dict[str, Any]]) -> None:
        self.rles = rles

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        rles = self.rles[: i + 1]
        h, w = rles[0]["size"]
        return (
            rle.decode(rles, parallel=True),
            rle.decode_rows(rles, parallel=True),
            rle.paint_label_map(rles, h, w),
            rle._use_parallel(2**40, 100, True),
        )


def test_fork_dataloader_after_parent_used_parallel_kernels() -> None:
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2 for a parallel region in the parent")
    rles = _rles()
    ref = mask_api.decode(rles)
    # the parent runs serial and parallel kernels, which starts numba's threading layer
    np.testing.assert_array_equal(rle.decode(rles, parallel=True), ref)
    np.testing.assert_array_equal(rle.decode_rows(rles, parallel=True), np.moveaxis(ref, 2, 0))
    np.testing.assert_array_equal(rle.decode(rles[0]), ref[:, :, 0])
    assert numba.threading_layer() in {"omp", "tbb", "workqueue"}

    loader = torch.utils.data.DataLoader(
        _Masks(rles), batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    seen = 0
    for i, (masks, rows, labels, parallel_allowed) in enumerate(loader):
        n = i + 1
        np.testing.assert_array_equal(np.asarray(masks), ref[:, :, :n])
        np.testing.assert_array_equal(np.asarray(rows), np.moveaxis(ref[:, :, :n], 2, 0))
        expected = rle.paint_label_map(rles[:n], *ref.shape[:2])
        np.testing.assert_array_equal(np.asarray(labels), expected)
        assert not parallel_allowed  # forked workers always take the serial kernels
        seen += 1
    assert seen == 6
