"""The ``sgt-data`` command: convert annotations into sample stores, merge, inspect, verify, preview.

sgt-data convert coco --annotations instances.json --images DIR --out STORE
sgt-data convert coco-panoptic --annotations panoptic.json --panoptic-dir PNGS --images DIR --out STORE
sgt-data convert coco-stuff --maps PNGS --images DIR --out STORE
sgt-data convert sa1b --input DIR --out STORE
sgt-data convert vqa --annotations llava.jsonl --images DIR --out STORE
sgt-data convert captions --annotations captions.jsonl --images DIR --out STORE
sgt-data merge PART... --out STORE
sgt-data inspect STORE
sgt-data verify STORE
sgt-data preview STORE --out sheet.png
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgt_data.errors import SgtDataError

__all__ = ["main"]

_log = logging.getLogger("sgt_data.cli")


class _Parser(argparse.ArgumentParser):
    """No prefix matching: ``--annotation`` must not silently mean ``--annotations``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser, targets: bool = True) -> None:
    """Options of every converter; ``targets``: also the edge and depth target options (not
    for the VQA and caption formats, which draw no targets from them)."""
    p.add_argument(
        "--out",
        required=True,
        help="store directory to create (or resume), or a URL (s3://bucket/prefix: converted "
        "into a local folder, then uploaded)",
    )
    p.add_argument(
        "--name", help="store name, the prefix of sample ids (default: the --out folder name)"
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="where items are converted: worker processes here (default), or one Ray task per "
        "shard over a cluster, with --workers processes each (pip install 'sgt-data[ray]')",
    )
    p.add_argument(
        "--address",
        help="with --engine ray: the Ray cluster to join (auto, or HOST:PORT; default: start "
        "one on this machine)",
    )
    p.add_argument(
        "--shard", default="0/1", help="convert only block i of N of the items, e.g. 3/16"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="input items per committed batch, the unit a worker converts (default 64)",
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip bad items, recording why in the manifest"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete an existing store at --out first"
    )
    p.add_argument(
        "--fsync",
        action="store_true",
        help="fsync every commit: the store survives a crash of the machine, not only of the run",
    )
    p.add_argument("--seed", type=int, default=0, help="palette seed (default 0)")
    p.add_argument(
        "--max-instances", type=int, default=None, help="instance colours in the palette"
    )
    if targets:
        p.add_argument("--edge", action="store_true", help="add Canny edge targets (needs opencv)")
        p.add_argument(
            "--edge-thresholds",
            type=int,
            nargs=2,
            default=(100, 200),
            metavar=("LOW", "HIGH"),
            help="Canny hysteresis thresholds (default 100 200)",
        )
        p.add_argument(
            "--depth-dir", help="depth maps <image stem>.npy (metres) or .png (16-bit mm)"
        )
        p.add_argument("--depth-model", help="local path of a transformers depth-estimation model")
        p.add_argument(
            "--depth-range",
            type=float,
            nargs=2,
            default=(0.0, 10.0),
            metavar=("MIN", "MAX"),
            help="metres mapped to the depth target's range (default 0 10)",
        )
    p.add_argument(
        "--no-reconstruction", action="store_true", help="do not offer reconstruction targets"
    )
    p.add_argument(
        "--verify-images",
        choices=("structure", "full"),
        default="structure",
        help="check JPEG/PNG files stored verbatim by their structure (markers, CRCs, end "
        "marker; default) or by decoding them (also catches damage inside JPEG scan data)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="sgt-data", description="SGT data stores: convert, merge, inspect, verify, preview."
    )
    ap.add_argument(
        "-v", "--verbose", action="store_true", help="log progress; show tracebacks of errors"
    )
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    conv = sub.add_parser("convert", help="convert a dataset into a store")
    fmt = conv.add_subparsers(dest="format", required=True, parser_class=_Parser)
    p = fmt.add_parser("coco", help="COCO instances JSON + images")
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", required=True)
    _add_common(p)
    p = fmt.add_parser("coco-panoptic", help="COCO panoptic JSON + segment PNGs + images")
    p.add_argument("--annotations", required=True)
    p.add_argument("--panoptic-dir", required=True)
    p.add_argument("--images", required=True)
    _add_common(p)
    p = fmt.add_parser("coco-stuff", help="COCO-Stuff pixel maps + images")
    p.add_argument("--maps", required=True)
    p.add_argument("--images", required=True)
    _add_common(p)
    p = fmt.add_parser("sa1b", help="SA-1B folder of sa_*.json + sa_*.jpg")
    p.add_argument("--input", required=True)
    _add_common(p)
    p = fmt.add_parser("vqa", help="LLaVA-style JSONL/JSON conversations + images")
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", required=True)
    _add_common(p, targets=False)
    p = fmt.add_parser(
        "captions", help="text-to-image: JSONL/JSON of image + caption/prompt, or COCO captions"
    )
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", required=True, help="folder the image paths are relative to")
    _add_common(p, targets=False)

    p = sub.add_parser("merge", help="concatenate stores (e.g. --shard outputs, in order)")
    p.add_argument(
        "parts",
        nargs="+",
        metavar="PART",
        help="finished stores of the same name, renderers and arrays, in the order to keep",
    )
    p.add_argument("--out", required=True, help="store directory to create (or resume)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="samples per committed batch (default 64)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete an existing store at --out first"
    )
    p.add_argument("--fsync", action="store_true", help="fsync every commit (as for convert)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("inspect", help="print a store's manifest summary")
    p.add_argument("store", help="store directory or URL (s3://bucket/prefix)")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")

    p = sub.add_parser("verify", help="check a store against its manifest")
    p.add_argument("store", help="store directory or URL (s3://bucket/prefix)")

    p = sub.add_parser("preview", help="PNG contact sheet: each image beside its targets")
    p.add_argument("store")
    p.add_argument("--out", required=True)
    p.add_argument("-n", "--num", type=_positive, default=4, help="samples to show (default 4)")
    p.add_argument("--start", type=int, default=0, help="index of the first sample (default 0)")
    p.add_argument("--height", type=_positive, default=160, help="tile height in pixels")
    return ap


class _Bar:
    def __init__(self, enabled: bool, desc: str) -> None:
        self._bar: Any = None
        self._enabled = enabled
        self._desc = desc

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, desc=self._desc, unit="img")
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _convert(args: argparse.Namespace) -> int:
    from sgt_data.convert import (
        CaptionConverter,
        CocoInstancesConverter,
        CocoPanopticConverter,
        CocoStuffConverter,
        Converter,
        ConvertOptions,
        Sa1bConverter,
        VqaConverter,
        parse_shard,
        run_conversion,
    )

    kw: dict[str, Any] = {}
    if args.max_instances is not None:
        kw["max_instances"] = args.max_instances
    elif args.format == "sa1b":
        kw["max_instances"] = 1024
    if hasattr(args, "edge"):
        kw.update(
            edge=args.edge,
            edge_low=args.edge_thresholds[0],
            edge_high=args.edge_thresholds[1],
            depth_dir=args.depth_dir,
            depth_model=args.depth_model,
            depth_range=tuple(args.depth_range),
        )
    opts = ConvertOptions(
        name=args.name or Path(args.out).name,
        seed=args.seed,
        reconstruction=not args.no_reconstruction,
        verify_images=args.verify_images,
        **kw,
    )
    conv: Converter
    if args.format == "coco":
        conv = CocoInstancesConverter(args.annotations, args.images, opts)
    elif args.format == "coco-panoptic":
        conv = CocoPanopticConverter(args.annotations, args.panoptic_dir, args.images, opts)
    elif args.format == "coco-stuff":
        conv = CocoStuffConverter(args.maps, args.images, opts)
    elif args.format == "sa1b":
        conv = Sa1bConverter(args.input, opts)
    elif args.format == "captions":
        conv = CaptionConverter(args.annotations, args.images, opts)
    else:
        conv = VqaConverter(args.annotations, args.images, opts)
    from sgt_data.remote import local_out, publish_out

    out = local_out(args.out, overwrite=args.overwrite)  # a URL: converted locally, then uploaded
    bar = _Bar(not args.no_progress, f"convert {args.format}")
    merge_bar = _Bar(not args.no_progress, "merge parts")
    engine = None
    if args.engine == "ray":
        from sgt_data.engines import RayEngine

        engine = RayEngine(args.address, workers=args.workers, merge_progress=merge_bar)
    elif args.address is not None:
        raise ValueError("--address is for --engine ray")
    try:
        m = run_conversion(
            conv,
            out,
            workers=args.workers if engine is None else 1,
            engine=engine,
            shard=parse_shard(args.shard),
            batch_size=args.batch_size,
            skip_bad=args.skip_bad,
            overwrite=args.overwrite,
            progress=bar,
            fsync=args.fsync,
        )
    finally:
        bar.close()
        merge_bar.close()
    publish_out(out, args.out, overwrite=args.overwrite)
    print(f"{args.out}: {m.num_samples} samples, {len(m.skipped)} skipped")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from sgt_data.convert import merge_stores

    bar = _Bar(not args.no_progress, "merge")
    try:
        m = merge_stores(
            args.parts,
            args.out,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            progress=bar,
            fsync=args.fsync,
        )
    finally:
        bar.close()
    print(f"{args.out}: {m.num_samples} samples from {len(args.parts)} stores")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from sgt_data.store import SampleStore

    s = SampleStore.open(args.store)
    m = s.manifest
    if args.json:
        print(m.model_dump_json(indent=2))
        return 0
    print(f"store      {args.store}")
    print(f"name       {m.name}   ({m.created_by}, schema {m.schema_version})")
    print(f"samples    {m.num_samples}")
    for src in m.sources:
        print(f"source     {src.format}: {src.path} ({src.num_items} items)")
    print("tasks      " + ", ".join(f"{k.value}={v}" for k, v in sorted(m.task_counts.items())))
    for r in m.renderers:
        params = " ".join(f"{k}={v}" for k, v in r.params.items())
        print(f"renderer   {r.name} v{r.version} [{r.task.value}] {params}")
    print(f"arrays     {', '.join(sorted(m.arrays))}")
    print(f"skipped    {len(m.skipped)}")
    for sk in m.skipped[:10]:
        print(f"  - {sk.item_id} ({sk.file}): {sk.reason}")
    if len(s):
        print(
            f"sample 0   {s.sample_id(0)} {s.image_shape(0)} tasks: "
            + ", ".join(sorted(f"{t.value}/{v}" if v else t.value for t, v in s.tasks(0)))
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from sgt_data.store import verify_store

    problems = verify_store(args.store)
    if problems:
        print(f"{args.store}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"{args.store}: OK")
    return 0


def _fit(img: np.ndarray[Any, Any], height: int) -> np.ndarray[Any, Any]:
    from PIL import Image

    h, w = img.shape[:2]
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.NEAREST))


