"""The ``sgt-train`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sgt_train.config import ConfigError, load_run_config

__all__ = ["main"]


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        config = load_run_config(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.config}: valid run config {config.name!r} (model kind {config.model.kind!r})")
    if args.print:
        print(config.model_dump_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sgt-train``."""
    parser = argparse.ArgumentParser(
        prog="sgt-train",
        description="Semantic Generative Tuning: post-train a unified multimodal model.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check a run config and print what is wrong")
    validate.add_argument("config", help="run config YAML")
    validate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="A.B=C",
        help="override a field (repeatable)",
    )
    validate.add_argument("--print", action="store_true", help="print the resolved config as JSON")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sgt-train``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
