"""Reading benchmark tables from local copies in their published formats, with checks.

Formats: JSON (a list of rows, or JSON lines under a .json name as POPE ships them), JSONL, TSV
and CSV (VLMEvalKit / MMVP), parquet (Hugging Face; needs the ``parquet`` extra: pyarrow).
Every load checks the row count and, when asked, the data revision; errors name the file.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = [
    "BenchmarkDataError",
    "ImageRef",
    "MissingExtraError",
    "RevisionMismatchError",
    "RowCountError",
    "check_revision",
    "check_row_count",
    "data_revision",
    "read_table",
]


class BenchmarkDataError(ValueError):
    """A benchmark file is missing, unreadable or lacks a field."""


class RowCountError(BenchmarkDataError):
    """A benchmark file holds a different number of rows than the published set."""


class RevisionMismatchError(BenchmarkDataError):
    """A benchmark file is not the pinned revision."""


class MissingExtraError(ImportError):
    """An optional dependency is needed; the message names the extra to install."""


_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(?:/|$)")


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError as exc:
        raise MissingExtraError(
            f"reading {path} needs pyarrow: pip install 'sgt-eval[parquet]'"
        ) from exc
    return list(pq.read_table(path).to_pylist())


def _read_delimited(path: Path, delimiter: str) -> list[dict[str, Any]]:
    csv.field_size_limit(sys.maxsize)  # VLMEvalKit TSVs carry base64 images in a cell
    with path.open(encoding="utf-8", newline="") as fh:
        return [dict(row) for row in csv.DictReader(fh, delimiter=delimiter)]


def _read_json(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path)
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        data = list(data.values())  # keyed by id, as MathVista's testmini.json
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise BenchmarkDataError(f"{path}: JSON object without a single list of rows")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BenchmarkDataError(f"{path}: expected a JSON list of objects")
    return data


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkDataError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise BenchmarkDataError(f"{path}:{lineno}: expected a JSON object")
        rows.append(row)
    return rows


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local benchmark file, chosen by its suffix."""
    p = Path(path)
    if not p.is_file():
        raise BenchmarkDataError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(p)
    if suffix == ".tsv":
        return _read_delimited(p, "\t")
    if suffix == ".csv":
        return _read_delimited(p, ",")
    if suffix == ".json":
        return _read_json(p)
    if suffix == ".jsonl":
        return _read_jsonl(p)
    raise BenchmarkDataError(
        f"{p}: unknown table format {suffix!r} (parquet, tsv, csv, json, jsonl)"
    )


def data_revision(paths: Iterable[Path]) -> str:
    """The Hugging Face snapshot commit the files lie in, else ``sha256:`` of their contents."""
    files = sorted(Path(p).resolve() for p in paths)
    for f in files:
        m = _SNAPSHOT.search(f.as_posix())
        if m:
            return m.group(1)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


def check_revision(paths: Sequence[Path], expected: str | None) -> str:
    """The files' revision; ``RevisionMismatchError`` if ``expected`` is given and differs."""
    found = data_revision(paths)
    if expected is not None and found != expected:
        names = ", ".join(str(p) for p in paths)
        raise RevisionMismatchError(f"{names}: revision {found}, expected {expected}")
    return found


def check_row_count(what: str, paths: Sequence[Path], found: int, expected: int | None) -> None:
    """``RowCountError`` naming the files when ``found`` differs from ``expected``."""
    if expected is not None and found != expected:
        names = ", ".join(str(p) for p in paths)
        raise RowCountError(
            f"{what}: {names} holds {found} rows, expected {expected} "
            "(pass expected_rows=None to load a subset)"
        )


def _decode(value: object, root: Path | None, where: str) -> NDArray[np.uint8]:
    if isinstance(value, dict):
        if value.get("bytes"):
            return _decode(value["bytes"], root, where)
        if value.get("path"):
            return _decode(Path(str(value["path"])), root, where)
        raise BenchmarkDataError(f"{where}: image cell has neither bytes nor path")
    if isinstance(value, bytes | bytearray):
        data: bytes | Path = bytes(value)
    elif isinstance(value, Path):
        data = value if value.is_absolute() or root is None else root / value
    elif isinstance(value, str):
        candidate = Path(value) if root is None else root / value
        if len(value) < 1024 and candidate.is_file():
            data = candidate
        else:
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BenchmarkDataError(f"{where}: image {value[:80]!r} not found") from exc
    else:
        raise BenchmarkDataError(f"{where}: unsupported image cell {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise BenchmarkDataError(f"{where}: cannot decode image ({exc})") from exc


@dataclass(frozen=True)
class ImageRef:
    """An image (or several, shown side by side) loaded only when the harness needs it."""

    sources: tuple[object, ...]
    root: Path | None
    where: str

    def load(self) -> NDArray[np.uint8]:
        """The RGB image (HxWx3 uint8); several sources are placed left to right on white."""
        images = [_decode(s, self.root, self.where) for s in self.sources]
        if len(images) == 1:
            return images[0]
        h = max(i.shape[0] for i in images)
        canvas = np.full((h, sum(i.shape[1] for i in images), 3), 255, np.uint8)
        x = 0
        for img in images:
            canvas[: img.shape[0], x : x + img.shape[1]] = img
            x += img.shape[1]
        return canvas
