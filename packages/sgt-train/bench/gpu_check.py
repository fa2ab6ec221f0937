"""One short run on a lent GPU: the `small` reference model, bf16, ZeRO-2, one process.

Reports samples/s and the fraction of the GPU's peak bf16 matmul throughput the training
reaches (model FLOPs from a measured forward+backward, against a measured large-GEMM peak).
Not part of `nox -s bench` (its name does not start with bench_). Run on the GPU host:

    DS_ACCELERATOR=cuda python packages/sgt-train/bench/gpu_check.py --steps 30 --out $OUT

Prints a table and writes ``gpu_check.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgt_data import Sample, TaskKind
from sgt_train import validate_run_config
from sgt_train.loop import Hooks, StepMetrics, fit

PATTERN = (TaskKind.SEGMENTATION, TaskKind.SEGMENTATION, TaskKind.UNDERSTANDING)


def _sample(index: int, task: TaskKind, side: int) -> Sample:
    rng = np.random.default_rng(index)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    if task is TaskKind.UNDERSTANDING:
        return Sample(
            sample_id=f"g:{index}",
            source="gpu",
            task=task,
            instruction="How many shapes are there?",
            image=image,
            answer="There are three shapes.",
        )
    return Sample(
        sample_id=f"g:{index}",
        source="gpu",
        task=task,
        instruction="Segment instances with different colors.",
        image=image,
        target_image=255 - image,
    )


class _Batches:
    def __init__(self, micro_batch_size: int, side: int, count: int = 30) -> None:
        self.batches = [
            [
                _sample(m * micro_batch_size + j, PATTERN[m % 3], side)
                for j in range(micro_batch_size)
            ]
            for m in range(count)
        ]
        self.position = 0

    def __iter__(self) -> Iterator[list[Sample]]:
        while True:
            yield self.batches[self.position % len(self.batches)]
            self.position += 1

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_matmul_tflops(device: str, n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 GEMM throughput (TFLOP/s) of this device."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t) / 1e12


def step_flops(model: torch.nn.Module, batches: _Batches, device: str) -> float:
    """FLOPs of one forward+backward per micro-batch, averaged over the task pattern."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    total = 0.0
    for m in range(3):
        batch = model.collate(batches.batches[m]).to(device, torch.bfloat16)  # type: ignore[operator]
        # the math backend spells attention out as matmuls, which the counter handles for grouped
        # KV heads (its formula for the fused kernels asserts on them in torch 2.11)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(batch).total.backward()
        total += counter.get_total_flops()
        model.zero_grad(set_to_none=True)
    return total / 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--out", default=".")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--device",
        default="cuda",
        help="cpu only to smoke-test this script (with DS_ACCELERATOR=cpu)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU (or --device cpu for a smoke test)")
    warm = min(5, args.steps - 1)
    with tempfile.TemporaryDirectory() as tmp:
        config = validate_run_config(
            {
                "name": "gpu-check",
                "output_dir": tmp,
                "model": {"kind": "reference", "size": "small", "image_size": args.image_size},
                "data": {
                    "sources": [
                        {"name": "seg", "store": "-", "task": "segmentation"},
                        {"name": "vqa", "store": "-", "task": "understanding"},
                    ],
                    "pattern": ["seg", "seg", "vqa"],
                },
                "steps": args.steps,
                "micro_batch_size": args.micro_batch,
                "gradient_accumulation": 1,
                "precision": "bf16",
                "zero": {"stage": 2},
                "checkpoint": {"every": 100000},
                "logging": {"every": 100000, "tensorboard": False, "progress_bar": False},
            }
        )
        from sgt_models.registry import build_adapter

        side = int(getattr(config.model, "image_size", 64))
        batches = _Batches(args.micro_batch, side)
        stamps: dict[int, float] = {}

        def on_step(m: StepMetrics) -> None:
            _sync(args.device)
            stamps[m.step] = time.perf_counter()

        result = fit(config, source=batches, hooks=Hooks(on_step=[on_step]))
        seconds = stamps[args.steps] - stamps[warm]
        steps_s = (args.steps - warm) / seconds
        print(f"fit: {steps_s * args.micro_batch:.1f} samples/s", flush=True)
        probe = build_adapter(config.model).to(args.device, torch.bfloat16)
        flops = step_flops(probe, batches, args.device)
        peak = peak_matmul_tflops(args.device, n=8192 if args.device.startswith("cuda") else 1024)
    achieved = flops * steps_s / 1e12
    report = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "image_size": args.image_size,
        "params": sum(p.numel() for p in probe.parameters()),
        "micro_batch": args.micro_batch,
        "samples_per_s": steps_s * args.micro_batch,
        "steps_per_s": steps_s,
        "model_tflops_per_s": achieved,
        "peak_bf16_matmul_tflops": peak,
        "fraction_of_peak": achieved / peak,
        "final_loss": result.losses[-1],
    }
    for k, v in report.items():
        print(f"{k:<26} {v:.4g}" if isinstance(v, float) else f"{k:<26} {v}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
