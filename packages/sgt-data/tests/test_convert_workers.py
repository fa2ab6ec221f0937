"""Conversion in worker processes: the same store as one process, in item order; a bad item, a
bug in a converter and a killed worker each stop the run with a clear error, leave no worker
behind, and keep the committed batches for a resume."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from sgt_data.convert import CocoInstancesConverter, ConvertOptions, WorkItem, run_conversion
from sgt_data.convert.example import write_voc_coco
from sgt_data.errors import ConversionError, WorkerDiedError
from sgt_data.store import SampleRecord, SampleStore, verify_store

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="the converters below are defined in this test module (fork start method)",
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_voc_coco(tmp_path_factory.mktemp("src"), n_images=24, size=(60, 80))


@pytest.fixture(scope="module")
def reference(source: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "store"
    run_conversion(CocoInstancesConverter(*source, ConvertOptions(name="w")), out, batch_size=4)
    return out


def _ids(source: tuple[Path, Path]) -> list[str]:
    items, _ = CocoInstancesConverter(*source, ConvertOptions(name="w")).list_items()
    return [it.item_id for it in items]


class _Buggy(CocoInstancesConverter):
    """Raises an unexpected exception (not bad input) on one item."""

    bad_id = ""

    def process(self, item: WorkItem) -> SampleRecord:
        if item.item_id == self.bad_id:
            raise KeyError("boom in the converter")
        return super().process(item)


class _Killed(CocoInstancesConverter):
    """Its worker is killed (as by the OOM killer) on one item, while ``flag`` exists."""

    bad_id = ""
    flag = Path()

    def process(self, item: WorkItem) -> SampleRecord:
        if item.item_id == self.bad_id and self.flag.exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return super().process(item)


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_store_of_one_process(
    source: tuple[Path, Path], reference: Path, tmp_path: Path, workers: int
) -> None:
    m = run_conversion(
        CocoInstancesConverter(*source, ConvertOptions(name="w")),
        tmp_path / "s",
        batch_size=4,
        workers=workers,
    )
    ref = SampleStore.open(reference)
    assert m.arrays == ref.manifest.arrays  # same bytes, same (item) order
    got = SampleStore.open(tmp_path / "s")
    assert [got.sample_id(k) for k in range(len(got))] == [
        ref.sample_id(k) for k in range(len(ref))
    ]
    assert not multiprocessing.active_children()


def test_a_bad_item_stops_the_workers_and_keeps_committed_batches(
    source: tuple[Path, Path], reference: Path, tmp_path: Path
) -> None:
    ids = _ids(source)
    images = tmp_path / "images"
    images.mkdir()
    for p in source[1].iterdir():
        (images / p.name).write_bytes(p.read_bytes())
    bad = images / f"{int(ids[9]):012d}.jpg"
    good = bad.read_bytes()
    bad.write_bytes(good[:500])
    out = tmp_path / "s"
    with pytest.raises(ConversionError, match=rf"item '{ids[9]}': corrupt or unreadable image"):
        run_conversion(
            CocoInstancesConverter(source[0], images, ConvertOptions(name="w")),
            out,
            batch_size=4,
            workers=2,
        )
    assert not multiprocessing.active_children()
    bad.write_bytes(good)  # repaired: the resumed run gives the uninterrupted run's store
    m = run_conversion(
        CocoInstancesConverter(source[0], images, ConvertOptions(name="w")),
        out,
        batch_size=4,
        workers=2,
    )
    assert m.arrays == SampleStore.open(reference).manifest.arrays


def test_a_bug_in_a_worker_is_reported_with_its_traceback(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    conv = _Buggy(*source, ConvertOptions(name="w"))
    conv.bad_id = _ids(source)[13]
    with pytest.raises(RuntimeError, match=rf"(?s)item {conv.bad_id}:.*KeyError: 'boom"):
        run_conversion(conv, tmp_path / "s", batch_size=4, workers=2, skip_bad=True)
    assert not multiprocessing.active_children()


def test_a_killed_worker_stops_the_run_and_it_resumes(
    source: tuple[Path, Path], reference: Path, tmp_path: Path
) -> None:
    conv = _Killed(*source, ConvertOptions(name="w"))
    conv.bad_id = _ids(source)[17]
    conv.flag = tmp_path / "kill"
    conv.flag.touch()
    out = tmp_path / "s"
    with pytest.raises(
        WorkerDiedError, match=r"worker died \(killed by signal 9 \(SIGKILL: by the OS"
    ):
        run_conversion(conv, out, batch_size=4, workers=2)
    assert not multiprocessing.active_children()
    conv.flag.unlink()
    m = run_conversion(conv, out, batch_size=4, workers=2)
    assert m.arrays == SampleStore.open(reference).manifest.arrays
    assert verify_store(out) == []


_SLOW = """
import sys, time
from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion

class Slow(CocoInstancesConverter):
    def process(self, item):
        time.sleep(0.2)
        return super().process(item)

ann, images, out = sys.argv[1:4]
run_conversion(Slow(ann, images, ConvertOptions(name="w")), out, batch_size=4, workers=2)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_workers_die_with_a_killed_parent(
    source: tuple[Path, Path],
    reference: Path,
    tmp_path: Path,
    session_members: Callable[[int, float], list[int]],
) -> None:
    """Workers stage batches into the store: after a SIGKILL of the conversion they must stop at
    once, not finish their batches (up to two, 0.8 s each here) beside a resumed run."""
    import subprocess
    import sys
    import time

    out = tmp_path / "s"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW, str(source[0]), str(source[1]), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while len(session_members(proc.pid, 0)) < 3:  # the parent and its two workers, converting
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)  # mid-batch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # within 0.15 s: a worker left alone would go on for its batches (0.2 s per item)
    assert session_members(proc.pid, 0.15) == [], "workers outlived their killed parent"
    m = run_conversion(CocoInstancesConverter(*source, ConvertOptions(name="w")), out, batch_size=4)
    assert m.arrays == SampleStore.open(reference).manifest.arrays
    assert not (out / "_staging").exists()
