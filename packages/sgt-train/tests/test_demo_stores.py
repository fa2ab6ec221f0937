"""``build_stores(..., edge=True)`` also converts the train split's Canny edge targets: one per
train image, equal to sgt-data's edge renderer applied to that image; without ``edge`` no edge
store is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sgt_data.render import EdgeRenderer
from sgt_data.schema import TaskKind
from sgt_data.store import SampleStore
from sgt_train.demo.stores import build_stores

pytest.importorskip("cv2")


def test_edge_store_holds_the_edge_renderer_of_every_train_image(tmp_path: Path) -> None:
    built = build_stores(tmp_path / "with", num_train=6, num_eval=2, seed=1, edge=True)
    assert built.edge == tmp_path / "with" / "stores" / "scenes-train-edge"
    store = SampleStore.open(built.edge)
    assert store.manifest.task_counts.get(TaskKind.EDGE, 0) == 6
    assert built.manifests["edge"].num_samples == 6
    indices = store.indices_with(TaskKind.EDGE)
    assert len(indices) == 6
    renderer = EdgeRenderer()
    drawn = 0
    for i in indices:
        image = store.read_image(int(i))
        edges = store.read_label_map(int(i), TaskKind.EDGE)
        np.testing.assert_array_equal(edges, renderer.compute(image))
        drawn += int(edges.sum())
    assert drawn > 0  # the scenes' shapes have edges
    # the edge store sees the same train images as the segmentation store
    scenes = SampleStore.open(built.scenes)
    seg_images = sorted(scenes.read_image(i).tobytes() for i in range(scenes.manifest.num_samples))
    edge_images = sorted(store.read_image(int(i)).tobytes() for i in indices)
    assert edge_images == seg_images


def test_no_edge_store_without_edge(tmp_path: Path) -> None:
    built = build_stores(tmp_path / "without", num_train=4, num_eval=2, seed=1)
    assert built.edge is None
    assert "edge" not in built.manifests
    assert not (tmp_path / "without" / "stores" / "scenes-train-edge").exists()
