"""``merge_stores`` copies the parts' stored bytes (``sgt_data._store_merge``): the merged store is
byte-identical, file by file, to a single conversion of the same input with the merge's batch
size and to the record-by-record merge it replaces; a killed merge resumes to the same bytes;
mismatched, overlapping or damaged parts are refused with one line naming the store."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sgt_data import rle
from sgt_data.convert import (
    CocoInstancesConverter,
    Converter,
    ConvertOptions,
    Sa1bConverter,
    merge_stores,
    run_conversion,
)
from sgt_data.convert._base import _created_by
from sgt_data.convert.example import voc_example, write_voc_coco
from sgt_data.errors import StoreError
from sgt_data.schema import SourceSpec, StoreManifest
from sgt_data.store import JOURNAL_FILE, MANIFEST_FILE, SampleStore, StoreWriter, verify_store

_NOT_DATA = (MANIFEST_FILE, JOURNAL_FILE)


def _files(store: Path) -> dict[str, bytes]:
    """Every file of a store but its manifest and journal (which name the inputs), by path."""
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name not in _NOT_DATA
    }


def _assert_same_store(merged: Path, one: Path) -> None:
    a, b = _files(merged), _files(one)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    ma = StoreManifest.model_validate_json((merged / MANIFEST_FILE).read_text())
    mb = StoreManifest.model_validate_json((one / MANIFEST_FILE).read_text())
    assert ma.arrays == mb.arrays
    assert (ma.num_samples, ma.task_counts, ma.renderers) == (
        mb.num_samples,
        mb.task_counts,
        mb.renderers,
    )


def _record_merge(parts: list[Path], out: Path, batch_size: int) -> StoreManifest:
    """The merge before ``_store_merge``: every record read back and written again."""
    stores = [SampleStore.open(p) for p in parts]
    fp = {"merge": [hashlib.sha256((p / MANIFEST_FILE).read_bytes()).hexdigest() for p in parts]}
    first = stores[0]
    writer = StoreWriter.open(
        out, name=first.name, fields=first.fields, batch_size=batch_size, fingerprint=fp
    )
    batch, done = [], 0
    for s in stores:
        for k in range(len(s)):
            batch.append(s.read_record(k)[0])
            done += 1
            if len(batch) == batch_size:
                writer.write_batch(batch, done)
                batch = []
    if batch:
        writer.write_batch(batch, done)
    sources: list[SourceSpec] = []
    for s in stores:
        sources += [src for src in s.manifest.sources if src not in sources]
    return writer.finish(
        created_by=_created_by(),
        sources=sources,
        renderers=first.manifest.renderers,
        palette_seed=first.manifest.palette_seed,
        extra_skipped=[sk for s in stores for sk in s.manifest.skipped],
    )


def _parts(conv: Converter, root: Path, n: int, batch_size: int) -> list[Path]:
    parts = [root / f"part{i}" for i in range(n)]
    for i, p in enumerate(parts):
        run_conversion(conv, p, batch_size=batch_size, shard=(i, n))
    return parts


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Converter:
    """7 VOC photos (19 instances each, every COCO encoding) with edge maps: four arrays."""
    ann, images = write_voc_coco(tmp_path_factory.mktemp("coco"), n_images=7)
    return CocoInstancesConverter(ann, images, ConvertOptions(name="voc", edge=True))


@pytest.fixture(scope="module")
def sa1b(tmp_path_factory: pytest.TempPathFactory) -> Converter:
    """6 SA-1B-style pairs: the VOC photo (shifted per image) and a different subset of its 19
    masks each as compressed RLE."""
    d = tmp_path_factory.mktemp("sa1b")
    rgb, masks, _ = voc_example()
    h, w = rgb.shape[:2]
    anns = []
    for k, m in enumerate(masks):
        enc: Any = rle.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append({"id": k, "segmentation": {"size": [h, w], "counts": enc["counts"].decode()}})
    for n in range(1, 7):
        buf = io.BytesIO()
        Image.fromarray(np.roll(rgb, 29 * n, axis=1)).save(buf, format="JPEG", quality=90)
        (d / f"sa_{n}.jpg").write_bytes(buf.getvalue())
        rec = {
            "image": {"image_id": n, "width": w, "height": h, "file_name": f"sa_{n}.jpg"},
            "annotations": anns[n - 1 :],
        }
        (d / f"sa_{n}.json").write_text(json.dumps(rec))
    return Sa1bConverter(d, ConvertOptions(name="sa"))


@pytest.mark.parametrize("which", ["coco", "sa1b"])
@pytest.mark.parametrize(("n_parts", "part_batch", "batch"), [(3, 2, 2), (2, 1, 3), (4, 4, 4)])
def test_merged_store_is_the_single_conversion_byte_for_byte(
    which: str,
    n_parts: int,
    part_batch: int,
    batch: int,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Parts of 2-3 samples (batches straddling parts), converted with the merge's batch size or
    another one: every shard file, zarr.json and digest equals the single conversion's, and the
    whole directory (manifest and journal too) the record-by-record merge's."""
    conv: Converter = request.getfixturevalue(which)
    one = tmp_path / "one"
    run_conversion(conv, one, batch_size=batch)
    parts = _parts(conv, tmp_path, n_parts, part_batch)
    merged = merge_stores(parts, tmp_path / "merged", batch_size=batch)
    _assert_same_store(tmp_path / "merged", one)
    assert merged.arrays == SampleStore.open(one).manifest.arrays
    assert verify_store(tmp_path / "merged") == []
    old = _record_merge(parts, tmp_path / "old", batch)
    assert merged == old
    for name in (MANIFEST_FILE, JOURNAL_FILE):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "old" / name).read_bytes()
    assert _files(tmp_path / "merged") == _files(tmp_path / "old")


