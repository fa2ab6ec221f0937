"""Steps/s of the sgt-train DeepSpeed trainer against a plain PyTorch loop, same model, same data.

Both train the tiny reference adapter (``ReferenceAdapterConfig(size="tiny")``) in this process on
the same micro-batches, collated once up front (2:1 segmentation : VQA interleave), with
``torch.optim.AdamW``, the same LR schedule, gradient accumulation and clipping, and the same torch
thread settings (checked after every run). Each run drops its first ``--warmup`` steps; runs
alternate in a rotating order (reversed every other repeat) after one unmeasured warm-up run of
each loop; a loop's figure is the median over repeats of its runs' median step time. Wall time is
the headline; process CPU time per step is printed beside it (steadier when other jobs share the
machine). The trainer's time excludes start-up and the final checkpoint (between step hooks).
Target: DeepSpeed overhead <= 15 % for ZeRO-0 and ZeRO-2; ZeRO-1 and ZeRO-3 are shown for
information. One-process ZeRO-1/2 runs take the single-rank path of ``sgt_train.ds_config``
(gradients stay in ``param.grad``, no identity all-reduce).

    python packages/sgt-train/bench/bench_trainer.py [--steps 16] [--repeats 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np
import torch

from sgt_data import Sample, TaskKind
from sgt_models.registry import build_adapter
from sgt_train import validate_run_config
from sgt_train.loop import Hooks, StepMetrics, fit
from sgt_train.schedule import make_scheduler

PATTERN = (TaskKind.SEGMENTATION, TaskKind.SEGMENTATION, TaskKind.UNDERSTANDING)
#: ZeRO stages timed; the target applies to 0 and 2, stages 1 and 3 are shown for information.
STAGES = (0, 1, 2, 3)
TARGETED = ("sgt-train ZeRO-0", "sgt-train ZeRO-2")
TARGET = 0.15
#: (wall, process CPU) time stamps, one pair after each optimizer step.
Stamps = list[tuple[float, float]]


def _stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


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


def _collated_batches(config: Any, count: int) -> list[Any]:
    """``count`` micro-batches in the 2:1 pattern, collated once by the adapter's processor."""
    collate = build_adapter(config.model).collate
    mb = config.micro_batch_size
    return [
        collate([_sample(m * mb + j, PATTERN[m % len(PATTERN)]) for j in range(mb)])
        for m in range(count)
    ]


class _Batches:
    """Ready micro-batches replayed in a cycle (resumable, as the trainer wants)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches
        self.position = 0

    def __iter__(self) -> Iterator[Any]:
        while True:
            batch = self.batches[self.position % len(self.batches)]
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
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
            "grad_clip": 1.0,
            "zero": {"stage": stage},
            "checkpoint": {"every": 10_000, "keep_last": 1},
            "logging": {"every": 10_000, "tensorboard": False, "progress_bar": False},
        }
    )


def plain_loop(config: Any, batches: list[Any]) -> Stamps:
    """A hand-written PyTorch loop doing the trainer's work: AdamW (decay on >= 2-d weights),
    loss / accumulation, the loss parts read back per micro-batch, clipping, LR schedule."""
    torch.manual_seed(config.seed)
    model = build_adapter(config.model)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.optimizer.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.optimizer.lr,
        betas=config.optimizer.betas,
        eps=config.optimizer.eps,
    )
    sched = make_scheduler(opt, config.optimizer.lr, config.schedule, config.steps)
    source = iter(_Batches(batches))
    params = decay + no_decay
    stamps: Stamps = []
    for _step in range(config.steps):
        for _ in range(config.gradient_accumulation):
            out = model(next(source).to("cpu", None), config.loss_weights)
            (out.total / config.gradient_accumulation).backward()
            _ = float(out.total.detach()), {k: float(v.detach()) for k, v in out.parts.items()}
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(_stamp())
    return stamps


def trainer(config: Any, batches: list[Any]) -> Stamps:
    """``sgt_train.fit``, stamped by its step hook (start-up and checkpoints excluded)."""
    stamps: Stamps = []

    def on_step(m: StepMetrics) -> None:
        stamps.append(_stamp())

    fit(config, source=_Batches(batches), hooks=Hooks(on_step=[on_step]), resume=False)
    return stamps


def _trainer_run(stage: int, batches: list[Any], out: str, steps: int) -> Stamps:
    return trainer(_config(out, steps, stage), batches)


def _median_step(stamps: Stamps, warmup: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds per step after ``warmup`` steps."""
    kept = np.asarray(stamps[warmup - 1 :])
    steps = np.diff(kept, axis=0)
    return float(np.median(steps[:, 0])), float(np.median(steps[:, 1]))


