"""Reading conversion inputs: annotation JSON and JSONL files, record metadata, depth maps,
file digests."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sgt_data.errors import ConversionError

__all__ = [
    "file_sha256",
    "load_json",
    "read_depth_map",
    "read_json_records",
    "scalar_metadata",
]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; a :class:`ConversionError` names the file if it is missing or malformed."""
    from pydantic_core import from_json

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConversionError(
            str(path), "-", f"cannot read annotation file: {exc.strerror or exc}"
        ) from exc
    try:  # pydantic-core's parser: the same values as json.loads, in ~half the time
        return from_json(data.removeprefix(b"\xef\xbb\xbf"))  # (UTF-8, BOM allowed)
    except ValueError as exc:
        raise ConversionError(str(path), "-", f"not valid JSON: {exc}") from exc


def read_json_records(path: Path, what: str) -> list[tuple[int, Any]]:
    """The records of a JSONL file (with their line numbers) or of a JSON list (with their
    1-based positions); ``what`` names the format in the error for any other JSON."""
    file = str(path)
    if path.suffix == ".jsonl":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConversionError(file, "-", f"cannot read: {exc.strerror or exc}") from exc
        out = []
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    out.append((n, json.loads(line)))
                except ValueError as exc:
                    raise ConversionError(file, f"line {n}", f"not valid JSON: {exc}") from exc
        return out
    data = load_json(path)
    if not isinstance(data, list):
        raise ConversionError(file, "-", f"a {what} JSON file must hold a list of records")
    return list(enumerate(data, 1))


def scalar_metadata(
    values: Any, file: str, item_id: str, *, reserved: Sequence[str] = ()
) -> dict[str, str | int | float | bool]:
    """The scalar (str, int, float, bool) entries of a record's ``metadata`` dict, for the sample's
    metadata; lists, dicts and nulls are dropped, and so are keys in ``reserved`` (those the
    converter writes itself)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConversionError(file, item_id, f"'metadata' must be an object, got {values!r:.80}")
    return {
        str(k): v
        for k, v in values.items()
        if isinstance(v, (str, int, float, bool)) and k not in reserved
    }


def read_depth_map(
    depth_dir: str, image_path: Path, item_id: str, hw: tuple[int, int]
) -> NDArray[np.float32]:
    """The depth map (metres) of an image from ``depth_dir``: ``<image stem>.npy`` in metres or
    ``.png`` in 16-bit millimetres, of the image's ``hw``."""
    base = Path(depth_dir) / image_path.stem
    npy, png = base.with_suffix(".npy"), base.with_suffix(".png")
    if npy.exists():
        try:
            depth = np.load(npy).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise ConversionError(str(npy), item_id, f"unreadable depth map: {exc}") from exc
        src = npy
    elif png.exists():
        from PIL import Image

        try:
            with Image.open(png) as im:
                depth = np.asarray(im, dtype=np.float32) / 1000.0  # 16-bit PNG in millimetres
        except OSError as exc:
            raise ConversionError(str(png), item_id, f"unreadable depth map: {exc}") from exc
        src = png
    else:
        raise ConversionError(str(npy), item_id, "no depth map (.npy or .png) for this image")
    if depth.shape != hw:
        raise ConversionError(
            str(src),
            item_id,
            f"depth map is {depth.shape[0]}x{depth.shape[1]}, image is {hw[0]}x{hw[1]}",
        )
    out: NDArray[np.float32] = depth
    return out
