"""Target renderers: label maps -> RGB target images, and their inverses (RGB -> label maps).

Every renderer is deterministic given its parameters (recorded by :meth:`spec` in the store
manifest), draws background/absent pixels black, and has an ``inverse`` that decodes a rendered
image back to the label map by nearest palette colour, so that slightly perturbed generated maps
still decode.

Palettes: one palette per seed, ``num_classes`` class colours followed by ``max_instances``
instance colours, all chosen by farthest-point sampling in RGB so that every two colours of the
palette (and black) are far apart. Instance colours are assigned per image by greedy graph
colouring: touching instances get the palette colours furthest from each other's.

Depth colour map ("sgt-rainbow", 1531 levels): the polyline blue (near) -> cyan -> green ->
yellow -> red -> magenta -> white (far) through the RGB cube, one channel changing by one step
per level; black means "no depth". Depth is quantised linearly between ``d_min`` and ``d_max``.
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from sgt_data.errors import RenderError
from sgt_data.schema import RendererSpec, TaskKind

__all__ = [
    "DEPTH_LEVELS",
    "DepthRenderer",
    "EdgeRenderer",
    "InstanceRenderer",
    "PanopticRenderer",
    "ReconstructionRenderer",
    "SemanticRenderer",
    "check_depth_model",
    "depth_from_model",
    "distinct_palette",
    "renderer_from_spec",
]

_log = logging.getLogger(__name__)

RGB = NDArray[np.uint8]
Labels = NDArray[np.integer[Any]]

#: default palette sizes (COCO-Stuff has 182 class ids; SA-1B images hold up to ~500 masks)
DEFAULT_NUM_CLASSES: Final = 256
DEFAULT_MAX_INSTANCES: Final = 256
#: palette colours keep at least this distance from black (the background)
_MIN_DIST_FROM_BLACK: Final = 60.0


@functools.lru_cache(maxsize=16)
def _palette_cached(n: int, seed: int) -> RGB:
    rng = np.random.default_rng(seed)
    # a dense seeded candidate set; farthest-point sampling picks n of them
    candidates = rng.integers(0, 256, size=(max(32 * n, 16384), 3)).astype(np.float64)
    candidates = candidates[np.linalg.norm(candidates, axis=1) >= _MIN_DIST_FROM_BLACK]
    if len(candidates) < n:
        raise RenderError(f"cannot draw {n} distinct palette colours")
    # distance to the nearest already chosen colour; black counts as chosen
    nearest = np.linalg.norm(candidates, axis=1)
    chosen = np.empty((n, 3), dtype=np.float64)
    for i in range(n):
        j = int(np.argmax(nearest))
        chosen[i] = candidates[j]
        nearest = np.minimum(nearest, np.linalg.norm(candidates - candidates[j], axis=1))
    out = chosen.astype(np.uint8)
    out.setflags(write=False)
    return out


def distinct_palette(n: int, seed: int = 0) -> RGB:
    """``n`` RGB colours, pairwise far apart and far from black, deterministic per seed."""
    if n < 1:
        raise RenderError(f"palette size must be >= 1, got {n}")
    return _palette_cached(int(n), int(seed))


def _pack(rgb: RGB) -> NDArray[np.int32]:
    c = rgb.astype(np.int32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def _check_rgb(rgb: NDArray[Any]) -> RGB:
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or rgb.ndim != 3
        or rgb.shape[2] != 3
    ):
        shape = getattr(rgb, "shape", None)
        raise RenderError(
            f"expected an HxWx3 uint8 image, got {getattr(rgb, 'dtype', None)} {shape}"
        )
    return rgb


def _check_labels(labels: NDArray[Any]) -> Labels:
    if not isinstance(labels, np.ndarray) or labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise RenderError(
            f"expected an HxW integer label map, got {getattr(labels, 'dtype', None)} "
            f"{getattr(labels, 'shape', None)}"
        )
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise RenderError("label maps must be non-negative")
    return labels


def _gather(lut: NDArray[Any], labels: Labels) -> RGB:
    """``lut[labels]`` for a (K, 3) colour table (``np.take`` is ~4x faster than fancy indexing)."""
    out: RGB = np.take(lut, labels, axis=0)
    return out


def nearest_colour(rgb: RGB, colours: NDArray[Any]) -> NDArray[np.int32]:
    """Index into ``colours`` (Kx3) of the nearest colour to each pixel of ``rgb`` (HxW)."""
    rgb = _check_rgb(rgb)
    codes, inverse = np.unique(_pack(rgb).ravel(), return_inverse=True)
    uniq = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=1).astype(np.int32)
    pal = np.asarray(colours, dtype=np.int32)
    best = np.empty(len(uniq), dtype=np.int32)
    step = max(1, 4_000_000 // max(len(pal), 1))
    for s in range(0, len(uniq), step):
        d = ((uniq[s : s + step, None, :] - pal[None, :, :]) ** 2).sum(axis=2)
        best[s : s + step] = d.argmin(axis=1)
    return best[inverse].reshape(rgb.shape[:2])


def _adjacency_runs(
    flat: NDArray[Any],
    changes: NDArray[np.int64],
    h: int,
    w: int,
    offsets: NDArray[np.int64],
    k1: int,
    seen: NDArray[np.bool_],
    present: NDArray[np.bool_],
) -> NDArray[np.int64]:  # pragma: no cover - compiled by Numba (see _adjacency_kernel)
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
    codes = [np.int64(0) for _ in range(0)]
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


@functools.cache
def _adjacency_kernel() -> Any:
    """:func:`_adjacency_runs` compiled (serial, so safe in forked workers; cached on disk)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_adjacency_runs)