def _threads() -> tuple[int, int, str]:
    return (
        torch.get_num_threads(),
        torch.get_num_interop_threads(),
        os.environ.get("OMP_NUM_THREADS", "-"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped from every run")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)  # before any inter-op work; the loops use none
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    threads = _threads()
    loops: dict[str, Callable[[str, int], Stamps]] = {}
    with tempfile.TemporaryDirectory(prefix="sgt-bench-") as tmp:
        batches = _collated_batches(_config(tmp, args.steps, 0), 3 * 2)
        loops = {"plain PyTorch": lambda out, steps: plain_loop(_config(out, steps, 0), batches)}
        for stage in STAGES:
            loops[f"sgt-train ZeRO-{stage}"] = functools.partial(_trainer_run, stage, batches)
        failed: dict[str, str] = {}
        for i, name in enumerate(list(loops)):  # unmeasured warm-up of each loop
            try:
                loops[name](f"{tmp}/warm{i}", args.warmup + 2)
            except Exception as exc:  # an information row may fail; the table says why
                if name in TARGETED or name == "plain PyTorch":
                    raise
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
                del loops[name]
        names = list(loops)
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for r in range(args.repeats):
            # rotate the order, reversed every other repeat: no loop always runs first or always
            # follows the same other loop
            order = [names[(r // 2 + k) % len(names)] for k in range(len(names))]
            for k, name in enumerate(order[::-1] if r % 2 else order):
                stamps = loops[name](f"{tmp}/r{r}k{k}", args.steps)
                rows[name].append(_median_step(stamps, args.warmup))
                if _threads() != threads:
                    raise RuntimeError(f"{name} changed torch threads {threads} -> {_threads()}")
    per_loop = {name: np.median(np.asarray(v), axis=0) for name, v in rows.items()}
    base_wall, base_cpu = per_loop["plain PyTorch"]
    print(
        f"\ntiny reference model, micro-batch 2 x accumulation 2, fp32, AdamW, clip 1.0; "
        f"{args.steps} steps per run ({args.warmup} dropped), median of {args.repeats} "
        f"alternating runs; torch threads {threads[0]}, interop {threads[1]}, "
        f"OMP_NUM_THREADS {threads[2]}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'loop':<18} {'steps/s':>8} {'overhead':>9} {'CPU ms/step':>12} {'CPU overhead':>13}"
        f"  {'per-run steps/s':<}"
    )
    for name, (wall, cpu) in per_loop.items():
        runs = " ".join(f"{1 / w:.2f}" for w, _ in rows[name])
        note = "" if name in TARGETED or name == "plain PyTorch" else "  (information)"
        print(
            f"{name:<18} {1 / wall:>8.3f} {100 * (wall / base_wall - 1):>8.1f}% "
            f"{1000 * cpu:>12.1f} {100 * (cpu / base_cpu - 1):>12.1f}%  {runs}{note}"
        )
    for name, reason in failed.items():
        print(f"{name:<18} {'failed':>8}  (information) {reason}")
    verdicts = []
    for metric, column, base in (("steps/s", 0, base_wall), ("CPU time", 1, base_cpu)):
        missed = [n for n in TARGETED if per_loop[n][column] / base - 1 > TARGET]
        verdicts.append(f"{metric} {'MISSED by ' + ', '.join(missed) if missed else 'met'}")
    print(
        f"target: DeepSpeed overhead <= {100 * TARGET:.0f} % for ZeRO-0 and ZeRO-2: "
        f"{'; '.join(verdicts)}"
    )


if __name__ == "__main__":
    main()
