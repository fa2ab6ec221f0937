"""The ``sgt-models`` command: ``sgt-models check DIR`` checks a checkpoint folder from its headers."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sgt-models",
        description="Model-family tools of SGT.",
        allow_abbrev=False,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="check a checkpoint folder (official BAGEL / OmniGen2, or SGT-saved) from its headers",
        description=(
            "Recognise the model family of DIR, build its architecture from the folder's configs "
            "on the meta device, read only the safetensors headers, and print the parameter "
            "counts and every missing, unexpected or shape-mismatched tensor. Exit status 1 if "
            "anything is wrong, 2 if DIR cannot be checked at all."
        ),
        allow_abbrev=False,
    )
    check.add_argument("folder", metavar="DIR", help="the checkpoint folder")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    commands.add_parser("families", help="list the model families sgt-models knows")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sgt-models``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "families":
            from sgt_models.registry import known_kinds

            print("\n".join(known_kinds()))
            return 0
        from sgt_models.check import check_folder, format_report

        report = check_folder(args.folder)
        if args.json:
            print(json.dumps(report.to_json(), indent=2))
        else:
            print(format_report(report))
        return 0 if report.ok else 1
    except BrokenPipeError:  # `sgt-models check DIR | head`
        sys.stderr.close()
        return 0
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"sgt-models: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
