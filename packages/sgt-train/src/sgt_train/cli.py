"""The ``sgt-train`` command line: ``validate``, ``fit``, ``export``, ``recipes`` and ``demo``.

A mistake in the input (a config, a store, a run folder) is reported in a line or two naming the
offending thing, with a non-zero exit status; ``--debug`` shows the traceback instead. Ctrl-C
exits with status 130 after one line saying where the command stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgt_train._preflight import check_data, format_counts, load_cli_config
from sgt_train.config import ConfigError, RunConfig, load_run_config
from sgt_train.demo.command import add_demo_command

if TYPE_CHECKING:
    import torch

    from sgt_train.loop import FitResult, Hooks, MicroBatchSource, StepMetrics

__all__ = ["build_parser", "main", "run_fit"]

_log = logging.getLogger("sgt_train")


#: Exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """No prefix matching: ``--annotation`` must not silently mean ``--annotations``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _report_data_problems(spec: str, problems: list[str]) -> None:
    print(
        f"{spec}: the data mixture cannot be trained ({len(problems)} problem(s))", file=sys.stderr
    )
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        config = load_cli_config(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not args.config_only:
        check = check_data(config, world_size=args.world_size)
        if not check.ok:
            _report_data_problems(args.config, check.problems)
            return 2
    print(f"{args.config}: valid run config {config.name!r} (model kind {config.model.kind!r})")
    if not args.config_only:
        print("\n".join(format_counts(config, check)))
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
    from sgt_train.launch import destroy_process_group, distributed_exit

    local_rank = args.local_rank if args.local_rank is not None else args.launcher_local_rank
    if local_rank is not None:  # the deepspeed launcher passes --local_rank (LOCAL_RANK wins)
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    try:
        config = load_cli_config(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if problems := check_data(config, world_size=_world_size()).problems:
        if os.environ.get("RANK", "0") == "0":  # every rank stops; one reports
            _report_data_problems(args.config, problems)
        return 2
    from sgt_train.loop import Hooks, run_dir_of

    reached = [0]
    hooks = Hooks(on_step=[lambda m: reached.__setitem__(0, m.step)])
    hooks.on_start.append(lambda start, total: reached.__setitem__(0, start))
    try:
        code, _ = run_fit(config, hooks=hooks, resume=not args.no_resume)
    except KeyboardInterrupt:
        if args.debug:
            raise
        from sgt_train.checkpoint import latest_checkpoint

        destroy_process_group()
        if os.environ.get("RANK", "0") != "0":  # one line per run, not per rank
            return EXIT_INTERRUPTED
        newest = latest_checkpoint(run_dir_of(config) / "checkpoints")
        where = f"sgt-train fit: interrupted after step {reached[0]} of {config.steps}"
        command = "the same command without --no-resume" if args.no_resume else "the same command"
        if newest is None:
            print(f"{where}; no checkpoint yet, so the same command starts over", file=sys.stderr)
        else:
            print(
                f"{where}; {command} resumes from {newest} (checkpoint.every "
                f"{config.checkpoint.every})",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug or not _is_input_error(exc):
            raise
        destroy_process_group()
        print(f"sgt-train fit: error: {exc} (--debug shows the traceback)", file=sys.stderr)
        return 1
    distributed_exit(code)
    return code


def _is_input_error(exc: BaseException) -> bool:
    """Errors that mean bad input (a damaged store, a mismatched checkpoint), not a bug."""
    from sgt_data.errors import SgtDataError

    return isinstance(exc, SgtDataError | ConfigError | ValueError | FileNotFoundError)


def _cmd_export(args: argparse.Namespace) -> int:
    from sgt_train.export import ExportError, export_run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sgt_train.checkpoint import UnsafeCheckpointError

    try:
        ema = args.ema
        if ema is None:  # EMA weights when the run kept an average (recipes without EMA: raw)
            from sgt_train.loop import RUN_CONFIG_FILE

            config_file = Path(args.run_dir) / RUN_CONFIG_FILE
            ema = config_file.is_file() and load_run_config(config_file).ema.decay > 0
        out = export_run(args.run_dir, args.out, ema=ema, checkpoint=args.checkpoint)
    except (ExportError, ConfigError, UnsafeCheckpointError) as exc:
        if args.debug:
            raise
        print(exc, file=sys.stderr)
        return 2
    print(f"exported {'EMA' if ema else 'raw'} weights to {out}")
    return 0


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the Python traceback of an error instead of a one-line message",
    )


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
    parser = _Parser(
        prog="sgt-train",
        description="Semantic Generative Tuning: post-train a unified multimodal model.",
    )
    _add_debug(parser)
    # `deepspeed --module sgt_train.cli fit ...` inserts --local_rank=N before the command
    parser.add_argument(
        "--local_rank",
        "--local-rank",
        dest="launcher_local_rank",
        type=int,
        default=None,
        help=argparse.SUPPRESS,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    validate = sub.add_parser(
        "validate",
        help="check a run config and its stores; print what is wrong or the per-epoch counts",
        description="Check a run config, then open every store of its data mixture read-only "
        "(manifest and sample index only) and report a missing store, a folder that is not a "
        "store, a source whose task the store lacks or that gets no samples per epoch; "
        "otherwise print each source's samples per epoch.",
    )
    validate.add_argument("config", help="run config YAML or shipped recipe name")
    _add_overrides(validate)
    validate.add_argument("--print", action="store_true", help="print the resolved config as JSON")
    validate.add_argument(
        "--config-only",
        action="store_true",
        help="check the config alone, without opening its stores",
    )
    validate.add_argument(
        "--world-size",
        type=int,
        default=1,
        help="processes the run will use, for the per-epoch counts (default 1)",
    )
    _add_debug(validate)
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
    _add_debug(fit)
    fit.set_defaults(func=_cmd_fit)

    export = sub.add_parser("export", help="write a run's weights in from_pretrained format")
    export.add_argument("run_dir", help="the run folder (output_dir/name)")
    export.add_argument("--out", required=True, help="destination folder")
    which = export.add_mutually_exclusive_group()
    which.add_argument(
        "--ema",
        dest="ema",
        action="store_true",
        default=None,
        help="EMA weights (the default when the run kept an EMA, ema.decay > 0)",
    )
    which.add_argument(
        "--raw",
        dest="ema",
        action="store_false",
        help="raw trained weights (the default without EMA)",
    )
    export.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: newest)")
    _add_debug(export)
    export.set_defaults(func=_cmd_export)
    demo = add_demo_command(sub)
    _add_debug(demo)
    from sgt_train.sweep import add_sweep_command

    add_sweep_command(sub)
    recipes = sub.add_parser(
        "recipes",
        help="list the shipped recipes, or print one as YAML to start a config of your own",
        description="Without NAME: each shipped recipe and its file. With NAME: that recipe "
        "with the --set overrides applied, validated, as YAML (e.g. `> my-run.yaml`).",
    )
    recipes.add_argument("name", nargs="?", help="print this recipe (or YAML config) as YAML")
    _add_overrides(recipes)
    _add_debug(recipes)
    recipes.set_defaults(func=_cmd_recipes)
    return parser


def _cmd_recipes(args: argparse.Namespace) -> int:
    from sgt_train.recipes import recipe_names, recipe_path

    if args.name is None:
        if args.overrides:
            print("sgt-train recipes: --set needs a recipe NAME", file=sys.stderr)
            return 2
        for name in recipe_names():
            print(f"{name}\t{recipe_path(name)}")
        return 0
    import yaml

    from sgt_train._preflight import resolve_config
    from sgt_train.config import apply_overrides

    try:
        load_cli_config(args.name, args.overrides)  # valid, with the overrides
        path = resolve_config(args.name)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    data = apply_overrides(yaml.safe_load(path.read_text(encoding="utf-8")), args.overrides)
    print(f"# {args.name}" + "".join(f" --set {o}" for o in args.overrides))
    print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sgt-train``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows up at the flush
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"sgt-train {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of our output (`| head`) went away: stop quietly, as cat and grep do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return result


if __name__ == "__main__":
    raise SystemExit(main())
