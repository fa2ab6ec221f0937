"""The ``sgt-train demo`` subcommand: argument parsing, progress bars, timing."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sgt_train.demo.pipeline import DEMO_SIZES

__all__ = ["add_demo_command"]


class _StageBars:
    """One tqdm bar per stage; a new stage name closes the previous bar."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            self.stage = stage  # still known for the Ctrl-C message
            return
        if stage != self.stage:
            self.close()
            from tqdm import tqdm

            self.stage = stage
            self.bar = tqdm(
                total=total, desc=f"{stage:<13}", unit="it", dynamic_ncols=True, leave=True
            )
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _cmd_demo(args: argparse.Namespace) -> int:
    # Before torch loads: OpenMP threads that spin-wait collapse on a busy machine; the demo is CPU-only.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from sgt_train.demo.pipeline import DEMO_SIZES, demo_scene_config, run_demo
    from sgt_train.launch import distributed_exit

    start = time.perf_counter()
    bars = _StageBars(enabled=not args.no_progress)
    if args.data_only:
        from sgt_train.demo.stores import build_stores

        spec = DEMO_SIZES[args.size]
        try:
            stores = build_stores(
                Path(args.out), num_train=spec.num_train, num_eval=spec.num_eval,
                seed=args.seed, config=demo_scene_config(),
            )  # fmt: skip
        except KeyboardInterrupt:
            if getattr(args, "debug", False):
                raise
            print(
                "sgt-train demo: interrupted while writing the stores; the same command "
                "writes them again",
                file=sys.stderr,
            )
            return 130
        m = stores.manifests
        print(f"{stores.world.root}: the scene world (images, COCO instances, VQA, prompts)")
        print(f"{stores.scenes}: {m['scenes'].num_samples} samples (segmentation, depth)")
        print(f"{stores.vqa}: {m['vqa'].num_samples} samples (understanding)")
        print(f"{stores.t2i}: {m['t2i'].num_samples} samples (text-to-image)")
        print(f"{stores.eval_semantic}: {m['eval_semantic'].num_samples} held-out samples")
        return 0
    try:
        result = run_demo(args.out, size=args.size, seed=args.seed, progress=bars)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        from sgt_train.launch import destroy_process_group

        # stopping: a second ^C (or one delivered late) must not interrupt the clean-up
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            destroy_process_group()
            bars.close()
            print(
                f"sgt-train demo: interrupted during stage {bars.stage or 'start'!r}; the same "
                "command runs the demo again from the start (it does not resume)",
                file=sys.stderr,
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        return 130
    finally:
        bars.close()
    total = time.perf_counter() - start
    summary = result.summary.read_text(encoding="utf-8")
    table = [line for line in summary.splitlines() if line.startswith("|")]
    end = next(i for i, line in enumerate(table) if line.startswith("| stage"))
    print("\n".join(table[:end]))
    print(f"\nseeds: {result.seeds}")
    print(f"report: {result.summary} (figures, EvalReport JSON files in {result.report_dir})")
    print(f"total time: {total:.1f} s")
    distributed_exit(0)
    return 0


def add_demo_command(sub: Any) -> argparse.ArgumentParser:
    """Register ``demo`` on the ``sgt-train`` subcommand parsers; returns its parser."""
    demo = sub.add_parser(
        "demo",
        help="the whole SGT loop on a CPU in minutes (data, training, evaluation, report)",
        description=(
            "Generate the synthetic scene world, convert it into stores, post-train the shipped "
            "tiny base model with DeepSpeed (a VQA-only control and SGT, the sgt-mini sweep's "
            "vqa-only and segmentation arms), evaluate base, control and SGT on held-out scenes "
            "and write a report to OUT/report."
        ),
    )
    demo.add_argument(
        "--size",
        choices=sorted(DEMO_SIZES),
        default="default",
        help="default: about 5-10 minutes on 2 cores; tiny: about 1-2 minutes",
    )
    demo.add_argument("--out", default="sgt-demo", help="output folder (default: ./sgt-demo)")
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the world, training and sampling"
    )
    demo.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--verbose", action="store_true", help="log at INFO level")
    demo.add_argument(
        "--data-only",
        action="store_true",
        help="only write the scene world and its stores under OUT/stores (seconds), e.g. to "
        "train `tiny-sgt` on them",
    )
    demo.set_defaults(func=_cmd_demo)
    parser: argparse.ArgumentParser = demo
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `sgt-train demo`")