_KILL_AFTER = """
import os, sys
from sgt_data.convert import merge_stores
def stop(done, total):
    if done >= int(sys.argv[2]):
        os._exit(9)  # as a kill: no cleanup, the next batch half staged
merge_stores(sys.argv[3:], sys.argv[1], batch_size=2, progress=stop)
"""


def test_a_killed_merge_resumes_to_the_same_bytes(coco: Converter, tmp_path: Path) -> None:
    parts = _parts(coco, tmp_path, 3, 2)
    out = tmp_path / "merged"
    cmd = [sys.executable, "-c", _KILL_AFTER, str(out), "4", *map(str, parts)]
    assert subprocess.run(cmd, check=False).returncode == 9
    journal = json.loads((out / JOURNAL_FILE).read_text())
    assert (journal["items_done"], journal["finished"]) == (4, False)
    seen: list[int] = []
    m = merge_stores(parts, out, batch_size=2, progress=lambda done, total: seen.append(done))
    assert seen == [6]  # resumed after the 4 committed samples; the last batch holds one
    assert m.num_samples == 7
    one = tmp_path / "one"
    run_conversion(coco, one, batch_size=2)
    _assert_same_store(out, one)
    assert not (out / "_staging").exists()
    # a finished merge run again with the same parts is refused, nothing rewritten
    with pytest.raises(StoreError, match="finished store"):
        merge_stores(parts, out, batch_size=3)


