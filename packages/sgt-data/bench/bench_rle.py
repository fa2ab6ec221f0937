"""sgt_data.rle against pycocotools, same process, same inputs, one thread.

Workloads at COCO size (480x640, 10 masks per image) and SA-1B size (1500x2250, 100 masks per
image): single-mask decode, per-image label map from compressed strings (pycocotools: decode the
list, then a numpy paint), batch decode into a preallocated buffer, encode and polygons. Prints
masks/s, GB/s written, the ratio to pycocotools and the fraction of this machine's write
bandwidth (a numpy fill of a pre-touched buffer of the same size, measured in this run), then the
first-call (JIT compile) cost in fresh subprocesses. Run: ``python packages/sgt-data/bench/bench_rle.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pycocotools.mask as mask_api

from sgt_data import rle

TARGETS = {"decode1": 12.0, "label_coco": 20.0, "label_sa1b": 150.0, "batch_bw": 0.75}


def best_time(fn: Callable[[], object], repeat: int, min_time: float = 0.1) -> float:
    """Best CPU seconds per call over ``repeat`` rounds, each looping for at least ``min_time``.

    Process CPU time, not wall time: on a shared machine wall time mostly measures the other
    jobs. Both libraries are single-threaded here, so CPU time is their cost.
    """
    fn()
    best = float("inf")
    for _ in range(repeat):
        k = 0
        t0 = time.process_time()
        while True:
            fn()
            k += 1
            dt = time.process_time() - t0
            if dt >= min_time:
                break
        best = min(best, dt / k)
    return best


def make_image(rng: np.random.Generator, h: int, w: int, n: int) -> list[dict[str, Any]]:
    """``n`` smooth star-shaped objects of log-uniform scale (some with a hole), as RLEs."""
    out = []
    for _ in range(n):
        r0 = float(np.exp(rng.uniform(np.log(4), np.log(min(h, w) / 3))))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        coef = rng.normal(0, 0.15, (4, 2))
        rad = r0 * (
            1
            + sum(
                c[0] * np.cos((k + 2) * t) + c[1] * np.sin((k + 2) * t) for k, c in enumerate(coef)
            )
        )
        poly = np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1).ravel().tolist()
        r = rle.polygons_to_rle([poly], h, w)
        if rng.random() < 0.15:
            hole = (
                np.stack([cx + 0.3 * r0 * np.cos(t), cy + 0.3 * r0 * np.sin(t)], 1).ravel().tolist()
            )
            hr = rle.polygons_to_rle([hole], h, w)
            m = rle.decode(r) & (1 - rle.decode(hr))
            r = rle.encode(np.asfortranarray(m))  # type: ignore[assignment]
        out.append(r)
    return out


def numpy_label_map(rles: list[dict[str, Any]], h: int, w: int) -> np.ndarray:
    """The pycocotools way: decode all masks, paint larger first so small objects stay visible."""
    masks = mask_api.decode(rles)
    lab = np.zeros((h, w), np.uint16)
    for i in np.argsort(-mask_api.area(rles), kind="stable"):
        lab[masks[:, :, i].astype(bool)] = i + 1
    return lab


def fill_bandwidth(nbytes: int, repeat: int, buf: np.ndarray | None = None) -> float:
    """Bytes/s of a numpy fill (a ``memset``) of a pre-touched buffer of ``nbytes``.

    With ``buf``, the very buffer a workload writes: same size, same pages, same cache state.
    """
    if buf is None:
        buf = np.empty(nbytes, np.uint8)
        buf.fill(0)  # pre-touch
    assert buf.nbytes == nbytes
    flat = buf.reshape(-1, order="A")
    return nbytes / best_time(lambda: flat.fill(1), repeat)


def row(
    name: str, ours: float, ref: float | None, unit_bytes: int, bw: float | None, unit: str
) -> str:
    ratio = f"{ref / ours:7.1f}x" if ref else "      -"
    ref_rate = f"{1 / ref:11,.0f}" if ref else "          -"
    frac = f"{unit_bytes / ours / bw:6.0%}" if bw else "     -"
    return (
        f"  {name:<44} {ref_rate} {1 / ours:11,.0f} {unit:<6} {unit_bytes / ours / 1e9:6.2f} GB/s"
        f"  {ratio}  {frac}"
    )


def bench_size(
    label: str, h: int, w: int, per_image: int, images: int, repeat: int
) -> dict[str, float]:
    rng = np.random.default_rng(0)
    data = [make_image(rng, h, w, per_image) for _ in range(images)]
    flat = [r for im in data for r in im]
    hw = h * w
    counts = np.array([len(rle.as_counts(r)) for r in flat])
    print(
        f"\n{label}: {h}x{w}, {per_image} masks/image, {images} images; counts per mask median {int(np.median(counts))}, mean {counts.mean():.0f}"
    )
    for im in data:  # exactness check on the benchmark inputs
        assert np.array_equal(rle.paint_label_map(im, h, w), numpy_label_map(im, h, w))
        assert np.array_equal(rle.decode(im), mask_api.decode(im))
    print(
        f"  {'workload':<44} {'pycocotools':>11} {'sgt_data':>11} {'':<6} {'ours':>11}  {'ratio':>7}  {'of BW':>6}"
    )
    res: dict[str, float] = {}

    # single-mask decode
    sample = flat[: min(len(flat), 200)]

    def each(fn: Callable[[Any], object], items: list[Any]) -> Callable[[], None]:
        def run() -> None:
            for x in items:
                fn(x)  # the result is dropped at once, as a data loader does

        return run

    t_ref = best_time(each(mask_api.decode, sample), repeat) / len(sample)
    t_us = best_time(each(rle.decode, sample), repeat) / len(sample)
    bw1 = fill_bandwidth(hw, repeat)
    print(row("decode(rle), one mask per call", t_us, t_ref, hw, bw1, "mask/s"))
    res["decode1"] = t_ref / t_us

    # label map per image
    lab_sample = data[: min(len(data), 3 if per_image > 50 else 20)]
    t_ref = best_time(
        each(lambda im: numpy_label_map(im, h, w), lab_sample), 1 if per_image > 50 else repeat, 0.0
    ) / len(lab_sample)
    t_us = best_time(each(lambda im: rle.paint_label_map(im, h, w), lab_sample), repeat) / len(
        lab_sample
    )
    bwl = fill_bandwidth(hw * 2, repeat)
    print(row("label map uint16 from strings (per image)", t_us, t_ref, hw * 2, bwl, "img/s"))
    res["label"] = t_ref / t_us
    # the same work without the Python layer (validation, packing, allocation, dispatch)
    kernels = rle._k()
    lab_out = np.zeros(hw, np.uint16)
    info = np.zeros(3, np.int64)
    prepared = []
    for im in lab_sample:
        _, _, joined, lens = rle._plain_strings(im)
        prepared.append((joined, lens, np.arange(1, len(im) + 1, dtype=np.uint16)))

    def kernel_only(args: tuple[bytes, np.ndarray, np.ndarray]) -> None:
        kernels.label_map_from_strings(args[0], args[1], True, args[2], h, w, lab_out, info)

    t_k = best_time(each(kernel_only, prepared), repeat) / len(prepared)
    print(row("  of which the kernel (strings prepared)", t_k, t_ref, hw * 2, bwl, "img/s"))

    # batch decode of one image's masks
    im = data[0]
    n = len(im)
    out = np.empty((h, w, n), np.uint8, order="F")
    out.fill(0)
    t_ref = best_time(lambda: mask_api.decode(im), repeat)
    t_alloc = best_time(lambda: rle.decode(im, parallel=False), repeat)
    t_pre = best_time(lambda: rle.decode(im, out=out, parallel=False), repeat)
    bwb = fill_bandwidth(hw * n, repeat, out)  # memset of the very same output buffer
    print(row(f"decode(list of {n}), fresh output", t_alloc, t_ref, hw * n, bwb, "img/s"))
    print(row(f"decode(list of {n}) into preallocated out", t_pre, t_ref, hw * n, bwb, "img/s"))
    res["batch_bw"] = hw * n / t_pre / bwb
    _, _, joined, lens = rle._plain_strings(im)
    flat_out = out.reshape(-1, order="F")
    t_k = best_time(
        lambda: kernels.decode_strings_colmajor(joined, lens, hw, flat_out, info), repeat
    )
    print(row("  of which the kernel (strings prepared)", t_k, t_ref, hw * n, bwb, "img/s"))
    res["batch_bw_kernel"] = hw * n / t_k / bwb
    rows_out = np.empty((n, h, w), np.uint8)
    rows_out.fill(0)
    t_rows = best_time(lambda: rle.decode_rows(im, rows_out, parallel=False), repeat)
    t_ref_rows = best_time(
        lambda: np.ascontiguousarray(np.moveaxis(mask_api.decode(im), 2, 0)), repeat
    )
    print(
        row("decode_rows (n, h, w) C-order, preallocated", t_rows, t_ref_rows, hw * n, bwb, "img/s")
    )

    # encode and polygons
    masks = mask_api.decode(im)
    t_ref = best_time(lambda: mask_api.encode(masks), repeat)
    t_us = best_time(lambda: rle.encode(masks), repeat)
    print(row(f"encode (h, w, {n})", t_us, t_ref, hw * n, None, "img/s"))
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    polys = [
        [(np.stack([w / 2 + w / 4 * np.cos(t) + i, h / 2 + h / 4 * np.sin(t)], 1)).ravel().tolist()]
        for i in range(50)
    ]
    t_ref = best_time(
        each(lambda p: mask_api.merge(mask_api.frPyObjects(p, h, w)), polys), repeat
    ) / len(polys)
    t_us = best_time(each(lambda p: rle.polygons_to_rle(p, h, w), polys), repeat) / len(polys)
    print(row("polygon -> RLE (40 points)", t_us, t_ref, 0, None, "ann/s"))
    print(
        f"  write bandwidth (numpy fill, pre-touched): {bw1 / 1e9:.1f} GB/s at {hw / 1e6:.2f} MB, "
        f"{bwl / 1e9:.1f} GB/s at {2 * hw / 1e6:.2f} MB, {bwb / 1e9:.1f} GB/s at {hw * n / 1e6:.1f} MB"
    )
    return res


FIRST_CALL = """
import time, numpy as np
w0 = time.perf_counter()
t0 = time.process_time()
from sgt_data import rle
t1 = time.process_time()
m = np.zeros((480, 640), np.uint8, order="F"); m[100:200, 50:300] = 1
t2 = time.process_time(); e = rle.encode(m); t3 = time.process_time()
rle.decode(e); t4 = time.process_time()
rle.paint_label_map([e, e], 480, 640); t5 = time.process_time()
rle.decode([e, e]); rle.area([e]); rle.toBbox([e]); rle.merge([e, e]); rle.iou([e], [e], [0])
rle.polygons_to_rle([[1, 1, 50, 1, 50, 60]], 480, 640); rle.decode_rows([e, e]); t6 = time.process_time()
print(f"{t1 - t0:.3f} {t3 - t2:.3f} {t4 - t3:.3f} {t5 - t4:.3f} {t6 - t5:.3f} {t6 - t2:.3f}  (wall {time.perf_counter() - w0:.1f})")
"""


def first_call_cost() -> None:
    print(
        "\nfirst-call cost (fresh process; CPU seconds): import, encode, decode, label map, the rest, total"
    )
    with tempfile.TemporaryDirectory(prefix="sgt-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for name in ("empty cache (compile + write)", "warm cache (load)"):
            out = subprocess.run(
                [sys.executable, "-c", FIRST_CALL],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            print(f"  {name:<32} {out.stdout.strip()}")


def main() -> None:
    t0 = time.perf_counter()
    print(
        "sgt_data.rle vs pycocotools, 1 thread, best-of process CPU times; ratio = pycocotools time / ours;"
    )
    print(
        "'of BW' = our GB/s over a numpy fill (memset) of a pre-touched buffer of the same size"
        " (for the preallocated decode: of the same output buffer)"
    )
    first_call_cost()
    coco = bench_size("COCO", 480, 640, 10, 20, repeat=3)
    sa1b = bench_size("SA-1B", 1500, 2250, 100, 3, repeat=3)
    print("\ntargets:")
    checks = [
        ("single-mask decode, COCO", coco["decode1"], TARGETS["decode1"], "x"),
        ("single-mask decode, SA-1B", sa1b["decode1"], TARGETS["decode1"], "x"),
        ("label map per image, COCO", coco["label"], TARGETS["label_coco"], "x"),
        ("label map per image, SA-1B", sa1b["label"], TARGETS["label_sa1b"], "x"),
        (
            "preallocated batch kernel, COCO (of BW)",
            coco["batch_bw_kernel"],
            TARGETS["batch_bw"],
            "%",
        ),
        (
            "preallocated batch kernel, SA-1B (of BW)",
            sa1b["batch_bw_kernel"],
            TARGETS["batch_bw"],
            "%",
        ),
        ("  whole decode(out=) call, COCO (of BW)", coco["batch_bw"], TARGETS["batch_bw"], "%"),
        ("  whole decode(out=) call, SA-1B (of BW)", sa1b["batch_bw"], TARGETS["batch_bw"], "%"),
    ]
    for name, got, target, unit in checks:
        fmt = (lambda v: f"{v:.0%}") if unit == "%" else (lambda v: f"{v:.1f}x")
        print(
            f"  {name:<44} {fmt(got):>8}  target >= {fmt(target):<6} {'ok' if got >= target else 'MISSED'}"
        )
    print(f"\nbenchmark wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
