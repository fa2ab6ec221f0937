"""One short run on a lent GPU: the `small` reference model, bf16, ZeRO stages, one process.

Reports samples/s of the trainer at each ZeRO stage asked for, of a plain PyTorch loop on the same
batches (its overhead reference), and the fraction of the GPU's peak bf16 matmul throughput each
reaches (model FLOPs from a counted forward+backward, against a measured large-GEMM peak).
Not part of `nox -s bench` (its name does not start with bench_). Run on the GPU host:

    DS_ACCELERATOR=cuda python packages/sgt-train/bench/gpu_check.py --steps 30 --zero 0 2 --out $OUT

Prints a table and writes ``gpu_check.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
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
    """Micro-batches in the 2:1 pattern, collated once up front so that the timings measure the
    trainer and the GPU, not the processor (real runs collate in DataLoader workers)."""

    def __init__(self, collate: Any, micro_batch_size: int, side: int, count: int = 30) -> None:
        self.samples = [
            [
                _sample(m * micro_batch_size + j, PATTERN[m % 3], side)
                for j in range(micro_batch_size)
            ]
            for m in range(count)
        ]
        self.batches = [collate(group) for group in self.samples]
        self.position = 0

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.batches[self.position % len(self.batches)]
            self.position += 1

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
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
        batch = batches.batches[m].to(device, torch.bfloat16)
        # the math backend spells attention out as matmuls, which the counter handles for grouped
        # KV heads (its formula for the fused kernels asserts on them in torch 2.11)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(batch).total.backward()
        total += counter.get_total_flops()
        model.zero_grad(set_to_none=True)
    return total / 3


def plain_steps_per_s(
    model: torch.nn.Module, batches: _Batches, device: str, steps: int, warm: int
) -> float:
    """The reference: a plain PyTorch loop (fp32 weights, bf16 autocast, AdamW, clipping 1.0)."""
    model.to(device).train()
    fused = device.startswith("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=fused)
    start = 0.0
    for i in range(steps):
        if i == warm:
            _sync(device)
            start = time.perf_counter()
        batch = batches.batches[i % len(batches.batches)].to(device)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            loss = model(batch).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return (steps - warm) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--out", default=".")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--zero", type=int, nargs="+", default=[2], help="ZeRO stages to time (bf16)"
    )
    parser.add_argument(
        "--device",
        default="cuda",
        help="cpu only to smoke-test this script (with DS_ACCELERATOR=cpu)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU (or --device cpu for a smoke test)")
    warm = min(
        max(5, args.steps // 3), args.steps - 1
    )  # the first run in a process warms up longer
    from sgt_models.registry import build_adapter

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "image_size": args.image_size,
        "micro_batch": args.micro_batch,
    }
    batches: _Batches | None = None
    for stage in args.zero:
        with tempfile.TemporaryDirectory() as tmp:
            config = validate_run_config(
                {
                    "name": "gpu-check",
                    "output_dir": tmp,
                    "model": {
                        "kind": "reference",
                        "size": "small",
                        "image_size": args.image_size,
                    },
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
                    "zero": {"stage": stage},
                    "checkpoint": {"every": 100000},
                    "logging": {"every": 100000, "tensorboard": False, "progress_bar": False},
                }
            )
            if batches is None:
                batches = _Batches(
                    build_adapter(config.model).collate, args.micro_batch, args.image_size
                )
            batches.position = 0
            stamps: dict[int, float] = {}

            def on_step(m: StepMetrics, stamps: dict[int, float] = stamps) -> None:
                _sync(args.device)
                stamps[m.step] = time.perf_counter()

            result = fit(config, source=batches, hooks=Hooks(on_step=[on_step]))
            steps_s = (args.steps - warm) / (stamps[args.steps] - stamps[warm])
            report[f"zero{stage}_steps_per_s"] = steps_s
            report[f"zero{stage}_samples_per_s"] = steps_s * args.micro_batch
            report[f"zero{stage}_final_loss"] = result.losses[-1]
            print(f"fit ZeRO-{stage}: {steps_s * args.micro_batch:.1f} samples/s", flush=True)
            del result
    assert batches is not None
    torch.manual_seed(0)
    plain = plain_steps_per_s(build_adapter(config.model), batches, args.device, args.steps, warm)
    report["plain_steps_per_s"] = plain
    report["plain_samples_per_s"] = plain * args.micro_batch
    probe = build_adapter(config.model).to(args.device, torch.bfloat16)
    flops = step_flops(probe, batches, args.device)
    peak = peak_matmul_tflops(args.device, n=8192 if args.device.startswith("cuda") else 1024)
    report["params"] = sum(p.numel() for p in probe.parameters())
    report["tflop_per_micro_batch"] = flops / 1e12
    report["peak_bf16_matmul_tflops"] = peak
    for stage in args.zero:
        sps = report[f"zero{stage}_steps_per_s"]
        report[f"zero{stage}_fraction_of_peak"] = flops * sps / 1e12 / peak
        report[f"zero{stage}_overhead_vs_plain"] = plain / sps - 1
    report["plain_fraction_of_peak"] = flops * plain / 1e12 / peak
    for k, v in report.items():
        print(f"{k:<26} {v:.4g}" if isinstance(v, float) else f"{k:<26} {v}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