#: pair tables (k1 * k1 bools) are used up to this many labels; beyond, codes are sorted
_TABLE_LABELS: Final = 1024
#: ``present`` flags are collected up to this label value; beyond, ids come from ``np.unique``
_PRESENT_LABELS: Final = 1 << 22
#: from this label value on, pair codes ``lo * k1 + hi`` could overflow int64
_CODE_LABELS: Final = 1 << 31


def _scan(labels: Labels, radius: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(Pairs (a, b), a < b, of non-zero labels that come within ``radius`` pixels of each other
    along a row or column, checked at offsets 1, 2, 4, ... <= radius; the non-zero labels
    present), in one pass over the runs of the map."""
    lab = np.ascontiguousarray(labels)
    if lab.dtype.kind not in "iu" or lab.dtype.itemsize > 8 or lab.ndim != 2:
        raise RenderError(f"expected an HxW integer label map, got {lab.dtype} {lab.shape}")
    if lab.size and lab.dtype.kind == "i" and int(lab.min()) < 0:
        raise RenderError("label maps must be non-negative")
    if lab.size and int(lab.max()) >= _CODE_LABELS:
        # pair codes lo * k1 + hi would overflow int64: scan the ranks of the labels (same order)
        uniq, inverse = np.unique(lab, return_inverse=True)
        if uniq[0] != 0:
            uniq = np.concatenate([np.zeros(1, uniq.dtype), uniq])
            inverse = inverse + 1
        rank_pairs, rank_ids = _scan(inverse.reshape(lab.shape).astype(np.int64), radius)
        return uniq[rank_pairs].astype(np.int64), uniq[rank_ids].astype(np.int64)
    if lab.dtype == np.uint64:
        lab = lab.astype(np.int64)
    h, w = lab.shape
    k1 = int(lab.max()) + 1 if lab.size else 1
    offsets = np.array(
        [1 << i for i in range(max(radius, 1).bit_length()) if 1 << i <= radius], dtype=np.int64
    )
    offsets = offsets[offsets < max(h, w)]
    seen = np.zeros(k1 * k1 if k1 <= _TABLE_LABELS else 0, dtype=bool)
    present = np.zeros(k1 if k1 <= _PRESENT_LABELS else 0, dtype=bool)
    if lab.size:
        flat = lab.reshape(-1)
        changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        codes = _adjacency_kernel()(flat, changes, h, w, offsets, k1, seen, present)
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


def _adjacency(labels: Labels, radius: int) -> NDArray[np.int64]:
    """Pairs (a, b), a < b, of non-zero labels that come within ``radius`` pixels of each other
    along a row or column (checked at offsets 1, 2, 4, ... <= radius)."""
    return _scan(labels, radius)[0]


@functools.lru_cache(maxsize=8)
def _slot_tables(
    n_total: int, start: int, seed: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Pairwise distances of the instance colours, and the seeded tie-break rank of each slot."""
    p = distinct_palette(n_total, seed)[start:].astype(np.float64)
    dist = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(axis=2))
    order = np.random.default_rng(seed).permutation(len(p))
    rank = np.empty(len(p), dtype=np.int64)
    rank[order] = np.arange(len(p))
    return dist, rank


