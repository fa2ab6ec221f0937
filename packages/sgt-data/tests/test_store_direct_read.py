"""Direct shard reads give exactly what zarr gives: for every array of several stores (scene
world, COCO fixture, a layout-1 store, fields of other dtypes, zstd levels, chunk and shard
sizes, samples crossing chunks and shards), whole arrays, every sample's range and random
slices; an array in another encoding falls back to zarr; damage is a one-line error naming the
shard file."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from sgt_data._shard_reader import (
    DirectArray,
    LocalSource,
    ZarrArray,
    open_array,
    shard_layout_from_metadata,
)
from sgt_data._shards import ShardLayout
from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion
from sgt_data.convert.example import write_voc_coco
from sgt_data.errors import StoreError
from sgt_data.schema import TaskKind
from sgt_data.store import FieldSpec, SampleRecord, SampleStore, StoreWriter, label_field

_LAYOUT1 = Path(__file__).parent / "data" / "store-layout1.tar.gz"


def _coco(root: Path, *, n: int, size: tuple[int, int], batch: int, edge: bool) -> Path:
    ann, images = write_voc_coco(root / "src", n_images=n, size=size)
    out = root / "store"
    run_conversion(
        CocoInstancesConverter(ann, images, ConvertOptions(name="coco", edge=edge)),
        out,
        batch_size=batch,
    )
    return out


def _scene_world(root: Path) -> Path:
    from sgt_data.scenes import SceneConfig, write_world

    config = SceneConfig(height=96, width=112, image_format="png", max_objects=5)
    world = write_world(root / "world", num_train=7, num_eval=0, config=config)
    out = root / "store"
    conv = CocoInstancesConverter(
        world.train.instances, world.train.images, ConvertOptions(name="world")
    )
    run_conversion(conv, out, batch_size=3)
    return out


def _odd_fields(root: Path) -> Path:
    """A store written by ``StoreWriter`` with fields of other dtypes, zstd levels and small
    chunks and shards, so that samples cross chunk and shard boundaries; some samples lack a
    field."""
    fields = [
        FieldSpec("labels/raw16", "uint16", chunk=1000, zstd_level=3, chunks_per_shard=4),
        FieldSpec("labels/flat8", "uint8", chunk=700, zstd_level=0, chunks_per_shard=3),
        FieldSpec("labels/f32", "float32", chunk=333, zstd_level=1, chunks_per_shard=2),
        label_field("labels/segments", "uint16"),
    ]
    out = root / "store"
    writer = StoreWriter.open(out, name="odd", fields=fields, batch_size=3, fingerprint={"t": 1})
    rng = np.random.default_rng(7)
    records = []
    for i in range(11):
        h, w = int(rng.integers(5, 60)), int(rng.integers(5, 60))
        arrays = {
            "image": rng.integers(0, 256, size=int(rng.integers(10, 5000)), dtype=np.uint8),
            "labels/raw16": rng.integers(0, 60000, size=h * w, dtype=np.uint16),
            "labels/f32": rng.standard_normal(h * w).astype(np.float32),
            "labels/segments": rng.integers(0, 300, size=(h, w)).astype(np.uint16),
        }
        if i % 3:  # some samples have no flat8 field
            arrays["labels/flat8"] = rng.integers(0, 256, size=h * w * 2, dtype=np.uint8)
        tasks = frozenset({(TaskKind.RECONSTRUCTION, None)})
        records.append(SampleRecord(f"s{i}", h, w, tasks, arrays, {"n": i}))
    for lo in range(0, len(records), 3):
        writer.write_batch(records[lo : lo + 3], lo + 3)
    writer.finish(created_by="test", sources=(), renderers=(), palette_seed=0)
    return out


def _layout1(root: Path) -> Path:
    with tarfile.open(_LAYOUT1) as t:
        t.extractall(root, filter="data")
    return root / "store-layout1"


_BUILDERS = {
    "coco-batch2-edge": lambda r: _coco(r, n=9, size=(150, 200), batch=2, edge=True),
    "coco-batch5": lambda r: _coco(r, n=6, size=(90, 120), batch=5, edge=False),
    "scene-world": _scene_world,
    "odd-fields": _odd_fields,
    "layout1": _layout1,
}


@pytest.fixture(scope="module", params=sorted(_BUILDERS))
def store_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(_BUILDERS[request.param](tmp_path_factory.mktemp(request.param)))


def _array_names(root: Path) -> list[str]:
    layout = json.loads((root / "zarr.json").read_text())["attributes"]["sgt"]
    return ["index", *[f["path"] for f in layout["fields"]]]


def test_every_array_reads_as_zarr_reads_it(store_path: Path) -> None:
    source = LocalSource(store_path)
    store = SampleStore.open(store_path)
    rng = np.random.default_rng(0)
    for name in _array_names(store_path):
        z = zarr.open_array(str(store_path / name), mode="r")
        direct = open_array(source, name)
        assert isinstance(direct, DirectArray), name
        # the JSON reading of the layout agrees with the one the writer takes from zarr
        meta = json.loads((store_path / name / "zarr.json").read_text())
        assert shard_layout_from_metadata(meta) == ShardLayout.of(z), name
        assert direct.shape == z.shape
        n = z.shape[0]
        chunk, shard = direct.chunks[0], direct.shards[0]
        if n <= 1 << 23:  # whole arrays (a batch starts a fresh 64 MiB shard: big ones are sparse)
            whole, expected = direct[0:n], z[:]
            assert whole.dtype == expected.dtype, name
            assert whole.shape == expected.shape, name
            assert whole.tobytes() == expected.tobytes(), name
        # slices across every shard boundary, and random ones crossing chunk boundaries
        spans = [(max(0, s - chunk - 3), min(n, s + chunk + 5)) for s in range(shard, n, shard)]
        for _ in range(40):
            a = int(rng.integers(0, n))
            spans.append((a, min(n, a + int(rng.integers(0, 3 * chunk)))))
        for a, b in spans:
            got, want = direct[a:b], z[a:b]
            assert got.dtype == want.dtype, name
            assert got.tobytes() == want.tobytes(), (name, a, b)
        if name == "index":
            continue
        # every sample's range
        col = {c: i for i, c in enumerate(store._columns)}
        for i in range(len(store)):
            off = int(store._index[i, col[f"{name}.offset"]])
            ln = int(store._index[i, col[f"{name}.length"]])
            got = direct.read(off, off + ln, required=ln > 0)
            assert got.tobytes() == z[off : off + ln].tobytes(), (name, i)


def test_samples_read_directly_equal_those_read_through_zarr(store_path: Path) -> None:
    direct, via_zarr = SampleStore.open(store_path), SampleStore.open(store_path, direct=False)
    assert isinstance(via_zarr._array("image"), ZarrArray)
    np.testing.assert_array_equal(direct._index, via_zarr._index)
    for i in range(len(direct)):
        rec_a, meta_a = direct.read_record(i)
        rec_b, meta_b = via_zarr.read_record(i)
        assert meta_a == meta_b
        assert sorted(rec_a.arrays) == sorted(rec_b.arrays)
        for k, a in rec_a.arrays.items():
            assert a.dtype == rec_b.arrays[k].dtype, k
            assert a.tobytes() == rec_b.arrays[k].tobytes(), (i, k)
        if direct.name != "odd":  # (the odd store's "images" are random bytes)
            np.testing.assert_array_equal(direct.read_image(i), via_zarr.read_image(i))
        for task, variant in sorted(direct.tasks(i), key=str):
            if task in (TaskKind.SEGMENTATION, TaskKind.EDGE):
                np.testing.assert_array_equal(
                    direct.read_target(i, task, variant), via_zarr.read_target(i, task, variant)
                )


@pytest.fixture(scope="module")
def coco_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _coco(tmp_path_factory.mktemp("coco"), n=5, size=(60, 80), batch=2, edge=True)


def test_an_array_in_another_encoding_is_read_through_zarr(
    coco_store: Path, tmp_path: Path
) -> None:
    from zarr.codecs import BloscCodec

    root = tmp_path / "s"
    shutil.copytree(coco_store, root)
    old = zarr.open_array(str(root / "labels" / "edge"), mode="r")
    values = old[:]
    shutil.rmtree(root / "labels" / "edge")
    new = zarr.create_array(
        str(root / "labels" / "edge"),
        shape=values.shape,
        dtype=values.dtype,
        chunks=(1 << 16,),
        compressors=BloscCodec(cname="lz4", clevel=5),
        fill_value=0,
    )
    new[:] = values
    assert (
        shard_layout_from_metadata(json.loads((root / "labels/edge/zarr.json").read_text())) is None
    )
    store, ref = SampleStore.open(root), SampleStore.open(coco_store)
    assert isinstance(store._array("labels/edge"), ZarrArray)
    assert isinstance(store._array("image"), DirectArray)
    for i in range(len(store)):
        np.testing.assert_array_equal(store.read_labels(i, "edge"), ref.read_labels(i, "edge"))
    from sgt_data.store import verify_store

    assert verify_store(root) == []


def _first_shard(root: Path, name: str) -> Path:
    return sorted(p for p in (root / name / "c").iterdir() if p.is_file())[0]


@pytest.mark.parametrize("damage", ["missing", "index-checksum", "truncated"])
def test_a_damaged_shard_is_one_line_naming_the_file(
    coco_store: Path, tmp_path: Path, damage: str
) -> None:
    root = tmp_path / "s"
    shutil.copytree(coco_store, root)
    shard = _first_shard(root, "image")
    raw = bytearray(shard.read_bytes())
    if damage == "missing":
        shard.unlink()
        what = "shard is missing"
    elif damage == "index-checksum":
        raw[-10] ^= 0xFF
        shard.write_bytes(bytes(raw))
        what = "shard index checksum does not match"
    else:  # the data cut short, the index kept: the chunk's bytes are not all there
        index = raw[-(64 * 16 + 4) :]
        shard.write_bytes(bytes(raw[:100]) + bytes(index))
        what = "truncated"
    store = SampleStore.open(root)
    with pytest.raises(StoreError) as info:
        store.read_image(0)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(shard) in msg, msg
    assert what in msg, msg
    assert "array 'image' cannot be read for sample 0" in msg, msg
    from sgt_data.store import verify_store

    problems = verify_store(root)
    assert any(p.startswith(("array 'image'", "sample 0")) for p in problems)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_painting_a_label_map_equals_the_gather_and_names_an_id_without_colour(
    dtype: str,
) -> None:
    from sgt_data._frames import paint_labels

    rng = np.random.default_rng(3)
    lut = rng.integers(0, 256, size=(40, 3), dtype=np.uint8)
    labels = rng.integers(0, 40, size=(37, 53)).astype(dtype)
    out, bad = paint_labels(labels, lut)
    assert bad == -1
    np.testing.assert_array_equal(out, np.take(lut, labels, axis=0))
    labels[5, 7] = 41
    assert paint_labels(labels, lut)[1] == 41
