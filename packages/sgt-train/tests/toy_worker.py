"""A training worker for the subprocess tests: the CLI's fit path with the toy sample source and
the toy adapter or the tiny reference adapter.

Writes ``result_rank{R}.json`` (losses, a digest of the final weights, how it ended) so that the
tests check what the run produced, not only its exit code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch

from sgt_train import validate_run_config
from sgt_train.cli import run_fit
from sgt_train.launch import distributed_exit
from sgt_train.loop import Hooks, StepMetrics
from sgt_train_toy import ToyAdapter, ToySource


def make_config(
    out: str, stage: int, steps: int, every: int, name: str = "toy"
) -> dict[str, object]:
    return {
        "name": name,
        "output_dir": out,
        "seed": 7,
        "model": {"kind": "reference", "size": "tiny"},
        "data": {
            "sources": [
                {"name": "seg", "store": "toy", "task": "segmentation"},
                {"name": "vqa", "store": "toy", "task": "understanding"},
            ],
            "pattern": ["seg", "seg", "vqa"],
        },
        "optimizer": {"lr": 3e-3, "weight_decay": 0.01},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "loss_weights": {"ce": 1.5, "mse": 1.0},
        "steps": steps,
        "micro_batch_size": 2,
        "gradient_accumulation": 2,
        "zero": {"stage": stage},
        "ema": {"decay": 0.9},
        "checkpoint": {"every": every, "keep_last": 2},
        "logging": {"every": 1, "tensorboard": False, "progress_bar": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--kill-at-save", type=int, default=None, help="SIGKILL itself mid-save")
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--model", choices=["toy", "reference"], default="toy")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = validate_run_config(make_config(args.out, args.stage, args.steps, args.every))
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))

    def on_step(metrics: StepMetrics) -> None:
        print(f"STEP {metrics.step}", flush=True)
        time.sleep(args.step_sleep)

    def on_staged(staging: Path) -> None:
        if args.kill_at_save is not None and staging.name.endswith(f"step_{args.kill_at_save:08d}"):
            os.kill(os.getpid(), 9)

    code, result = run_fit(
        config,
        # None: the config's own adapter (the tiny reference model) through sgt_models.registry
        build_model=(lambda _: ToyAdapter()) if args.model == "toy" else None,
        source=ToySource(config.data, config.micro_batch_size, rank, world),
        hooks=Hooks(on_step=[on_step], on_checkpoint_staged=on_staged),
    )
    assert result is not None
    digest = hashlib.sha256(
        b"".join(p.detach().numpy().tobytes() for p in result.model.parameters())
    ).hexdigest()
    record = {
        "rank": rank,
        "world_size": world,
        "start_step": result.start_step,
        "final_step": result.final_step,
        "losses": result.losses,
        "preempted": result.preempted,
        "checkpoint": str(result.last_checkpoint),
        "weights_sha256": digest,
    }
    Path(args.out, f"result_rank{rank}.json").write_text(json.dumps(record))
    distributed_exit(code)


if __name__ == "__main__":
    main()