def _greedy_slots(
    ids: NDArray[np.int64],
    pairs: NDArray[np.int64],
    dist: NDArray[np.float64],
    rank: NDArray[np.int64],
) -> NDArray[np.int64]:  # pragma: no cover - compiled by Numba (see _greedy_kernel)
    """Greedy palette slot of each of the sorted, unique ``ids`` given the touching ``pairs``
    (P x 2; pairs naming an id not in ``ids`` are ignored). Most-connected ids first, ties by
    id; each takes the free slot with the largest score (distance to the nearest slot of a
    coloured neighbour, capped by twice the distance to the nearest slot used so far), ties
    broken by the smallest ``rank``."""
    k = ids.size
    # neighbour lists (CSR) of the nodes 0..k-1 (node i is ids[i])
    a = np.searchsorted(ids, pairs[:, 0])
    b = np.searchsorted(ids, pairs[:, 1])
    degree = np.zeros(k, dtype=np.int64)
    ok = np.zeros(pairs.shape[0], dtype=np.bool_)
    for q in range(pairs.shape[0]):
        if a[q] < k and b[q] < k and ids[a[q]] == pairs[q, 0] and ids[b[q]] == pairs[q, 1]:
            ok[q] = True
            degree[a[q]] += 1
            degree[b[q]] += 1
    nbr_off = np.zeros(k + 1, dtype=np.int64)
    for i in range(k):
        nbr_off[i + 1] = nbr_off[i] + degree[i]
    fill = nbr_off[:-1].copy()
    nbr = np.empty(nbr_off[k], dtype=np.int64)
    for q in range(pairs.shape[0]):
        if ok[q]:
            nbr[fill[a[q]]] = b[q]
            fill[a[q]] += 1
            nbr[fill[b[q]]] = a[q]
            fill[b[q]] += 1
    # visiting order: degree descending, then id ascending (node order is id order)
    order = np.argsort((degree.max() - degree) * k + np.arange(k))
    n_pal = rank.size
    k = order.size
    slot_of = np.full(k, -1, dtype=np.int64)
    free = np.ones(n_pal, dtype=np.bool_)
    used_min = np.full(n_pal, np.inf)
    near = np.empty(max(nbr.size, 1), dtype=np.int64)
    any_used = False
    for i in order:
        n_near = 0
        for q in range(nbr_off[i], nbr_off[i + 1]):
            s = slot_of[nbr[q]]
            if s >= 0:
                near[n_near] = s
                n_near += 1
        best = -1
        best_score = -np.inf
        for c in range(n_pal):
            if free[c]:
                score = np.inf
                for q in range(n_near):
                    score = min(score, dist[c, near[q]])
                if any_used:
                    score = min(score, 2.0 * used_min[c])
            else:
                score = -1.0
            if score > best_score or (score == best_score and rank[c] < rank[best]):
                best, best_score = c, score
        slot_of[i] = best
        free[best] = False
        for c in range(n_pal):
            used_min[c] = min(used_min[c], dist[c, best])
        any_used = True
    return slot_of


