"""The ``sgt-data`` CLI: convert, inspect, verify (naming the damage), preview, shard + merge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgt_data.cli import main
from sgt_data.convert.example import write_voc_coco
from sgt_data.store import SampleStore


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_voc_coco(tmp_path_factory.mktemp("src"), n_images=3, size=(120, 160))


def test_convert_inspect_verify_preview(
    source: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann, images = source
    out = tmp_path / "voc"
    argv = [
        "convert",
        "coco",
        "--annotations",
        str(ann),
        "--images",
        str(images),
        "--out",
        str(out),
    ]
    assert main([*argv, "--edge", "--batch-size", "2", "--no-progress"]) == 0
    assert "3 samples, 0 skipped" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "samples    3" in text
    assert "renderer   instance v1" in text
    assert "edge=3" in text
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 3
    assert main(["verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    assert main(["preview", str(out), "--out", str(sheet), "-n", "2", "--height", "60"]) == 0
    with Image.open(sheet) as im:
        arr = np.asarray(im.convert("RGB"))
    # 2 rows; each: image + instance + semantic + edge tiles of 80 px width (+ gaps)
    assert arr.shape[0] == 2 * (14 + 60 + 4)
    assert arr.shape[1] == 4 * (80 + 4)
    s = SampleStore.open(out)
    tile = arr[14 : 14 + 60, 2 * 84 : 2 * 84 + 80]  # tiles: image, edge, instance, semantic
    small = np.asarray(
        Image.fromarray(s.read_target(0, "segmentation", "instance")).resize(
            (80, 60), Image.Resampling.NEAREST
        )
    )
    np.testing.assert_array_equal(tile, small)
    # damage the store: verify fails and names the array
    chunk = next(p for p in sorted((out / "labels" / "segments" / "c").iterdir()) if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-7] + b"garbage")
    assert main(["verify", str(out)]) == 1
    assert "array 'labels/segments'" in capsys.readouterr().out


def test_bad_input_exits_2_naming_the_item(
    source: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann, images = source
    data = json.loads(ann.read_text())
    data["images"][0]["file_name"] = "missing.jpg"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    argv = ["convert", "coco", "--annotations", str(bad), "--images", str(images), "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "missing.jpg: item '100': image file cannot be read" in err
    assert main([*argv, "--out", str(tmp_path / "s2"), "--skip-bad"]) == 0
    assert main(["inspect", str(tmp_path / "s2")]) == 0
    assert "- 100 (" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2


def test_shard_then_merge(source: tuple[Path, Path], tmp_path: Path) -> None:
    ann, images = source
    base = [
        "convert",
        "coco",
        "--annotations",
        str(ann),
        "--images",
        str(images),
        "--name",
        "v",
        "--no-progress",
    ]
    parts = []
    for i in range(3):
        parts.append(str(tmp_path / f"p{i}"))
        assert main([*base, "--shard", f"{i}/3", "--out", parts[-1]]) == 0
    assert main(["merge", *parts, "--out", str(tmp_path / "all"), "--no-progress"]) == 0
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    merged, one = SampleStore.open(tmp_path / "all"), SampleStore.open(tmp_path / "one")
    assert [merged.sample_id(i) for i in range(3)] == [one.sample_id(i) for i in range(3)]
    for i in range(3):
        np.testing.assert_array_equal(
            merged.read_labels(i, "segments"), one.read_labels(i, "segments")
        )
    assert main(["merge", parts[0], parts[0], "--out", str(tmp_path / "dup"), "--no-progress"]) == 2
    assert (
        main(
            [
                "convert",
                "coco",
                "--annotations",
                str(ann),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "x"),
                "--shard",
                "3/3",
            ]
        )
        == 2
    )


def test_convert_captions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"id": "a", "image": "a.png", "caption": "noise"}) + "\n"
    )
    out = tmp_path / "t2i"
    argv = ["convert", "captions", "--annotations", str(tmp_path / "c.jsonl")]
    assert main([*argv, "--images", str(tmp_path), "--out", str(out), "--no-progress"]) == 0
    assert "1 samples, 0 skipped" in capsys.readouterr().out
    s = SampleStore.open(out)
    assert s.manifest.sources[0].format == "captions"
    assert s.read_metadata(0)["caption"] == "noise"
    np.testing.assert_array_equal(s.read_image(0), rgb)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--workers", "0", "workers must be >= 1, got 0"), ("--batch-size", "0", "batch_size")],
)
def test_bad_worker_and_batch_counts_exit_2_before_writing(
    source: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    message: str,
) -> None:
    ann, images = source
    out = tmp_path / "s"
    argv = ["convert", "coco", "--annotations", str(ann), "--images", str(images)]
    assert main([*argv, "--out", str(out), flag, value, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
