"""What training the MLLM through the generation loss costs on OmniGen2 (tiny model, CPU).

SGT's setting (``detach_mllm=False``: the flow-matching loss flows back through Qwen2.5-VL's last
hidden states into the LM and the vision tower) against upstream's (``detach_mllm=True`` with the
MLLM frozen: the MLLM is a fixed text/image encoder of the DiT, no MLLM backward), same weights,
same batches, in one process. A third row keeps ``detach_mllm=True`` but leaves the MLLM
trainable (the MLLM still gets zero gradients on generation batches so that all ZeRO ranks reduce
the same tensors, so its backward runs anyway). Repeats are interleaved across the settings
and the median is reported, as wall time and as process CPU time.

    python packages/sgt-models/bench/bench_omnigen2.py [--threads N] [--repeats N] [--batch N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sgt_data import Sample
from sgt_models import FreezePolicy, LossWeights, OmniGen2AdapterConfig
from sgt_models.omnigen2 import OmniGen2Adapter
from sgt_models.omnigen2.testing import TINY_IMAGE_PIXELS, write_tiny_omnigen2_folder
from sgt_models.testing import contract_samples

#: (name, detach_mllm, MLLM frozen); the last is the reference of the ratios
_SETTINGS: tuple[tuple[str, bool, bool], ...] = (
    ("SGT (MLLM trained through gen. loss)", False, False),
    ("detached, MLLM trainable", True, False),
    ("upstream (detached, MLLM frozen)", True, True),
)
_FROZEN_MLLM = FreezePolicy(vision_encoder=True, connector=True, llm=True)


def _adapter(folder: Path, image: int, detach: bool, frozen: bool) -> OmniGen2Adapter:
    config = OmniGen2AdapterConfig(
        model_path=str(folder),
        max_output_pixels=image * image,
        max_input_pixels=image * image,
        detach_mllm=detach,
        freeze=_FROZEN_MLLM if frozen else FreezePolicy(),
    )
    return OmniGen2Adapter.from_config(config)


def _batches(image: int, batch: int) -> dict[str, list[Sample]]:
    und, seg, *_ = contract_samples(image)
    return {
        "segmentation": [seg] * batch,
        "mixed (2 seg : 1 VQA)": [und if i % 3 == 2 else seg for i in range(batch)],
    }


def _timings(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """Median (wall s, CPU s) of each step, the repeats interleaved across the steps."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in steps}


def _step(adapter: OmniGen2Adapter, batch: Any) -> Callable[[], None]:
    def step() -> None:
        adapter.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same flow-matching times and noise in every setting
        adapter.loss(batch, LossWeights()).total.backward()

    return step


def main() -> None:
    """Print the throughput table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=6, help="samples per batch")
    parser.add_argument("--images", type=int, nargs="+", default=[64, 128], help="output sides")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_omnigen2_folder(Path(tmp) / "OmniGen2")
        params = {}
        rows = []
        for image in args.images:
            adapters = {name: _adapter(folder, image, d, f) for name, d, f in _SETTINGS}
            sgt = adapters[_SETTINGS[0][0]]
            params = {
                "MLLM": sum(p.numel() for p in sgt.mllm.parameters()),
                "DiT": sum(p.numel() for p in sgt.transformer.parameters()),
                "VAE": sum(p.numel() for p in sgt.vae.parameters()),
            }
            for kind, samples in _batches(image, args.batch).items():
                steps = {
                    name: _step(adapter, adapter.collate(samples))
                    for name, adapter in adapters.items()
                }
                timings = _timings(steps, args.repeats, args.warmup)
                rows.append((image, kind, timings))

    reference = _SETTINGS[-1][0]
    mllm_side = int(TINY_IMAGE_PIXELS**0.5)
    print(
        f"OmniGen2 (tiny: MLLM {params['MLLM'] / 1e6:.2f}M, DiT {params['DiT'] / 1e6:.2f}M, "
        f"VAE {params['VAE'] / 1e6:.2f}M params) forward+backward on the CPU, fp32"
    )
    print(
        f"regime: {torch.get_num_threads()} thread(s), batch {args.batch}, MLLM input "
        f"{mllm_side}x{mllm_side}, output image NxN (latent N/8), median of {args.repeats} "
        f"interleaved repeats after {args.warmup} warm-up, torch {torch.__version__}"
    )
    header = (
        f"{'N':>4} {'batch':<22} {'setting':<37} {'wall ms':>8} {'CPU ms':>8} "
        f"{'samples/s':>9} {'x upstr. wall':>13} {'x upstr. CPU':>12}"
    )
    print(header)
    print("-" * len(header))
    for image, kind, timings in rows:
        ref_wall, ref_cpu = timings[reference]
        for name, _, _ in _SETTINGS:
            wall, cpu = timings[name]
            print(
                f"{image:>4} {kind:<22} {name:<37} {wall * 1e3:>8.1f} {cpu * 1e3:>8.1f} "
                f"{args.batch / wall:>9.1f} {wall / ref_wall:>13.2f} {cpu / ref_cpu:>12.2f}"
            )
    print(
        "x upstr.: step time over upstream's setting (MLLM detached and frozen) on the same "
        "batch; the SGT row's ratio is the cost of training the MLLM through the generation loss."
    )


if __name__ == "__main__":
    main()