@functools.cache
def _greedy_kernel() -> Any:
    """:func:`_greedy_slots` compiled (serial, no fastmath: the slots must not change)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_greedy_slots)


def _greedy_colours(
    ids: NDArray[np.int64],
    pairs: NDArray[np.int64],
    tables: tuple[NDArray[np.float64], NDArray[np.int64]],
) -> dict[int, int]:
    """Assign each id a distinct palette slot: maximise the colour distance to touching ids, then
    (at half weight) to every id of the image; most-connected ids first, ties by id."""
    dist, rank = tables
    n_pal = len(rank)
    if len(ids) > n_pal:
        raise RenderError(
            f"{len(ids)} segments but the palette holds only {n_pal} instance colours"
        )
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return {}
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    slot_of = _greedy_kernel()(ids, pairs, dist, rank)
    return dict(zip(ids.tolist(), slot_of.tolist(), strict=True))


class _Base:
    name: str = ""
    task: TaskKind = TaskKind.SEGMENTATION
    version: int = 1

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return {}

    def spec(self) -> RendererSpec:
        """The renderer and its parameters, for the store manifest."""
        return RendererSpec(
            name=self.name, task=self.task, version=self.version, params=self._params()
        )


class _Paletted(_Base):
    """A renderer drawing from the seeded palette of class then instance colours."""

    def __init__(
        self,
        seed: int = 0,
        *,
        num_classes: int = DEFAULT_NUM_CLASSES,
        max_instances: int = DEFAULT_MAX_INSTANCES,
    ) -> None:
        self.seed = seed
        self.num_classes = num_classes
        self.max_instances = max_instances

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return {
            "seed": self.seed,
            "num_classes": self.num_classes,
            "max_instances": self.max_instances,
        }


class InstanceRenderer(_Paletted):
    """Instance id map (0 = background, 1..K instances) -> each instance its own colour."""

    name = "instance"

    def __init__(
        self,
        seed: int = 0,
        *,
        num_classes: int = DEFAULT_NUM_CLASSES,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        neighbour_radius: int = 8,
    ) -> None:
        super().__init__(seed, num_classes=num_classes, max_instances=max_instances)
        self.neighbour_radius = neighbour_radius

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return {**super()._params(), "neighbour_radius": self.neighbour_radius}

    @property
    def palette(self) -> RGB:
        """The instance colours (``max_instances`` x 3)."""
        return distinct_palette(self.num_classes + self.max_instances, self.seed)[
            self.num_classes :
        ]

    def assign(self, labels: Labels) -> NDArray[np.int32]:
        """Palette slot of each id 1..max(labels) (-1 for ids absent from the map)."""
        labels = _check_labels(labels)
        k = int(labels.max()) if labels.size else 0
        out = np.full(k, -1, dtype=np.int32)
        pairs, ids = _scan(labels, self.neighbour_radius)
        tables = _slot_tables(self.num_classes + self.max_instances, self.num_classes, self.seed)
        slots = _greedy_colours(ids, pairs, tables)
        for i, s in slots.items():
            out[i - 1] = s
        return out

    def colours(self, slots: NDArray[np.integer[Any]]) -> RGB:
        """Colour of each id 0..len(slots) under a slot table (0 and unassigned ids: black)."""
        slots = np.asarray(slots)
        lut = np.zeros((len(slots) + 1, 3), dtype=np.uint8)
        used = slots >= 0
        lut[1:][used] = self.palette[slots[used]]
        return lut

    def render(self, labels: Labels, slots: NDArray[np.int32] | None = None) -> RGB:
        """Colour each instance with its assigned palette colour, background black; ``slots``
        (from :meth:`assign`, e.g. stored at conversion) skips the assignment."""
        labels = _check_labels(labels)
        if slots is None:
            slots = self.assign(labels)
        elif labels.size and int(labels.max()) > len(slots):
            raise RenderError(f"label {int(labels.max())} has no slot ({len(slots)} given)")
        return _gather(self.colours(slots), labels)

    def inverse(self, rgb: RGB, slots: NDArray[np.int32] | None = None) -> NDArray[np.int32]:
        """Decode to a label map: with ``slots`` (from :meth:`assign`) the original ids, else slot+1."""
        if slots is None:
            colours = np.concatenate([np.zeros((1, 3), np.uint8), self.palette])
            return nearest_colour(rgb, colours)
        used = np.flatnonzero(slots >= 0)
        colours = np.concatenate([np.zeros((1, 3), np.uint8), self.palette[slots[used]]])
        ids = np.concatenate([[0], used + 1]).astype(np.int32)
        return ids[nearest_colour(rgb, colours)]


class SemanticRenderer(_Paletted):
    """Class id map (0 = unlabelled, 1..num_classes-1) -> a fixed colour per class."""

    name = "semantic"

    @property
    def palette(self) -> RGB:
        """Colour of each class id (``num_classes`` x 3); row 0 (unlabelled) is black."""
        pal = distinct_palette(self.num_classes + self.max_instances, self.seed)[: self.num_classes]
        out = pal.copy()
        out[0] = 0
        return out

    def render(self, labels: Labels) -> RGB:
        """Colour each pixel with its class colour."""
        labels = _check_labels(labels)
        if labels.size and int(labels.max()) >= self.num_classes:
            raise RenderError(f"class id {int(labels.max())} >= num_classes {self.num_classes}")
        return _gather(self.palette, labels)

    def inverse(self, rgb: RGB) -> NDArray[np.int32]:
        """Class id of the nearest class colour per pixel."""
        return nearest_colour(rgb, self.palette)


class PanopticRenderer(_Base):
    """Segment id map + per-segment category and thing flag -> stuff in its class colour,
    each thing segment in its own instance colour (disjoint from all class colours)."""

    name = "panoptic"

    def __init__(
        self,
        seed: int = 0,
        *,
        num_classes: int = DEFAULT_NUM_CLASSES,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        neighbour_radius: int = 8,
    ) -> None:
        self.seed = seed
        self.semantic = SemanticRenderer(seed, num_classes=num_classes, max_instances=max_instances)
        self.instance = InstanceRenderer(
            seed,
            num_classes=num_classes,
            max_instances=max_instances,
            neighbour_radius=neighbour_radius,
        )

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return self.instance._params()

    def _luts(
        self, labels: Labels, categories: NDArray[Any], isthing: NDArray[Any]
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        labels = _check_labels(labels)
        cats = np.concatenate([[0], np.asarray(categories, dtype=np.int64)])
        thing = np.concatenate([[False], np.asarray(isthing, dtype=bool)])
        if labels.size and int(labels.max()) >= len(cats):
            raise RenderError(
                f"segment id {int(labels.max())} has no category ({len(cats) - 1} segments given)"
            )
        return cats, thing

    def assign(
        self, labels: Labels, categories: NDArray[Any], isthing: NDArray[Any]
    ) -> NDArray[np.int32]:
        """Instance palette slot of each thing segment (-1 for stuff and absent segments)."""
        _, thing = self._luts(labels, categories, isthing)
        things_only = np.where(thing[labels], labels, 0)
        slots = self.instance.assign(things_only)
        out = np.full(len(thing) - 1, -1, dtype=np.int32)
        out[: len(slots)] = slots
        return out

    def render(
        self,
        labels: Labels,
        categories: NDArray[Any],
        isthing: NDArray[Any],
        slots: NDArray[np.int32] | None = None,
    ) -> RGB:
        """Render a panoptic segment map."""
        self._luts(labels, categories, isthing)  # checks the map against the segments
        if slots is None:
            slots = self.assign(labels, categories, isthing)
        return _gather(self.colours(categories, isthing, slots), labels)

    def colours(
        self, categories: NDArray[Any], isthing: NDArray[Any], slots: NDArray[np.integer[Any]]
    ) -> RGB:
        """Colour of each segment id 0..len(categories) (0: black)."""
        cats = np.concatenate([[0], np.asarray(categories, dtype=np.int64)])
        thing = np.concatenate([[False], np.asarray(isthing, dtype=bool)])
        slots = np.asarray(slots)
        if len(slots) != len(cats) - 1:
            raise RenderError(f"{len(slots)} slots for {len(cats) - 1} segments")
        lut: RGB = self.semantic.palette[cats]
        seg_thing = np.flatnonzero(thing[1:] & (slots >= 0))
        lut[seg_thing + 1] = self.instance.palette[slots[seg_thing]]
        lut[0] = 0
        return lut

    def inverse(
        self,
        rgb: RGB,
        categories: NDArray[Any] | None = None,
        isthing: NDArray[Any] | None = None,
        slots: NDArray[np.int32] | None = None,
    ) -> NDArray[np.int32]:
        """Decode to segment ids when the segments are given, else to palette codes
        (0 black, c for class colour c, num_classes + slot + 1 for instance colours)."""
        sem = self.semantic.palette
        nc = len(sem)
        if categories is None or isthing is None or slots is None:
            return nearest_colour(rgb, np.concatenate([sem, self.instance.palette]))
        cats = np.asarray(categories, dtype=np.int64)
        thing = np.asarray(isthing, dtype=bool)
        colours = [np.zeros((1, 3), np.uint8)]
        ids = [0]
        for k in range(len(cats)):
            if thing[k] and slots[k] >= 0:
                colours.append(self.instance.palette[slots[k]][None])
            elif not thing[k] and 0 < cats[k] < nc:
                colours.append(sem[cats[k]][None])
            else:
                continue
            ids.append(k + 1)
        return np.asarray(ids, dtype=np.int32)[nearest_colour(rgb, np.concatenate(colours))]


_EDGE_LUT: Final = np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8)


class EdgeRenderer(_Base):
    """Canny edges of the image (needs the ``edge`` extra: opencv) -> white edges on black."""

    name = "edge"
    task = TaskKind.EDGE

    def __init__(
        self, low: int = 100, high: int = 200, aperture: int = 3, l2gradient: bool = False
    ):
        if not 0 <= low <= high:
            raise RenderError(f"Canny thresholds must satisfy 0 <= low <= high, got {low}, {high}")
        self.low, self.high, self.aperture, self.l2gradient = low, high, aperture, l2gradient

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return {
            "low": self.low,
            "high": self.high,
            "aperture": self.aperture,
            "l2gradient": self.l2gradient,
        }

    def compute(self, image: RGB) -> NDArray[np.uint8]:
        """Edge map (1 = edge) of an RGB image."""
        try:
            import cv2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "edge targets need OpenCV: pip install 'sgt-data[edge]' (opencv-python-headless)"
            ) from exc
        gray = cv2.cvtColor(np.ascontiguousarray(_check_rgb(image)), cv2.COLOR_RGB2GRAY)
        edges = cv2.Canny(
            gray, self.low, self.high, apertureSize=self.aperture, L2gradient=self.l2gradient
        )
        return (np.asarray(edges) > 0).astype(np.uint8)

    def render(self, edges: Labels) -> RGB:
        """White (255) where ``edges`` is non-zero, black elsewhere."""
        e = _check_labels(edges) != 0
        return _gather(_EDGE_LUT, e.view(np.uint8))

    def inverse(self, rgb: RGB) -> NDArray[np.uint8]:
        """1 where the pixel is nearer white than black."""
        white: NDArray[np.bool_] = _check_rgb(rgb).astype(np.uint16).sum(axis=2) >= 383
        return white.astype(np.uint8)


#: number of depth levels of the sgt-rainbow colour map (level 0 = no depth, black)
DEPTH_LEVELS: Final = 6 * 255 + 1
_DEPTH_PATH: Final = np.array(
    [
        [0, 0, 255],
        [0, 255, 255],
        [0, 255, 0],
        [255, 255, 0],
        [255, 0, 0],
        [255, 0, 255],
        [255, 255, 255],
    ],
    dtype=np.int32,
)


def _depth_lut() -> RGB:
    pts = [_DEPTH_PATH[0]]
    for a, b in itertools.pairwise(_DEPTH_PATH):
        step = np.sign(b - a)
        pts.extend(a + step * t for t in range(1, 256))
    lut = np.zeros((DEPTH_LEVELS + 1, 3), dtype=np.uint8)
    lut[1:] = np.asarray(pts, dtype=np.uint8)
    return lut


_DEPTH_LUT: Final = _depth_lut()


class DepthRenderer(_Base):
    """Depth map (float, metres or relative) -> the sgt-rainbow colour map; invalid depth black.

    ``quantise`` gives the stored label map (uint16 level 0..1531); ``inverse`` decodes a colour map
    to levels and ``levels_to_depth`` back to depth values (up to the quantisation step).
    """

    name = "depth"
    task = TaskKind.DEPTH

    def __init__(self, d_min: float = 0.0, d_max: float = 10.0, *, per_image: bool = False) -> None:
        if not d_max > d_min:
            raise RenderError(f"depth range must satisfy d_min < d_max, got {d_min}, {d_max}")
        self.d_min, self.d_max, self.per_image = float(d_min), float(d_max), per_image

    def _params(self) -> dict[str, str | int | float | bool | list[int] | list[float]]:
        return {
            "d_min": self.d_min,
            "d_max": self.d_max,
            "per_image": self.per_image,
            "levels": DEPTH_LEVELS,
            "colormap": "sgt-rainbow",
        }

    def range_for(self, depth: NDArray[np.floating[Any]]) -> tuple[float, float]:
        """The depth range used for ``depth``: fixed, or the image's finite min/max if ``per_image``."""
        if not self.per_image:
            return self.d_min, self.d_max
        valid = depth[np.isfinite(depth) & (depth > 0)]
        if valid.size == 0:
            return self.d_min, self.d_max
        lo, hi = float(valid.min()), float(valid.max())
        return (lo, hi) if hi > lo else (lo, lo + 1.0)

    def quantise(
        self, depth: NDArray[np.floating[Any]], d_range: tuple[float, float] | None = None
    ) -> NDArray[np.uint16]:
        """Depth levels 1..1531 (0 where depth is missing: non-finite or <= 0)."""
        lo, hi = d_range if d_range is not None else self.range_for(depth)
        d = np.asarray(depth, dtype=np.float64)
        valid = np.isfinite(d) & (d > 0)
        t = np.clip((np.where(valid, d, lo) - lo) / (hi - lo), 0.0, 1.0)
        return np.where(valid, 1 + np.rint(t * (DEPTH_LEVELS - 1)), 0).astype(np.uint16)

    def levels_to_depth(
        self, levels: Labels, d_range: tuple[float, float] | None = None
    ) -> NDArray[np.float32]:
        """Depth values of levels (NaN for level 0)."""
        lo, hi = d_range if d_range is not None else (self.d_min, self.d_max)
        lv = np.asarray(levels, dtype=np.float64)
        d = lo + (lv - 1) / (DEPTH_LEVELS - 1) * (hi - lo)
        return np.where(lv > 0, d, np.nan).astype(np.float32)

    def render(self, levels: Labels) -> RGB:
        """Colour-map depth levels."""
        levels = _check_labels(levels)
        if levels.size and int(levels.max()) > DEPTH_LEVELS:
            raise RenderError(f"depth level {int(levels.max())} > {DEPTH_LEVELS}")
        return _gather(_DEPTH_LUT, levels)

    def inverse(self, rgb: RGB) -> NDArray[np.uint16]:
        """Depth level of each pixel: nearest point on the colour path (0 if nearest to black)."""
        p = _check_rgb(rgb).astype(np.int32)
        best_d = (p**2).sum(axis=2)  # distance to black
        best_l = np.zeros(p.shape[:2], dtype=np.int32)
        for s in range(len(_DEPTH_PATH) - 1):
            a, b = _DEPTH_PATH[s], _DEPTH_PATH[s + 1]
            c = int(np.flatnonzero(b != a)[0])
            sign = int(np.sign(b[c] - a[c]))
            t = np.clip((p[..., c] - a[c]) * sign, 0, 255)
            q = np.broadcast_to(a, p.shape).copy()
            q[..., c] = a[c] + sign * t
            d = ((p - q) ** 2).sum(axis=2)
            better = d < best_d
            best_d = np.where(better, d, best_d)
            best_l = np.where(better, 1 + 255 * s + t, best_l)
        return best_l.astype(np.uint16)


