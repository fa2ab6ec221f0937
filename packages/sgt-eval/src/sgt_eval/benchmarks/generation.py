"""Loaders of the generation benchmarks: GenEval prompt files and outputs, GEdit-Bench rows."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from sgt_eval.benchmarks.tables import (
    BenchmarkDataError,
    ImageRef,
    check_revision,
    check_row_count,
    read_table,
)
from sgt_eval.scoring.gedit import EditSample
from sgt_eval.scoring.geneval import GenEvalPrompt, load_geneval_metadata

__all__ = [
    "GEditItem",
    "load_gedit",
    "load_geneval_prompts",
    "read_geneval_outputs",
    "write_geneval_outputs",
]


def load_geneval_prompts(
    path: str | Path, expected_rows: int | None = 553, revision: str | None = None
) -> tuple[list[GenEvalPrompt], str]:
    """GenEval ``evaluation_metadata.jsonl`` (or ``_long``) and its revision."""
    p = Path(path)
    prompts = load_geneval_metadata(p, expected_rows)
    return prompts, check_revision([p], revision)


def write_geneval_outputs(
    folder: str | Path, prompt: GenEvalPrompt, images: list[NDArray[np.uint8]]
) -> None:
    """Write images in GenEval's layout: ``<folder>/<00000>/metadata.jsonl`` + ``samples/0000.png``."""
    d = Path(folder) / f"{prompt.index:05d}"
    (d / "samples").mkdir(parents=True, exist_ok=True)
    (d / "metadata.jsonl").write_text(json.dumps(prompt.as_json()) + "\n", encoding="utf-8")
    for k, img in enumerate(images):
        Image.fromarray(img).save(d / "samples" / f"{k:04d}.png")


def read_geneval_outputs(
    folder: str | Path,
) -> list[tuple[GenEvalPrompt, list[NDArray[np.uint8]]]]:
    """Read images written in GenEval's layout (numeric folders, ``samples/<n>.png``)."""
    root = Path(folder)
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        meta = d / "metadata.jsonl"
        if not meta.is_file():
            raise BenchmarkDataError(f"{meta}: missing")
        prompt = load_geneval_metadata(meta, expected_rows=1)[0]
        prompt = GenEvalPrompt(
            int(d.name), prompt.tag, prompt.prompt, prompt.include, prompt.exclude
        )
        files = sorted(
            (f for f in (d / "samples").glob("*.png") if re.fullmatch(r"\d+\.png", f.name)),
            key=lambda f: int(f.stem),
        )
        if not files:
            raise BenchmarkDataError(f"{d / 'samples'}: no images")
        out.append((prompt, [np.asarray(Image.open(f).convert("RGB")) for f in files]))
    return out


@dataclass(frozen=True)
class GEditItem:
    """A GEdit-Bench row: what to edit and the source image."""

    sample: EditSample
    image: ImageRef


def load_gedit(
    path: str | Path,
    language: str = "en",
    expected_rows: int | None = 606,
    revision: str | None = None,
) -> tuple[list[GEditItem], str]:
    """GEdit-Bench parquet(s) (``stepfun-ai/GEdit-Bench``), rows of one instruction language."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("**/*.parquet"))
    if not files:
        raise BenchmarkDataError(f"{p}: no parquet files")
    items = []
    for f in files:
        for i, row in enumerate(read_table(f)):
            if row.get("instruction_language") != language:
                continue
            where = f"{f} row {i}"
            try:
                sample = EditSample(
                    str(row["key"]), str(row["task_type"]), str(row["instruction"]), language
                )
            except KeyError as exc:
                raise BenchmarkDataError(f"{where}: missing field {exc}") from exc
            items.append(GEditItem(sample, ImageRef((row["input_image"],), f.parent, where)))
    check_row_count(f"gedit-bench ({language})", files, len(items), expected_rows)
    return items, check_revision(files, revision)
