"""The compiled greedy instance colouring assigns exactly the slots of the plain numpy/Python
version it replaced (kept here as the reference), on random maps of up to 400 instances."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from sgt_data.errors import RenderError
from sgt_data.render import InstanceRenderer, _greedy_colours, _scan, _slot_tables


def _reference_greedy(
    ids: NDArray[np.int64],
    pairs: NDArray[np.int64],
    tables: tuple[NDArray[np.float64], NDArray[np.int64]],
) -> dict[int, int]:
    dist, rank = tables
    n_pal = len(rank)
    neighbours: dict[int, list[int]] = {int(i): [] for i in ids}
    for a, b in pairs.tolist():
        if a in neighbours and b in neighbours:
            neighbours[a].append(b)
            neighbours[b].append(a)
    free = np.ones(n_pal, dtype=bool)
    slots: dict[int, int] = {}
    used_min = np.full(n_pal, np.inf)
    for i in sorted(neighbours, key=lambda x: (-len(neighbours[x]), x)):
        near = [slots[n] for n in neighbours[i] if n in slots]
        score = dist[:, near].min(axis=1) if near else np.full(n_pal, np.inf)
        if slots:
            score = np.minimum(score, 2.0 * used_min)
        score = np.where(free, score, -1.0)
        best = np.flatnonzero(score == score.max())
        slot = int(best[np.argmin(rank[best])])
        slots[i] = slot
        free[slot] = False
        np.minimum(used_min, dist[:, slot], out=used_min)
    return slots


def _random_map(rng: np.random.Generator, k: int) -> NDArray[np.int32]:
    h, w = int(rng.integers(8, 200)), int(rng.integers(8, 200))
    lab = np.zeros((h, w), np.int32)
    for i in range(1, k + 1):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        dy, dx = rng.integers(1, 30, 2)
        lab[y : y + dy, x : x + dx] = i
    return lab


@pytest.mark.parametrize("seed", [0, 5])
def test_kernel_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tables = _slot_tables(256 + 512, 256, seed)
    for trial in range(40):
        lab = _random_map(rng, int(rng.integers(1, 400)))
        if trial % 4 == 0:
            lab *= 3  # sparse ids above 1024: the pair search without a table
        radius = int(rng.choice([1, 2, 8]))
        pairs, ids = _scan(lab, radius)
        want = _reference_greedy(ids, pairs, tables)
        assert _greedy_colours(ids, pairs, tables) == want, trial
        # pairs naming ids absent from ``ids`` are ignored, as the reference ignores them
        extra = np.concatenate([pairs, [[ids.max() + 1, ids.max() + 2]]]) if ids.size else pairs
        assert _greedy_colours(ids, extra.astype(np.int64), tables) == want, trial


def test_assign_edge_cases() -> None:
    r = InstanceRenderer(0, max_instances=8)
    assert r.assign(np.zeros((4, 4), np.uint16)).tolist() == []
    lab = np.zeros((4, 9), np.uint16)
    lab[:, 0], lab[:, 4] = 3, 1  # id 2 absent
    slots = r.assign(lab)
    assert slots[1] == -1
    assert slots[0] != slots[2]
    assert {int(slots[0]), int(slots[2])} <= set(range(8))
    many = np.arange(9, dtype=np.uint16).reshape(3, 3) + 1
    with pytest.raises(RenderError, match="9 segments but the palette holds only 8"):
        r.assign(many)