class ReconstructionRenderer(_Base):
    """The image itself (the reconstruction proxy task)."""

    name = "reconstruction"
    task = TaskKind.RECONSTRUCTION

    def render(self, image: RGB) -> RGB:
        """Return the image."""
        return _check_rgb(image)

    def inverse(self, rgb: RGB) -> RGB:
        """Return the image."""
        return _check_rgb(rgb)


def depth_from_model(image: RGB, model_path: str) -> NDArray[np.float32]:
    """Relative depth of an image from a ``transformers`` depth-estimation model stored at a local
    path (needs the ``depth`` extra). Larger values are further away."""
    try:
        from transformers import pipeline
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("model depth needs transformers: pip install 'sgt-data[depth]'") from exc
    from PIL import Image

    pipe = _depth_pipeline(model_path, pipeline)
    result = pipe(Image.fromarray(_check_rgb(image)))
    pred = np.asarray(result["predicted_depth"], dtype=np.float32).squeeze()
    if pred.shape != image.shape[:2]:
        pred = np.asarray(
            Image.fromarray(pred).resize(
                (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
    # depth-estimation models (DPT, Depth Anything) predict inverse depth (disparity)
    with np.errstate(divide="ignore"):
        return np.where(pred > 0, 1.0 / pred, np.nan).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _depth_pipeline(model_path: str, factory: Any) -> Any:
    check_depth_model(model_path)
    _log.info("loading depth model from %s", model_path)
    try:
        return factory("depth-estimation", model=model_path, device="cpu")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise RenderError(f"depth model {model_path}: cannot be loaded: {exc}") from exc


def check_depth_model(model_path: str) -> None:
    """Raise a :class:`RenderError` naming ``model_path`` unless it is a local directory holding a
    saved ``transformers`` depth-estimation model (a hub id would mean a download; a model saved
    for another task would load with a random depth head)."""
    import json
    from pathlib import Path

    path = Path(model_path)
    if not path.is_dir():
        raise RenderError(
            f"depth model {model_path}: no such directory (a local transformers "
            "depth-estimation model, saved with save_pretrained, is needed)"
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise RenderError(
            f"depth model {model_path}: no readable config.json, not a saved transformers model"
        ) from exc
    except ValueError as exc:
        raise RenderError(f"depth model {model_path}: config.json is not valid JSON") from exc
    if not isinstance(config, dict):
        raise RenderError(f"depth model {model_path}: config.json is not a JSON object")
    archs = config.get("architectures") or []
    if archs:
        is_depth = any(str(a).endswith("ForDepthEstimation") for a in archs)
    else:
        from transformers.models.auto import modeling_auto

        is_depth = (
            config.get("model_type") in modeling_auto.MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES
        )
    if not is_depth:
        what = ", ".join(map(str, archs)) or repr(config.get("model_type"))
        raise RenderError(f"depth model {model_path}: {what} is not a depth-estimation model")


_RENDERERS: Final[dict[str, type[_Base]]] = {
    r.name: r
    for r in (
        InstanceRenderer,
        SemanticRenderer,
        PanopticRenderer,
        EdgeRenderer,
        DepthRenderer,
        ReconstructionRenderer,
    )
}


def renderer_from_spec(spec: RendererSpec) -> Any:
    """Rebuild a renderer from its manifest record."""
    cls = _RENDERERS.get(spec.name)
    if cls is None:
        raise RenderError(f"unknown renderer {spec.name!r}; known: {sorted(_RENDERERS)}")
    if spec.version != cls.version:
        raise RenderError(
            f"renderer {spec.name!r} version {spec.version} != supported {cls.version}"
        )
    params: dict[str, Any] = {
        k: v for k, v in spec.params.items() if k not in ("levels", "colormap")
    }
    seed = params.pop("seed", None)
    factory: Any = cls
    return factory(seed, **params) if seed is not None else factory(**params)