def test_an_interrupted_merge_resumes(
    sa1b: Converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = _parts(sa1b, tmp_path, 2, 2)
    out = tmp_path / "merged"
    commit = StoreWriter.commit
    calls: list[int] = []

    def interrupted(self: StoreWriter, *args: Any, **kw: Any) -> None:
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(1)
        commit(self, *args, **kw)

    monkeypatch.setattr(StoreWriter, "commit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge_stores(parts, out, batch_size=2)
    monkeypatch.setattr(StoreWriter, "commit", commit)
    assert json.loads((out / JOURNAL_FILE).read_text())["items_done"] == 2
    merge_stores(parts, out, batch_size=2)
    one = tmp_path / "one"
    run_conversion(sa1b, one, batch_size=2)
    _assert_same_store(out, one)


def test_a_sample_in_two_parts_is_refused_also_after_a_resume(
    coco: Converter, tmp_path: Path
) -> None:
    parts = _parts(coco, tmp_path, 2, 2)  # 3 + 4 samples
    again = [parts[0], parts[1], parts[0]]
    first_id = SampleStore.open(parts[0]).sample_id(0)
    msg = f"{parts[0]}: sample id {first_id!r} also in {parts[0]}"
    with pytest.raises(StoreError) as err:
        merge_stores(again, tmp_path / "dup", batch_size=2)
    assert str(err.value) == msg
    # the batches before the duplicate stay committed; a resume knows their ids
    assert json.loads((tmp_path / "dup" / JOURNAL_FILE).read_text())["items_done"] == 6
    with pytest.raises(StoreError) as err:
        merge_stores(again, tmp_path / "dup", batch_size=2)
    assert str(err.value) == msg
    with pytest.raises(StoreError, match=r"also in"):
        merge_stores([parts[0], parts[0]], tmp_path / "dup2", batch_size=2)


def test_mismatched_parts_are_refused(coco: Converter, sa1b: Converter, tmp_path: Path) -> None:
    a = tmp_path / "a"
    run_conversion(coco, a, batch_size=2, shard=(0, 2))
    b = tmp_path / "b"
    run_conversion(sa1b, b, batch_size=2)
    with pytest.raises(StoreError) as err:
        merge_stores([a, b], tmp_path / "m1")
    assert str(err.value) == f"{b}: store name 'sa' differs from 'voc' ({a})"
    ann, images = write_voc_coco(tmp_path / "plain", n_images=2)
    c = tmp_path / "c"
    run_conversion(CocoInstancesConverter(ann, images, ConvertOptions(name="voc")), c)
    with pytest.raises(StoreError) as err:
        merge_stores([a, c], tmp_path / "m2")
    assert str(err.value) == f"{c}: renderers differ from those of {a}"
    with pytest.raises(StoreError, match="at least one store"):
        merge_stores([], tmp_path / "m3")
    assert not (tmp_path / "m1").exists()
    assert not (tmp_path / "m2").exists()


def test_a_damaged_part_is_named_and_nothing_committed_is_lost(
    sa1b: Converter, tmp_path: Path
) -> None:
    parts = _parts(sa1b, tmp_path, 2, 2)  # 3 + 3 samples: the second part's shards 0 and 1
    shard = parts[1] / "image" / "c" / "1"
    shard.write_bytes(shard.read_bytes()[:-40])  # its index cut off
    out = tmp_path / "merged"
    with pytest.raises(StoreError) as err:
        merge_stores(parts, out, batch_size=2)
    text = str(err.value)
    assert "\n" not in text
    assert str(shard) in text
    assert "'image'" in text
    # samples 0-3 (batches of 2) came before the damage
    assert json.loads((out / JOURNAL_FILE).read_text())["items_done"] == 4


@pytest.mark.parametrize("how", ["copied", "no copy_file_range", "another file system"])
def test_the_bytes_are_the_same_however_they_are_copied(
    how: str, sa1b: Converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images and label frames are copied file to file in the kernel where it can; written
    from memory where it cannot (no ``copy_file_range``, or EXDEV): the same bytes each way."""
    import errno
    import os

    from sgt_data import _store_merge

    parts = _parts(sa1b, tmp_path, 3, 2)
    one = tmp_path / "one"
    run_conversion(sa1b, one, batch_size=2)
    real = getattr(os, "copy_file_range", None)
    calls: list[int] = []

    def counted(*args: Any) -> int:
        if how == "another file system":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        assert real is not None
        calls.append(1)
        return int(real(*args))

    if how == "no copy_file_range":
        monkeypatch.setattr(_store_merge, "_COPY", False)
    elif real is None:
        pytest.skip("no os.copy_file_range on this system")
    else:
        monkeypatch.setattr(os, "copy_file_range", counted)
    merge_stores(parts, tmp_path / "merged", batch_size=2)
    _assert_same_store(tmp_path / "merged", one)
    assert bool(calls) == (how == "copied")


def test_batches_of_items_with_skipped_ones_give_the_single_conversion(
    sa1b: Converter, tmp_path: Path
) -> None:
    """``copy_batches`` (what an engine merging its shards' parts uses): batches of input items,
    some skipped by ``--skip-bad`` in their shard, committed with their skipped items, give the
    single ``--skip-bad`` conversion's arrays byte for byte."""
    from sgt_data._store_merge import Batch, copy_batches

    src = Path(sa1b.source(0).path)
    folder = tmp_path / "sa"
    shutil.copytree(src, folder)
    rec = json.loads((folder / "sa_3.json").read_text())
    rec["annotations"][0]["segmentation"]["counts"] = "not an RLE string"
    (folder / "sa_3.json").write_text(json.dumps(rec))
    conv = Sa1bConverter(folder, ConvertOptions(name="sa"))
    one = tmp_path / "one"
    m_one = run_conversion(conv, one, batch_size=2, skip_bad=True)
    assert [s.item_id for s in m_one.skipped] == ["sa_3"]
    parts = [tmp_path / f"part{i}" for i in range(2)]
    skipped = {}
    for i, p in enumerate(parts):
        m = run_conversion(conv, p, batch_size=2, shard=(i, 2), skip_bad=True)
        skipped.update({s.item_id: s for s in m.skipped})
    items, _ = conv.list_items()
    batches, pos = [], 0
    for lo in range(0, len(items), 2):
        block = items[lo : lo + 2]
        gone = tuple(skipped[it.item_id] for it in block if it.item_id in skipped)
        n = len(block) - len(gone)
        batches.append(Batch(pos, pos + n, lo + len(block), gone))
        pos += n
    store = SampleStore.open(one)
    out = tmp_path / "merged"
    writer = StoreWriter.open(
        out, name="sa", fields=store.fields, batch_size=2, fingerprint={"test": 1}
    )
    sizes = [len(SampleStore.open(p)) for p in parts]
    seen: list[int] = []
    copy_batches(parts, sizes, writer, batches, len(items), lambda b, t: seen.append(b.items))
    assert seen == [2, 4, 6]
    m = writer.finish(
        created_by=store.manifest.created_by,
        sources=store.manifest.sources,
        renderers=store.manifest.renderers,
        palette_seed=store.manifest.palette_seed,
    )
    assert m.skipped == m_one.skipped
    _assert_same_store(out, one)
    with pytest.raises(ValueError, match="starts at sample 0, not 5"):
        copy_batches(parts, sizes, writer, batches, len(items))
