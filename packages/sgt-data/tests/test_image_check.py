"""Image files stored verbatim are checked by their structure (no decode) unless
``verify_images="full"``: truncated, overwritten and bit-flipped files are still rejected with an
error naming the file and item, and good files of every JPEG/PNG flavour PIL writes pass."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from PIL import Image

from sgt_data.cli import main
from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion
from sgt_data.convert._image_check import structure_problem, verbatim_header
from sgt_data.convert.example import voc_example, write_voc_coco
from sgt_data.errors import ConversionError
from sgt_data.schema import StoreManifest


def _photo() -> np.ndarray:
    rgb, _, _ = voc_example()
    return rgb


def _encode(rgb: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _good_files() -> dict[str, tuple[bytes, str]]:
    rgb = _photo()
    exif = Image.Exif()
    exif[0x010E] = "a description"  # ImageDescription
    return {
        "baseline": (_encode(rgb, "JPEG", quality=90), "JPEG"),
        "progressive": (_encode(rgb, "JPEG", progressive=True), "JPEG"),
        "restart markers": (_encode(rgb, "JPEG", restart_marker_blocks=2), "JPEG"),
        "grey 4:4:4 + exif": (
            _encode(rgb[..., 0], "JPEG", subsampling=0, exif=exif.tobytes()),
            "JPEG",
        ),
        "png rgb": (_encode(rgb, "PNG"), "PNG"),
        "png palette": (
            _encode(np.asarray(Image.fromarray(rgb).convert("P")), "PNG", optimize=True),
            "PNG",
        ),
        "png 16-bit": (
            _encode(rgb[..., 0].astype(np.uint16) * 257, "PNG"),
            "PNG",
        ),
        "cmyk": (_encode_mode(rgb, "CMYK", "JPEG"), "JPEG"),
        "png rgba": (_encode_mode(rgb, "RGBA", "PNG"), "PNG"),
        "png 1-bit": (_encode_mode(rgb, "1", "PNG"), "PNG"),
        "png grey+alpha": (_encode_mode(rgb, "LA", "PNG"), "PNG"),
        "odd size": (_encode(rgb[:237, :353], "JPEG"), "JPEG"),
    }


def _encode_mode(rgb: np.ndarray, mode: str, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def test_header_gives_pils_format_and_size_without_pil() -> None:
    """The files stored verbatim are opened from the structural check's own walk: format and
    size must be PIL's, and its problems the structural check's."""
    for name, (data, fmt) in _good_files().items():
        with Image.open(io.BytesIO(data)) as im:
            want = (im.format, (im.height, im.width), None)
        assert verbatim_header(data, Image.MAX_IMAGE_PIXELS) == want, name
        for cut in (len(data) // 2, len(data) - 1):
            got = verbatim_header(data[:cut], None)
            assert got is not None, (name, cut)
            assert got[2] == structure_problem(data[:cut], fmt) is not None, (name, cut)


def _patched_sof(data: bytes, offset: int, value: int) -> bytes:
    """A JPEG with one byte of its frame header (0: precision, 5: components) replaced."""
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    out = bytearray(data)
    out[pos + 4 + offset] = value
    return bytes(out)


def test_header_leaves_uncommon_files_to_pil() -> None:
    rgb = _photo()
    jpeg = _encode(rgb, "JPEG")
    h, w = rgb.shape[:2]
    png = _encode(rgb, "PNG")
    for name, data, limit in [
        ("gif", _encode_mode(rgb, "P", "GIF"), None),
        ("bmp", _encode(rgb, "BMP"), None),
        ("not an image", b"<html>not found</html>", None),
        ("empty", b"", None),
        ("12-bit frame", _patched_sof(jpeg, 0, 12), None),
        ("2 components", _patched_sof(jpeg, 5, 2), None),
        ("zero height", _patched_sof(_patched_sof(jpeg, 1, 0), 2, 0), None),
        ("bomb (jpeg)", jpeg, h * w - 1),
        ("bomb (png)", png, h * w - 1),
        ("png unknown mode", png[:24] + b"\x05" + png[25:], None),
    ]:
        assert verbatim_header(data, limit) is None, name
    assert verbatim_header(jpeg, h * w) == ("JPEG", (h, w), None)


def test_good_files_pass() -> None:
    for name, (data, fmt) in _good_files().items():
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == fmt, name
            im.load()  # PIL decodes it: a genuinely good file
        assert structure_problem(data, fmt) is None, name
        # bytes after the end marker are ignored, as decoders do
        assert structure_problem(data + b"\0" * 64, fmt) is None, name


def test_every_truncation_is_rejected() -> None:
    for name, (data, fmt) in _good_files().items():
        for cut in range(0, len(data) - 1, max(1, len(data) // 3000)):
            assert structure_problem(data[:cut], fmt) is not None, (name, cut)
        assert structure_problem(data[:-1], fmt) is not None, name


def test_overwritten_scan_data_is_rejected() -> None:
    rng = np.random.default_rng(0)
    for name, (data, fmt) in _good_files().items():
        if fmt != "JPEG":
            continue
        for _ in range(20):
            # 4 KiB of junk holds ~16 bytes 0xFF, each followed by an illegal byte with p=3/4
            start = int(rng.integers(len(data) // 4, len(data) - 4200))
            junk = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
            bad = data[:start] + junk + data[start + 4096 :]
            problem = structure_problem(bad, fmt)
            assert problem is not None, (name, start)
            assert "scan data corrupt" in problem, (name, start)


def test_any_bit_flip_in_a_png_is_rejected() -> None:
    data = _encode(np.asarray(Image.fromarray(_photo()[:40, :60]).convert("P")), "PNG")
    for pos in range(8, len(data)):
        bad = bytearray(data)
        bad[pos] ^= 1 << (pos % 8)
        assert structure_problem(bytes(bad), "PNG") is not None, pos


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_voc_coco(tmp_path_factory.mktemp("voc"), n_images=3, size=(96, 128))


def _copy(voc: tuple[Path, Path], tmp: Path) -> tuple[Path, Path]:
    ann, images = voc
    shutil.copytree(images, tmp / "images")
    shutil.copy(ann, tmp / "ann.json")
    return tmp / "ann.json", tmp / "images"


def _convert(
    ann: Path, images: Path, out: Path, mode: Literal["structure", "full"], skip_bad: bool = False
) -> StoreManifest:
    opts = ConvertOptions(name="v", verify_images=mode)
    conv = CocoInstancesConverter(ann, images, opts)
    return run_conversion(conv, out, batch_size=2, skip_bad=skip_bad)


@pytest.mark.parametrize("mode", ["structure", "full"])
def test_damaged_jpeg_rejected_naming_file_and_id(
    voc: tuple[Path, Path], tmp_path: Path, mode: Literal["structure", "full"]
) -> None:
    ann, images = _copy(voc, tmp_path)
    files = sorted(images.glob("*.jpg"))
    item = str(json.loads(ann.read_text())["images"][1]["id"])
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(
        ConversionError, match=rf"{files[1].name}: item '{item}': corrupt or unreadable image"
    ):
        _convert(ann, images, tmp_path / "s", mode)
    m = _convert(ann, images, tmp_path / "s2", mode, skip_bad=True)
    assert m.num_samples == 2
    assert [s.item_id for s in m.skipped] == [item]


def test_check_mode_does_not_change_the_store(voc: tuple[Path, Path], tmp_path: Path) -> None:
    ann, images = voc
    a = _convert(ann, images, tmp_path / "a", "structure")
    b = _convert(ann, images, tmp_path / "b", "full")
    assert a.arrays == b.arrays


def test_cli_verify_images_flag(
    voc: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann, images = _copy(voc, tmp_path)
    first, second = sorted(images.glob("*.jpg"))[:2]
    data = bytearray(first.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 2] = b"\xff\x02"  # 0xFF is never followed by 0x02 in scan data
    first.write_bytes(bytes(data))
    argv = ["convert", "coco", "--annotations", str(ann), "--images", str(images)]
    argv += ["--no-progress", "--out"]
    assert main([*argv, str(tmp_path / "s"), "--verify-images", "structure"]) == 2
    err = capsys.readouterr().err
    assert first.name in err
    assert "scan data corrupt" in err
    second.write_bytes(second.read_bytes()[:-300])
    assert main([*argv, str(tmp_path / "s2"), "--verify-images", "full", "--skip-bad"]) == 0
    skipped = json.loads((tmp_path / "s2" / "manifest.json").read_text())["skipped"]
    assert second.name in {Path(s["file"]).name for s in skipped}
