"""The ``sgt-train`` command line: ``validate``, ``fit`` and ``export``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgt_train.config import ConfigError, RunConfig, load_run_config
from sgt_train.demo.command import add_demo_command

if TYPE_CHECKING:
    import torch

    from sgt_train.loop import FitResult, Hooks, MicroBatchSource, StepMetrics

__all__ = ["build_parser", "main", "run_fit"]

_log = logging.getLogger("sgt_train")


def _resolve_config(spec: str) -> Path:
    """A YAML path, or the name of a shipped recipe when no such file exists."""
    from sgt_train.recipes import recipe_names, recipe_path

    path = Path(spec)
    if not path.exists() and spec in recipe_names():
        return recipe_path(spec)
    return path


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        config = load_run_config(_resolve_config(args.config), args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.config}: valid run config {config.name!r} (model kind {config.model.kind!r})")
    if args.print:
        print(config.model_dump_json(indent=2))
    return 0


def _configure_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


class _ProgressBar:
    """Rank-0 progress bar: loss, samples/s and ETA."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def start(self, start_step: int, total_steps: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def step(self, metrics: StepMetrics) -> None:
        if self._bar is None:
            return
        self._bar.update(metrics.step - self._bar.n)
        self._bar.set_postfix(
            loss=f"{metrics.loss:.4f}", samples_s=f"{metrics.samples_per_s:.1f}", refresh=False
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_fit(
    config: RunConfig,
    *,
    build_model: Callable[[RunConfig], torch.nn.Module] | None = None,
    source: MicroBatchSource | None = None,
    hooks: Hooks | None = None,
    resume: bool = True,
) -> tuple[int, FitResult | None]:
    """Train as ``sgt-train fit`` does (launcher defaults, logging, progress bar); no exit.

    Returns the exit code (0 also for a preempted run that checkpointed) and the result.
    """
    from sgt_train.launch import set_single_process_env
    from sgt_train.loop import Hooks, fit

    set_single_process_env()
    rank = int(os.environ["RANK"])
    _configure_logging(rank)
    hooks = hooks or Hooks()
    bar = _ProgressBar(enabled=rank == 0 and config.logging.progress_bar)
    hooks.on_start.append(bar.start)
    hooks.on_step.append(bar.step)
    try:
        result = fit(config, build_model=build_model, source=source, hooks=hooks, resume=resume)
    finally:
        bar.close()
    if result.preempted:
        _log.warning(
            "stopped at step %d by SIGTERM; checkpoint %s",
            result.final_step,
            result.last_checkpoint,
        )
    else:
        _log.info("finished at step %d; checkpoint %s", result.final_step, result.last_checkpoint)
    return 0, result


def _cmd_fit(args: argparse.Namespace) -> int:
    from sgt_train.launch import distributed_exit

    local_rank = args.local_rank if args.local_rank is not None else args.launcher_local_rank
    if local_rank is not None:  # the deepspeed launcher passes --local_rank (LOCAL_RANK wins)
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    try:
        config = load_run_config(_resolve_config(args.config), args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    code, _ = run_fit(config, resume=not args.no_resume)
    distributed_exit(code)
    return code


def _cmd_export(args: argparse.Namespace) -> int:
    from sgt_train.export import ExportError, export_run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = export_run(args.run_dir, args.out, ema=args.ema, checkpoint=args.checkpoint)
    except (ExportError, ConfigError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"exported {'EMA' if args.ema else 'raw'} weights to {out}")
    return 0


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="A.B=C",
        help="override a field (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sgt-train``."""
    parser = argparse.ArgumentParser(
        prog="sgt-train",
        description="Semantic Generative Tuning: post-train a unified multimodal model.",
    )
    # `deepspeed --module sgt_train.cli fit ...` inserts --local_rank=N before the command
    parser.add_argument(
        "--local_rank",
        "--local-rank",
        dest="launcher_local_rank",
        type=int,
        default=None,
        help=argparse.SUPPRESS,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check a run config and print what is wrong")
    validate.add_argument("config", help="run config YAML or shipped recipe name")
    _add_overrides(validate)
    validate.add_argument("--print", action="store_true", help="print the resolved config as JSON")
    validate.set_defaults(func=_cmd_validate)

    fit = sub.add_parser(
        "fit",
        help="train a run config (resumes from its newest checkpoint)",
        description="Train on one process, or on many under torchrun or the deepspeed launcher.",
    )
    fit.add_argument("config", help="run config YAML or shipped recipe name")
    _add_overrides(fit)
    fit.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    fit.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    fit.set_defaults(func=_cmd_fit)

    export = sub.add_parser("export", help="write a run's weights in from_pretrained format")
    export.add_argument("run_dir", help="the run folder (output_dir/name)")
    export.add_argument("--out", required=True, help="destination folder")
    which = export.add_mutually_exclusive_group()
    which.add_argument(
        "--ema", dest="ema", action="store_true", default=True, help="EMA weights (default)"
    )
    which.add_argument("--raw", dest="ema", action="store_false", help="raw trained weights")
    export.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: newest)")
    export.set_defaults(func=_cmd_export)
    add_demo_command(sub)
    recipes = sub.add_parser("recipes", help="list the shipped recipes")
    recipes.set_defaults(func=_cmd_recipes)
    return parser


def _cmd_recipes(args: argparse.Namespace) -> int:
    from sgt_train.recipes import recipe_names, recipe_path

    for name in recipe_names():
        print(f"{name}\t{recipe_path(name)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sgt-train``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