def _preview(args: argparse.Namespace) -> int:
    from PIL import Image, ImageDraw

    from sgt_data.schema import TaskKind
    from sgt_data.store import SampleStore

    s = SampleStore.open(args.store)
    rows: list[np.ndarray[Any, Any]] = []
    for i in range(args.start, min(len(s), args.start + args.num)):
        tiles = []
        labels = []
        try:
            tiles.append(_fit(s.read_image(i), args.height))
            labels.append(s.sample_id(i))
        except KeyError:
            continue
        for task, variant in sorted(s.tasks(i), key=lambda tv: (tv[0].value, tv[1] or "")):
            if task in (TaskKind.UNDERSTANDING, TaskKind.TEXT_TO_IMAGE, TaskKind.RECONSTRUCTION):
                continue
            tiles.append(_fit(s.read_target(i, task, variant), args.height))
            labels.append(variant or task.value)
        gap = np.full((args.height, 4, 3), 255, np.uint8)
        row = np.concatenate([x for t in tiles for x in (t, gap)], axis=1)
        band = Image.new("RGB", (row.shape[1], 14), "white")
        draw = ImageDraw.Draw(band)
        x = 0
        for t, text in zip(tiles, labels, strict=True):
            draw.text((x + 2, 1), text, fill="black")
            x += t.shape[1] + 4
        rows.append(np.concatenate([np.asarray(band), row], axis=0))
    if not rows:
        print(f"{args.store}: no samples with images to preview", file=sys.stderr)
        return 1
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate(
        [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows],
        axis=0,
    )
    Image.fromarray(sheet).save(args.out)
    print(f"{args.out}: {len(rows)} samples")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sgt-data``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handlers = {
        "convert": _convert,
        "merge": _merge,
        "inspect": _inspect,
        "verify": _verify,
        "preview": _preview,
    }
    try:
        code = handlers[args.command](args)
        sys.stdout.flush()  # inside the try: a closed pipe shows up at the flush
        return code
    except (SgtDataError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"sgt-data {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(_interrupted(args), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output (`| head`) went away: stop quietly, as cat and grep do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _interrupted(args: argparse.Namespace) -> str:
    """The line printed on Ctrl-C: where a conversion or merge stopped and how to go on."""
    import json

    from sgt_data.store import JOURNAL_FILE

    where = f"sgt-data {args.command}: interrupted"
    if args.command not in ("convert", "merge"):
        return where
    from sgt_data.remote import local_out

    journal = Path(local_out(args.out, overwrite=True)) / JOURNAL_FILE
    try:
        done = int(json.loads(journal.read_text(encoding="utf-8"))["samples"])
    except (OSError, ValueError, KeyError):
        return f"{where} before anything was committed to {args.out}; the same command starts it"
    return (
        f"{where} with {done} samples committed to {args.out}; the same command resumes from there"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
