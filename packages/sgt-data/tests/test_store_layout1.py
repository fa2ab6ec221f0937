"""Stores written by sgt-data 0.3 (layout 1: whole-sample-bytes digests, label frames always of
the field's dtype) still open, read and verify. ``data/store-layout1.tar.gz`` was written by the
0.3.0 code (commit caf4eb1) from ``write_voc_coco(n_images=3, size=(60, 80))`` with
``ConvertOptions(name="old", edge=True)`` and batches of 2."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion
from sgt_data.convert.example import write_voc_coco
from sgt_data.schema import TaskKind
from sgt_data.store import SampleStore, verify_store

_TARBALL = Path(__file__).parent / "data" / "store-layout1.tar.gz"


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path]:
    with tarfile.open(_TARBALL) as t:
        t.extractall(tmp_path, filter="data")
    old = tmp_path / "store-layout1"
    ann, images = write_voc_coco(tmp_path / "src", n_images=3, size=(60, 80))
    new = tmp_path / "new"
    conv = CocoInstancesConverter(ann, images, ConvertOptions(name="old", edge=True))
    run_conversion(conv, new, batch_size=2)
    return old, new


def test_a_layout1_store_reads_as_the_same_samples(stores: tuple[Path, Path]) -> None:
    old_path, new_path = stores
    layout = json.loads((old_path / "zarr.json").read_text())["attributes"]["sgt"]
    assert (layout["layout_version"], layout["digest"]) == (1, "samples")
    old, new = SampleStore.open(old_path), SampleStore.open(new_path)
    assert old.manifest.created_by == "sgt-data 0.3.0"
    assert len(old) == len(new) == 3
    for i in range(3):
        assert old.sample_id(i) == new.sample_id(i)
        assert old.tasks(i) == new.tasks(i)
        assert old.read_metadata(i) == new.read_metadata(i)
        np.testing.assert_array_equal(old.read_image(i), new.read_image(i))
        for name in ("segments", "edge"):
            a, b = old.read_labels(i, name), new.read_labels(i, name)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        for task, variant in sorted(old.tasks(i), key=str):
            np.testing.assert_array_equal(
                old.read_target(i, task, variant), new.read_target(i, task, variant)
            )
    assert old.read_labels(0, "segments").dtype == np.uint16
    # the digests differ by definition (layout 2 chains per-sample sha256s)
    assert old.manifest.arrays["image"] != new.manifest.arrays["image"]


def test_a_layout1_store_verifies_and_damage_is_found(stores: tuple[Path, Path]) -> None:
    old_path, _ = stores
    assert verify_store(old_path) == []
    store = SampleStore.open(old_path)
    # flip one byte inside sample 1's segment frame, in its shard file (uncompressed chunks)
    cols = {c: k for k, c in enumerate(store._columns)}
    off = int(store._index[1, cols["labels/segments.offset"]])
    shard_elems = 1 << 26  # 1 MiB chunks x 64
    shard = old_path / "labels" / "segments" / "c" / str(off // shard_elems)
    raw = bytearray(shard.read_bytes())
    raw[off % shard_elems + 5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    problems = verify_store(old_path)
    assert any("labels/segments" in p and "sha256" in p for p in problems), problems
    assert any(p.startswith("sample 1") for p in problems), problems
    assert TaskKind.SEGMENTATION in store.manifest.task_counts
