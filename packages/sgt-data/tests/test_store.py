"""The store: SIGKILL at random points and resume gives the checksums of an uninterrupted run;
committed samples are never damaged; verify names what is wrong; plain zarr can read it; readers
work in forked workers."""

from __future__ import annotations

import io
import itertools
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from numcodecs import Zstd
from PIL import Image

from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion
from sgt_data.convert.example import write_voc_coco
from sgt_data.errors import StoreError
from sgt_data.schema import TaskKind
from sgt_data.store import JOURNAL_FILE, MANIFEST_FILE, SampleStore, StoreWriter, verify_store

_SCRIPT = """
import sys
from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion
ann, images, out, workers = sys.argv[1:5]
conv = CocoInstancesConverter(ann, images, ConvertOptions(name="k", edge=True))
run_conversion(conv, out, batch_size=2, workers=int(workers))
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_voc_coco(tmp_path_factory.mktemp("src"), n_images=14, size=(150, 200))


@pytest.fixture(scope="module")
def reference(source: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "store"
    run_conversion(
        CocoInstancesConverter(*source, ConvertOptions(name="k", edge=True)), out, batch_size=2
    )
    return out


def _journal(out: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((out / JOURNAL_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def _start(source: tuple[Path, Path], out: Path, workers: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(source[0]), str(source[1]), str(out), str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its workers share its session id: found again below
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_and_resume_gives_identical_checksums(
    source: tuple[Path, Path],
    reference: Path,
    tmp_path: Path,
    workers: int,
    session_members: Callable[[int, float], list[int]],
) -> None:
    """With workers, the kill hits the parent mid-run: its workers (staging batches into the
    store) must die with it, and nothing they staged may reach the resumed store."""
    out = tmp_path / "store"
    ref_index = np.asarray(zarr.open_array(str(reference / "index"), mode="r")[:])
    rng = random.Random(1234)
    killed = 0
    # kill once a given number of items is committed, plus a random delay (mid-batch, mid-write)
    for target in (2, 7, 12):
        proc = _start(source, out, workers)
        deadline = time.monotonic() + 60
        while _journal(out).get("items_done", 0) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "conversion subprocess made no progress"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        if sys.platform.startswith("linux"):
            assert session_members(proc.pid, 10) == [], "workers outlived their killed parent"
        j = _journal(out)
        if not j.get("finished"):
            with pytest.raises(StoreError, match="conversion not finished"):
                SampleStore.open(out)
        # every committed sample is intact, whatever the kill interrupted
        n = int(j["samples"])
        index = zarr.open_array(str(out / "index"), mode="r")
        np.testing.assert_array_equal(np.asarray(index[:n]), ref_index[:n])
    assert killed >= 2, "the kills must interrupt the conversion"
    proc = _start(source, out, workers)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    ref = SampleStore.open(reference).manifest
    got = SampleStore.open(out).manifest
    assert got.arrays == ref.arrays
    assert got.num_samples == ref.num_samples == 14
    assert verify_store(out) == []
    assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    assert not (out / "_staging").exists()


def test_resume_refuses_other_options(source: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_conversion(CocoInstancesConverter(*source, ConvertOptions(name="k")), out, batch_size=2)
    with pytest.raises(
        StoreError,
        match=r"other inputs or options \(--edge/--edge-thresholds: \[False, 100, 200\] -> \[True",
    ):
        run_conversion(
            CocoInstancesConverter(*source, ConvertOptions(name="k", edge=True)), out, batch_size=2
        )
    again = run_conversion(
        CocoInstancesConverter(*source, ConvertOptions(name="k")), out, batch_size=2
    )
    assert again == SampleStore.open(out).manifest  # a finished store is left as it is


def test_only_a_strict_run_resumes_with_skip_bad(tmp_path: Path) -> None:
    def open_(out: Path, skip_bad: bool, edge: bool = False) -> StoreWriter:
        return StoreWriter.open(
            out,
            name="k",
            fields=[],
            batch_size=2,
            fingerprint={"skip_bad": skip_bad, "edge": edge},
            resumable_from={"skip_bad": False},
        )

    open_(tmp_path / "strict", False).write_batch([], 2)  # two items committed
    assert open_(tmp_path / "strict", True).items_done == 2
    with pytest.raises(StoreError, match="edge"):  # other keys still have to match
        open_(tmp_path / "strict", True, edge=True)
    # a store that skipped bad items may hold skips: it does not go on strictly
    open_(tmp_path / "lenient", True).write_batch([], 2)
    with pytest.raises(StoreError, match=r"skip-bad: True -> False"):
        open_(tmp_path / "lenient", False)
    # with nothing committed (the first item failed) any inputs may start the store afresh
    open_(tmp_path / "fresh", True)
    assert open_(tmp_path / "fresh", False, edge=True).items_done == 0


def test_verify_names_what_is_wrong(reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    shutil.copytree(reference, store)
    assert verify_store(store) == []
    # damage one shard of the label maps: its array checksum and the samples in it are named
    shard = next(p for p in sorted((store / "labels" / "segments" / "c").iterdir()) if p.is_file())
    raw = bytearray(shard.read_bytes())
    raw[50] ^= (
        0xFF  # inside the first sample's label frame (chunks come first, the shard index last)
    )
    shard.write_bytes(bytes(raw))
    problems = verify_store(store)
    assert any(p.startswith("array 'labels/segments'") for p in problems), problems
    assert any(p.startswith("sample ") for p in problems), problems
    # a missing array
    shutil.rmtree(store / "labels" / "edge")
    assert any("array 'labels/edge'" in p for p in verify_store(store))
    # a manifest that lies about the sample count
    m = json.loads((store / "manifest.json").read_text())
    m["num_samples"] = 99
    (store / "manifest.json").write_text(json.dumps(m))
    assert "manifest says 99" in verify_store(store)[0]


def test_sample_store_is_a_store_reader(reference: Path) -> None:
    from sgt_data.datasets import StoreReader

    store = SampleStore.open(reference)
    assert isinstance(store, StoreReader)
    assert store.name == "k"
    assert len(store) == 14
    assert store.read_target(0, TaskKind.SEGMENTATION, "instance").shape == (150, 200, 3)
    with pytest.raises(KeyError, match="sample 0 has no depth target"):
        store.read_target(0, TaskKind.DEPTH)
    assert store.read_conversation(0) == ()


def test_plain_zarr_can_read_the_store(reference: Path) -> None:
    g = zarr.open_group(str(reference), mode="r")
    layout = g.attrs["sgt"]
    assert layout["complete"] is True
    cols = {c: i for i, c in enumerate(layout["index_columns"])}
    row = np.asarray(g["index"][3])
    h, w = int(row[cols["height"]]), int(row[cols["width"]])
    off, n = int(row[cols["image.offset"]]), int(row[cols["image.length"]])
    img = np.asarray(
        Image.open(io.BytesIO(np.asarray(g["image"][off : off + n]).tobytes())).convert("RGB")
    )
    off, n = int(row[cols["labels/segments.offset"]]), int(row[cols["labels/segments.length"]])
    # label maps: one zstd frame per sample (any zstd decoder), dtype in the layout attributes,
    # or uint8 when the frame holds exactly h x w bytes (every value < 256)
    frame = Zstd().decode(np.asarray(g["labels/segments"][off : off + n]).tobytes())
    dtype = next(f["frame_dtype"] for f in layout["fields"] if f["path"] == "labels/segments")
    assert dtype == "uint16"
    assert len(frame) == h * w, "this sample's few segments are stored narrow"
    labels = np.frombuffer(frame, dtype="uint8" if len(frame) == h * w else dtype).reshape(h, w)
    s = SampleStore.open(reference)
    np.testing.assert_array_equal(img, s.read_image(3))
    np.testing.assert_array_equal(labels, s.read_label_map(3, TaskKind.SEGMENTATION, "instance"))
    bit = layout["task_bits"]["edge/"]
    np.testing.assert_array_equal(
        np.flatnonzero(np.asarray(g["index"][:, cols["tasks"]]) & bit),
        s.indices_with(TaskKind.EDGE),
    )
    assert g["labels/segments"].shards is not None, "flat arrays are sharded"


def test_batches_never_share_a_shard_and_checksums_cover_the_samples(reference: Path) -> None:
    """zarr rewrites a whole shard when part of it is written: each batch (2 samples here) must
    start its own shard of every flat array, and the checksums must cover exactly the samples'
    bytes in index order (not the unwritten gaps between batches): sha256 of the samples'
    sha256 digests, read here through plain zarr."""
    import hashlib

    g = zarr.open_group(str(reference), mode="r")
    layout = g.attrs["sgt"]
    assert layout["batch_align"] == "shard"
    assert layout["digest"] == "sample-sha256"
    cols = {c: i for i, c in enumerate(layout["index_columns"])}
    index = np.asarray(g["index"][:])
    store = SampleStore.open(reference)
    for f in layout["fields"]:
        path = f["path"]
        shard = f["chunk"] * f["chunks_per_shard"]
        offs = index[:, cols[f"{path}.offset"]]
        lens = index[:, cols[f"{path}.length"]]
        batch_starts = offs[0::2]
        assert (batch_starts % shard == 0).all(), path
        np.testing.assert_array_equal(offs[1::2], offs[0::2] + lens[0::2])  # packed in a batch
        shard_files = [p for p in (reference / path / "c").iterdir() if p.is_file()]
        assert len(shard_files) == 7, path  # 14 samples, 7 batches, one shard each
        chained = b"".join(
            hashlib.sha256(np.asarray(g[path][o : o + n]).tobytes()).digest()
            for o, n in zip(offs, lens, strict=True)
            if n
        )
        assert store.manifest.arrays[path] == hashlib.sha256(chained).hexdigest(), path


def _read_in_worker(args: tuple[SampleStore, int]) -> tuple[str, int]:
    store, i = args
    return store.sample_id(i), int(store.read_target(i, TaskKind.SEGMENTATION, "instance").sum())


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_reader_works_in_forked_workers(reference: Path) -> None:
    store = SampleStore.open(reference)
    expected = [_read_in_worker((store, i)) for i in range(len(store))]  # parent uses zarr first
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(_read_in_worker, [(store, i) for i in range(len(store))])
    assert got == expected
    assert os.getpid() == store._pid


@pytest.mark.parametrize("top", [0, 255, 256, 65535])
def test_label_frames_are_stored_narrow_only_when_every_value_fits(top: int) -> None:
    from sgt_data.store import _decode_frame, encode_frame

    labels = np.zeros((6, 7), dtype=np.uint16)
    labels[2:4, 1:6] = top
    labels[5, 6] = 1
    frame = encode_frame(labels, "uint16")
    stored = Zstd().decode(frame.tobytes())
    assert len(stored) == labels.size * (1 if top < 256 else 2)
    back = _decode_frame(frame, "uint16", labels.size)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back.reshape(labels.shape), labels)
    # a frame of another size than h x w values of either width is damage, not data
    assert _decode_frame(frame, "uint16", labels.size + 1).size != labels.size + 1


def test_own_shard_writers_give_the_files_zarr_writes(
    source: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer encodes shard files itself (flat arrays and index); with it switched off,
    zarr writes every array: the two stores must hold the same files, byte for byte. A bad
    item skipped midway leaves a batch short, so later index rows straddle index chunks and
    shards are rewritten partially."""
    from sgt_data._shards import ShardLayout

    ann, images = source
    mine = tmp_path / "images"
    shutil.copytree(images, mine)
    victim = sorted(mine.iterdir())[4]
    victim.write_bytes(victim.read_bytes()[:300])

    def convert(out: Path) -> None:
        conv = CocoInstancesConverter(ann, mine, ConvertOptions(name="k", edge=True))
        run_conversion(conv, out, batch_size=3, skip_bad=True)

    convert(tmp_path / "ours")
    monkeypatch.setattr(ShardLayout, "of", classmethod(lambda cls, arr: None))
    convert(tmp_path / "zarr")

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    ours, theirs = files(tmp_path / "ours"), files(tmp_path / "zarr")
    assert sorted(ours) == sorted(theirs)
    assert any(k.startswith("index/c/") for k in ours)
    for name in sorted(ours):
        assert ours[name] == theirs[name], name
    assert SampleStore.open(tmp_path / "ours").manifest.skipped[0].item_id == victim.stem.lstrip(
        "0"
    )


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_fsync_makes_every_commit_durable_before_its_journal(
    source: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``fsync``, each commit syncs its batch's shard files (while staged), the index
    shard, the directories they were renamed into and resized arrays' metadata before the
    journal that names the batch committed; ``finish`` syncs zarr's metadata before the
    manifest. Without it nothing is synced."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)

    def convert(out: Path, fsync: bool) -> None:
        conv = CocoInstancesConverter(*source, ConvertOptions(name="k", edge=True))
        run_conversion(conv, out, batch_size=4, fsync=fsync)

    convert(tmp_path / "plain", False)
    assert synced == []
    out = tmp_path / "durable"
    convert(out, True)
    journal = f"/.{JOURNAL_FILE}."  # its temporary file, synced before the rename
    commits = [i for i, p in enumerate(synced) if journal in p]
    assert len(commits) == 1 + 4 + 1  # created, 4 batches (14 items / 4), finished
    for a, b in itertools.pairwise(commits[:5]):
        batch = synced[a + 1 : b]
        assert any("/_staging/" in p for p in batch), batch  # its shard files
        assert any("/index/c/" in p and p.endswith(".tmp") for p in batch), batch
        assert any(p.endswith("/c") for p in batch), batch  # the renames' directories
    staged = [p for p in synced if "/_staging/" in p]
    data_shards = [p for p in out.rglob("c/*") if p.is_file() and "index" not in p.parts]
    assert len(staged) == len(data_shards)
    tail = synced[commits[4] + 1 : commits[5]]
    assert any(p.endswith("/zarr.json") for p in tail), tail
    assert any(f"/.{MANIFEST_FILE}." in p for p in tail), tail
    assert (
        SampleStore.open(out).manifest.arrays
        == SampleStore.open(tmp_path / "plain").manifest.arrays
    )
