"""Target renderers: every renderer round-trips through its inverse on real VOC masks; palettes are
deterministic and keep neighbouring instances apart; perturbed maps still decode."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from sgt_data.convert.example import voc_example
from sgt_data.errors import RenderError
from sgt_data.render import (
    DEPTH_LEVELS,
    DepthRenderer,
    EdgeRenderer,
    InstanceRenderer,
    PanopticRenderer,
    ReconstructionRenderer,
    SemanticRenderer,
    distinct_palette,
    renderer_from_spec,
)


@pytest.fixture(scope="module")
def voc() -> tuple[NDArray[np.uint8], NDArray[np.uint16], NDArray[np.int64]]:
    rgb, masks, classes = voc_example()
    labels = np.zeros(masks.shape[1:], np.uint16)
    for k, m in enumerate(masks):
        labels[m] = k + 1
    return rgb, labels, classes


def _noisy(rgb: NDArray[np.uint8], amp: int, seed: int = 0) -> NDArray[np.uint8]:
    noise = np.random.default_rng(seed).integers(-amp, amp + 1, rgb.shape)
    return np.clip(rgb.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def test_instance_round_trip_on_voc(
    voc: tuple[NDArray[np.uint8], NDArray[np.uint16], NDArray[np.int64]],
) -> None:
    _, labels, _ = voc
    r = InstanceRenderer(seed=3)
    slots = r.assign(labels)
    rgb = r.render(labels, slots)
    assert (rgb[labels == 0] == 0).all(), "background must be black"
    assert len({tuple(c) for c in r.palette[slots]}) == 19, "each instance its own colour"
    np.testing.assert_array_equal(r.inverse(rgb, slots), labels)
    # without the slot table the inverse still finds the same segments (ids = slot + 1)
    by_slot = np.concatenate([[0], slots + 1])[labels]
    np.testing.assert_array_equal(r.inverse(rgb), by_slot)
    # generated maps are never exact: +-12 per channel noise still decodes every pixel
    np.testing.assert_array_equal(r.inverse(_noisy(rgb, 12), slots), labels)


def test_instance_colours_deterministic_per_seed_and_neighbours_far_apart(
    voc: tuple[NDArray[np.uint8], NDArray[np.uint16], NDArray[np.int64]],
) -> None:
    _, labels, _ = voc
    a = InstanceRenderer(seed=0).assign(labels)
    np.testing.assert_array_equal(a, InstanceRenderer(seed=0).assign(labels))
    assert not np.array_equal(a, InstanceRenderer(seed=1).assign(labels))
    pal = InstanceRenderer(seed=0).palette.astype(np.float64)
    # neighbours in the VOC photo (within 8 px): their colours are far apart in RGB
    from sgt_data.render import _adjacency

    pairs = _adjacency(labels, 8)
    assert len(pairs) >= 10
    d = np.linalg.norm(pal[a[pairs[:, 0] - 1]] - pal[a[pairs[:, 1] - 1]], axis=1)
    typical = np.median(np.linalg.norm(pal[:, None] - pal[None], axis=2))
    assert d.min() > 0.5 * typical, (d.min(), typical)


def test_palette_is_spread_and_avoids_black() -> None:
    pal = distinct_palette(512, seed=0).astype(np.float64)
    assert len({tuple(c) for c in pal}) == 512
    assert np.linalg.norm(pal, axis=1).min() >= 60
    d = np.linalg.norm(pal[:, None] - pal[None], axis=2) + np.eye(512) * 1e9
    assert d.min() > 20
    np.testing.assert_array_equal(distinct_palette(512, 0), distinct_palette(512, 0))


def test_semantic_round_trip(
    voc: tuple[NDArray[np.uint8], NDArray[np.uint16], NDArray[np.int64]],
) -> None:
    _, labels, classes = voc
    sem = np.concatenate([[0], classes])[labels].astype(np.uint16)
    r = SemanticRenderer(seed=0)
    rgb = r.render(sem)
    np.testing.assert_array_equal(r.inverse(rgb), sem)
    np.testing.assert_array_equal(r.inverse(_noisy(rgb, 8)), sem)
    # a class keeps its colour across images
    other = np.full((4, 4), 15, np.uint16)
    assert (r.render(other)[0, 0] == rgb[sem == 15][0]).all()
    every = np.arange(256, dtype=np.uint16).reshape(16, 16)
    np.testing.assert_array_equal(r.inverse(r.render(every)), every)
    with pytest.raises(RenderError, match="num_classes"):
        r.render(np.full((2, 2), 300, np.uint16))


def test_panoptic_round_trip(
    voc: tuple[NDArray[np.uint8], NDArray[np.uint16], NDArray[np.int64]],
) -> None:
    _, labels, classes = voc
    # make the two dining tables (class 11) "stuff" merged into one segment, the rest things
    seg = labels.copy()
    cats = list(classes)
    thing = [c != 11 for c in cats]
    r = PanopticRenderer(seed=0)
    stuff_ids = [k + 1 for k in range(len(cats)) if not thing[k]]
    for sid in stuff_ids[1:]:
        seg[seg == sid] = stuff_ids[0]
    slots = r.assign(seg, cats, thing)
    rgb = r.render(seg, cats, thing, slots)
    dec = r.inverse(rgb, cats, thing, slots)
    np.testing.assert_array_equal(dec, seg)
    # stuff is drawn in its class colour (the semantic renderer's)
    sem_colour = SemanticRenderer(seed=0).palette[11]
    assert (rgb[seg == stuff_ids[0]] == sem_colour).all()


def test_edge_round_trip(
    voc: tuple[NDArray[np.uint8], NDArray[np.uint16], NDArray[np.int64]],
) -> None:
    rgb, _, _ = voc
    r = EdgeRenderer(low=50, high=150)
    edges = r.compute(rgb)
    assert 0.01 < edges.mean() < 0.5
    target = r.render(edges)
    np.testing.assert_array_equal(r.inverse(target), edges)
    np.testing.assert_array_equal(r.inverse(_noisy(target, 60)), edges)
    assert r.spec().params == {"low": 50, "high": 150, "aperture": 3, "l2gradient": False}
    with pytest.raises(RenderError, match="thresholds"):
        EdgeRenderer(low=200, high=100)


def test_depth_round_trip_up_to_quantisation() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 9.5, (60, 80)).astype(np.float32)
    depth[:3] = np.nan  # missing depth renders black and decodes to NaN
    r = DepthRenderer(0.0, 10.0)
    levels = r.quantise(depth)
    rgb = r.render(levels)
    assert (rgb[:3] == 0).all()
    back = r.inverse(rgb)
    np.testing.assert_array_equal(back, levels)
    values = r.levels_to_depth(back)
    step = 10.0 / (DEPTH_LEVELS - 1)
    assert np.nanmax(np.abs(values[3:] - depth[3:])) <= step / 2 + 1e-6
    assert np.isnan(values[:3]).all()
    # every level has its own colour, and slightly perturbed colours decode to within a few levels
    every = np.arange(DEPTH_LEVELS + 1, dtype=np.uint16)[None]
    np.testing.assert_array_equal(r.inverse(r.render(every)), every)
    near = r.inverse(_noisy(r.render(every), 3))
    assert np.abs(near[0, 1:].astype(int) - every[0, 1:]).max() <= 9  # 3 channels x 3


def test_reconstruction_is_identity(
    voc: tuple[NDArray[np.uint8], NDArray[np.uint16], NDArray[np.int64]],
) -> None:
    rgb, _, _ = voc
    r = ReconstructionRenderer()
    np.testing.assert_array_equal(r.inverse(r.render(rgb)), rgb)


@pytest.mark.parametrize(
    "renderer",
    [
        InstanceRenderer(seed=5, max_instances=64),
        SemanticRenderer(seed=2),
        PanopticRenderer(seed=1),
        EdgeRenderer(10, 20),
        DepthRenderer(1.0, 5.0, per_image=True),
        ReconstructionRenderer(),
    ],
)
def test_spec_rebuilds_the_same_renderer(renderer: object) -> None:
    spec = renderer.spec()  # type: ignore[attr-defined]
    again = renderer_from_spec(spec)
    assert again.spec() == spec


def test_bad_inputs_raise_render_error() -> None:
    r = InstanceRenderer(max_instances=4)
    with pytest.raises(RenderError, match="palette holds only 4"):
        r.assign(np.arange(6, dtype=np.uint16).reshape(2, 3))
    with pytest.raises(RenderError, match="HxWx3 uint8"):
        r.inverse(np.zeros((4, 4), np.uint8))
    with pytest.raises(RenderError, match="integer label map"):
        r.render(np.zeros((4, 4), np.float32))


def _adjacency_reference(labels: NDArray[Any], radius: int) -> set[tuple[int, int]]:
    """Pixel by pixel: pairs of different non-zero labels at offsets 1, 2, 4, ... <= radius."""
    h, w = labels.shape
    out = set()
    d = 1
    while d <= radius:
        for y in range(h):
            for x in range(w):
                a = int(labels[y, x])
                for y2, x2 in ((y, x + d), (y + d, x)):
                    if y2 < h and x2 < w:
                        b = int(labels[y2, x2])
                        if a and b and a != b:
                            out.add((min(a, b), max(a, b)))
        d *= 2
    return out


@pytest.mark.parametrize("max_id", [3, 40, 3000])  # 3000: the sorted path for large ids
def test_adjacency_matches_a_pixel_by_pixel_reference(max_id: int) -> None:
    from sgt_data.render import _adjacency

    rng = np.random.default_rng(max_id)
    for dtype in (np.uint16, np.int64, np.uint32):
        for _ in range(6):
            h, w = (int(v) for v in rng.integers(1, 24, 2))
            blocks = rng.integers(0, max_id, (h // 3 + 1, w // 3 + 1))
            labels = np.kron(blocks, np.ones((3, 3), np.int64))[:h, :w].astype(dtype)
            for radius in (0, 1, 3, 8):
                got = {tuple(p) for p in _adjacency(labels, radius).tolist()}
                assert got == _adjacency_reference(labels, radius), (dtype, h, w, radius)
