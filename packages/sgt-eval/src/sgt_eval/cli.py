"""The ``sgt-eval`` command: ``run`` benchmarks on an adapter, ``compare`` reports.

A bad input (a missing benchmark folder, a file that is not a report) is reported in one line
naming it, with exit status 2; ``-v`` shows the traceback instead. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgt_eval.report import EvalReport, EvalSettings, ReportError

__all__ = ["main"]

_log = logging.getLogger("sgt_eval")


class UsageError(ValueError):
    """A command line that cannot be run; the message says what to change."""


class _Parser(argparse.ArgumentParser):
    """No prefix matching: an abbreviated option must not silently mean another one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{flag} expects NAME=PATH, got {v!r}")
        out[name] = path
    return out


def _progress_bar() -> Any:
    bars: dict[str, Any] = {}

    def update(name: str, done: int, total: int) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            _log.info("%s: %d/%d", name, done, total)
            return
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(total=total, desc=name, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _build_adapter(config_path: str | None, pretrained: str | None) -> tuple[Any, str]:
    from pydantic import TypeAdapter

    from sgt_models.config import AdapterConfig

    try:
        from sgt_models import registry
    except ImportError as exc:
        raise UsageError(f"sgt_models.registry is not available: {exc}") from exc
    if pretrained is not None:
        adapter = registry.load_adapter(pretrained)
        return adapter, str(adapter.kind)
    if config_path is None:
        raise UsageError("run needs --model-config FILE or --pretrained DIR")
    try:
        raw = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--model-config {config_path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--model-config {config_path}: not JSON ({exc})") from None
    config = TypeAdapter(AdapterConfig).validate_python(raw)
    return registry.build_adapter(config), config.kind


def _cmd_run(args: argparse.Namespace) -> int:
    from sgt_eval.benchmarks.understanding import BENCHMARK_LOADERS, OFFICIAL_ROWS
    from sgt_eval.harness import build_report, evaluate_understanding

    settings = EvalSettings(
        seed=args.seed,
        precision=args.precision,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        images_per_prompt=args.images_per_prompt,
    )
    benches = _pairs(args.bench, "--bench")
    roots = _pairs(args.image_root, "--image-root")
    if not benches and not args.geneval:
        raise UsageError(
            "nothing to evaluate: give --bench NAME=PATH (one of "
            f"{', '.join(sorted(BENCHMARK_LOADERS))}) or --geneval [SPLIT=]metadata.jsonl"
        )
    unknown = sorted(set(benches) - set(BENCHMARK_LOADERS))
    if unknown:
        raise UsageError(f"unknown benchmarks {unknown}; known: {sorted(BENCHMARK_LOADERS)}")
    missing = [
        f"{flag} {key}={path}"
        for flag, pairs in (("--bench", benches), ("--image-root", roots))
        for key, path in pairs.items()
        if not Path(path).exists()
    ] + [f"--geneval {s}" for s in args.geneval if not Path(s.rpartition("=")[2]).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {'; '.join(missing)}")
    if args.pretrained is not None and not Path(args.pretrained).is_dir():
        raise UsageError(f"--pretrained {args.pretrained}: no such folder")
    adapter, kind = _build_adapter(args.model_config, args.pretrained)
    progress = _progress_bar()
    results = []
    for name, path in benches.items():
        kwargs: dict[str, Any] = {"expected_rows": None if args.subset else OFFICIAL_ROWS[name]}
        if name in roots:
            kwargs["image_root" if name != "sibench" else "media_root"] = roots[name]
        bench = BENCHMARK_LOADERS[name](path, **kwargs)
        scored, _ = evaluate_understanding(adapter, bench, settings, progress)
        results.extend(scored)
    if args.geneval:
        from sgt_eval.benchmarks.generation import load_geneval_prompts
        from sgt_eval.harness import run_geneval

        detector, classifier = _geneval_models(args)
        for spec in args.geneval:
            split, _, path = spec.rpartition("=")
            prompts, rev = load_geneval_prompts(path, None if args.subset else 553)
            results.append(
                run_geneval(
                    adapter,
                    prompts,
                    detector,
                    classifier,
                    settings,
                    split or "original",
                    rev,
                    progress=progress,
                )
            )
    report = build_report(args.model_name or kind, kind, settings, results, args.pretrained)
    report.write(args.out)
    print(f"wrote {args.out}")
    return 0


def _geneval_models(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.detector == "color-blob":
        from sgt_eval.detectors import ColorBlobDetector, NearestColorClassifier

        return ColorBlobDetector(), NearestColorClassifier()
    from sgt_eval.hf import ClipColorClassifier, TransformersDetector

    if args.clip_path is None:
        raise UsageError("--geneval with a transformers detector needs --clip-path")
    return TransformersDetector(args.detector), ClipColorClassifier(args.clip_path)


def _cmd_compare(args: argparse.Namespace) -> int:
    from sgt_eval.compare import write_comparison

    reports = [EvalReport.read(p) for p in args.reports]
    for path in write_comparison(reports, args.out, plots=not args.no_plots):
        print(path)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sgt-eval", description=__doc__)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log more; show tracebacks of errors"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="evaluate an adapter on local benchmark copies")
    run.add_argument("--model-config", help="AdapterConfig JSON file")
    run.add_argument("--pretrained", help="folder written by the adapter's save_pretrained")
    run.add_argument("--model-name")
    run.add_argument("--bench", action="append", default=[], help="NAME=PATH (repeatable)")
    run.add_argument("--image-root", action="append", default=[], help="NAME=DIR (repeatable)")
    run.add_argument(
        "--geneval", action="append", default=[], help="[SPLIT=]metadata.jsonl (original/long)"
    )
    run.add_argument(
        "--detector", default="color-blob", help="'color-blob' or a local model folder"
    )
    run.add_argument("--clip-path", help="local CLIP folder for the GenEval colour rule")
    run.add_argument("--subset", action="store_true", help="skip published row-count checks")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--max-new-tokens", type=int, default=32)
    run.add_argument("--images-per-prompt", type=int, default=4)
    run.add_argument("--out", required=True, help="EvalReport JSON to write")
    run.set_defaults(func=_cmd_run)

    cmp_ = sub.add_parser("compare", help="markdown table and figures from reports")
    cmp_.add_argument("reports", nargs="+", help="EvalReport JSON files; the first is the baseline")
    cmp_.add_argument("--out", required=True, help="output folder")
    cmp_.add_argument("--no-plots", action="store_true")
    cmp_.set_defaults(func=_cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sgt-eval`` console script; returns the exit status."""
    from sgt_eval.benchmarks.tables import BenchmarkDataError

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # inside the try: a closed pipe shows up at the flush
    except (UsageError, ReportError, BenchmarkDataError) as exc:
        if args.verbose:
            raise
        print(f"sgt-eval {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(
            f"sgt-eval {args.command}: interrupted; the same command starts it again "
            "(a report is written only at the end)",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
