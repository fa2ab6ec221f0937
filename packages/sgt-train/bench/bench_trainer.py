"""Steps/s of the sgt-train DeepSpeed trainer against a plain PyTorch loop, same model, same data.

Both train the tiny reference adapter (``ReferenceAdapterConfig(size="tiny")``) on the same
pre-built micro-batches (2:1 segmentation : VQA interleave) with AdamW, the same LR schedule,
gradient accumulation and clipping, in this process. The trainer's time excludes start-up and
checkpoints (timed between its step hooks). Target: DeepSpeed overhead <= 15 %.

    python packages/sgt-train/bench/bench_trainer.py [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np
import torch

from sgt_data import Sample, TaskKind
from sgt_models.registry import build_adapter
from sgt_train import validate_run_config
from sgt_train.loop import Hooks, StepMetrics, fit
from sgt_train.schedule import make_scheduler

WARMUP = 3
PATTERN = (TaskKind.SEGMENTATION, TaskKind.SEGMENTATION, TaskKind.UNDERSTANDING)


def _sample(index: int, task: TaskKind) -> Sample:
    rng = np.random.default_rng(index)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    if task is TaskKind.UNDERSTANDING:
        return Sample(
            sample_id=f"b:{index}",
            source="bench",
            task=task,
            instruction="How many shapes?",
            image=image,
            answer="three",
        )
    return Sample(
        sample_id=f"b:{index}",
        source="bench",
        task=task,
        instruction="Segment instances with different colors.",
        image=image,
        target_image=255 - image,
    )


class _Batches:
    """Pre-built micro-batches, replayed in a cycle (resumable, as the trainer wants)."""

    def __init__(self, micro_batch_size: int, count: int) -> None:
        self.batches = [
            [_sample(m * micro_batch_size + j, PATTERN[m % 3]) for j in range(micro_batch_size)]
            for m in range(count)
        ]
        self.position = 0

    def __iter__(self) -> Iterator[list[Sample]]:
        while True:
            batch = self.batches[self.position % len(self.batches)]
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def _config(out: str, steps: int, stage: int) -> Any:
    return validate_run_config(
        {
            "name": f"bench-z{stage}",
            "output_dir": out,
            "model": {"kind": "reference", "size": "tiny"},
            "data": {
                "sources": [
                    {"name": "seg", "store": "-", "task": "segmentation"},
                    {"name": "vqa", "store": "-", "task": "understanding"},
                ],
                "pattern": ["seg", "seg", "vqa"],
            },
            "optimizer": {"lr": 1e-3, "weight_decay": 0.01},
            "schedule": {"kind": "cosine", "warmup_steps": 2},
            "loss_weights": {"ce": 1.5, "mse": 1.0},
            "steps": steps,
            "micro_batch_size": 2,
            "gradient_accumulation": 2,
            "zero": {"stage": stage},
            "checkpoint": {"every": 10_000, "keep_last": 1},
            "logging": {"every": 10_000, "tensorboard": False, "progress_bar": False},
        }
    )


def plain_loop(config: Any) -> float:
    """Steps/s of a hand-written PyTorch loop doing the same work."""
    torch.manual_seed(config.seed)
    model = build_adapter(config.model)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.optimizer.lr,
        betas=config.optimizer.betas,
        eps=config.optimizer.eps,
    )
    sched = make_scheduler(opt, config.optimizer.lr, config.schedule, config.steps)
    batches = iter(_Batches(config.micro_batch_size, 3 * config.gradient_accumulation))
    params = decay + no_decay
    stamps = []
    for _step in range(config.steps):
        for _ in range(config.gradient_accumulation):
            out = model(model.collate(next(batches)), config.loss_weights)
            (out.total / config.gradient_accumulation).backward()
            _ = {k: float(v.detach()) for k, v in out.parts.items()}
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return _median_rate(stamps[WARMUP - 1 :])


def trainer(config: Any) -> float:
    """Steps/s of ``sgt_train.fit`` between step hooks (start-up and checkpoints excluded)."""
    stamps: dict[int, float] = {}

    def on_step(m: StepMetrics) -> None:
        stamps[m.step] = time.perf_counter()

    fit(
        config,
        source=_Batches(config.micro_batch_size, 3 * config.gradient_accumulation),
        hooks=Hooks(on_step=[on_step]),
        resume=False,
    )
    return _median_rate([stamps[s] for s in range(WARMUP, config.steps + 1)])


def _median_rate(stamps: list[float]) -> float:
    """Steps/s from the median step time (robust to bursts of load on a shared machine)."""
    return 1.0 / float(np.median(np.diff(stamps)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # DeepSpeed's start-up may change it; keep both equal
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    rows: dict[str, list[float]] = {
        "plain PyTorch": [],
        "sgt-train ZeRO-0": [],
        "sgt-train ZeRO-2": [],
    }
    with tempfile.TemporaryDirectory(prefix="sgt-bench-") as tmp:
        for _ in range(args.repeats):  # interleaved, best of repeats: the machine is shared
            torch.set_num_threads(args.threads)
            rows["plain PyTorch"].append(plain_loop(_config(tmp, args.steps, 0)))
            rows["sgt-train ZeRO-0"].append(trainer(_config(tmp + "/a", args.steps, 0)))
            rows["sgt-train ZeRO-2"].append(trainer(_config(tmp + "/b", args.steps, 2)))
    base = max(rows["plain PyTorch"])
    print(
        f"\ntiny reference model, micro-batch 2 x accumulation 2, {args.steps} steps "
        f"({WARMUP} warm-up), median step time, best of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'loop':<20} {'steps/s':>9} {'vs plain':>9} {'overhead':>9}")
    for name, values in rows.items():
        best = max(values)
        print(f"{name:<20} {best:>9.3f} {best / base:>9.3f} {100 * (base / best - 1):>8.1f}%")
    print("target: DeepSpeed overhead <= 15 %")


if __name__ == "__main__":
    main()
