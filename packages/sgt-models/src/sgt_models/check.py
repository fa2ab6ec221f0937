"""Checking a checkpoint folder against the architecture its configs describe, from headers only.

``sgt-models check DIR`` recognises the model family of a folder (an official BAGEL or OmniGen2
folder, or one SGT saved), builds the architecture from the folder's configs on the meta device,
reads only the safetensors headers (never the tensor data, so a 29 GB file is checked in seconds
on a machine with less memory than the file) and reports the parameter counts and every missing,
unexpected or shape-mismatched tensor by name. Families supply the check through
``ModelFamily.inspect`` (see ``sgt_models.registry``); this module holds what they share.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "CheckError",
    "CheckReport",
    "TensorDiff",
    "TensorInfo",
    "check_folder",
    "compare_tensors",
    "format_report",
    "module_shapes",
    "read_safetensors_header",
    "read_safetensors_metadata",
]

#: A header longer than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000


class CheckError(ValueError):
    """A folder or file that cannot be checked; the message names it."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as a safetensors header declares it."""

    dtype: str
    shape: tuple[int, ...]


def _read_header(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckError(
                    f"{path}: not a safetensors file (shorter than its 8-byte header size)"
                )
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER_BYTES:
                raise CheckError(
                    f"{path}: not a safetensors file (header size {length} bytes is implausible)"
                )
            raw = fh.read(length)
    except FileNotFoundError:
        raise CheckError(f"{path} is missing") from None
    except IsADirectoryError:
        raise CheckError(f"{path} is a directory, not a safetensors file") from None
    if len(raw) < length:
        raise CheckError(
            f"{path}: truncated safetensors header ({len(raw)} of {length} bytes present)"
        )
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of the tensors in a safetensors file, read from its header only."""
    path = Path(path)
    out: dict[str, TensorInfo] = {}
    for name, entry in _read_header(path).items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in entry["shape"])
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise CheckError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        out[name] = TensorInfo(dtype=dtype, shape=shape)
    return out


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` entry of a safetensors header (``{}`` when there is none)."""
    path = Path(path)
    meta = _read_header(path).get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CheckError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    return {str(k): str(v) for k, v in meta.items()}


def module_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``state_dict()`` names and shapes of a module (parameters and persistent buffers).

    Meant for a module built on the meta device: no memory is allocated.
    """
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


@dataclass
class TensorDiff:
    """How the tensors of a file differ from what an architecture expects."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def compare_tensors(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, TensorInfo], where: str = ""
) -> TensorDiff:
    """Missing, unexpected and shape-mismatched tensors, each named (prefixed ``where: ``)."""
    prefix = f"{where}: " if where else ""
    diff = TensorDiff()
    for name in sorted(expected.keys() - found.keys()):
        diff.missing.append(prefix + name)
    for name in sorted(found.keys() - expected.keys()):
        diff.unexpected.append(prefix + name)
    for name in sorted(expected.keys() & found.keys()):
        want, have = tuple(expected[name]), found[name].shape
        if want != have:
            diff.mismatched.append(f"{prefix}{name}: expected {_shape(want)}, found {_shape(have)}")
    return diff


@dataclass
class CheckReport:
    """What ``sgt-models check`` found in a folder."""

    family: str
    layout: str
    path: Path
    parameter_counts: dict[str, int]
    total_parameters: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, diff: TensorDiff) -> None:
        """Record a file's differences."""
        self.missing.extend(diff.missing)
        self.unexpected.extend(diff.unexpected)
        self.mismatched.extend(diff.mismatched)

    @property
    def ok(self) -> bool:
        """Nothing missing, unexpected, mismatched, and no config or tokenizer problem."""
        return not (self.missing or self.unexpected or self.mismatched or self.problems)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "path": str(self.path),
            "family": self.family,
            "layout": self.layout,
            "parameter_counts": dict(self.parameter_counts),
            "total_parameters": self.total_parameters,
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "mismatched": list(self.mismatched),
            "problems": list(self.problems),
            "ok": self.ok,
        }


def format_report(report: CheckReport) -> str:
    """The report as ``sgt-models check`` prints it (one fact per line)."""
    lines = [f"{report.path}: {report.family} ({report.layout} layout)"]
    width = max([len(name) for name in report.parameter_counts] + [len("total")])
    lines.append("parameters:")
    for name, count in report.parameter_counts.items():
        lines.append(f"  {name.ljust(width)}  {count}")
    lines.append(f"  {'total'.ljust(width)}  {report.total_parameters}")
    lines += [f"missing: {name}" for name in report.missing]
    lines += [f"unexpected: {name}" for name in report.unexpected]
    lines += [f"mismatched: {name}" for name in report.mismatched]
    lines += [f"problem: {text}" for text in report.problems]
    if report.ok:
        lines.append("ok: every tensor is present with the expected shape")
    else:
        counts = (
            f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, "
            f"{len(report.mismatched)} mismatched, {len(report.problems)} other problem(s)"
        )
        lines.append(f"not ok: {counts}")
    return "\n".join(lines)


def check_folder(path: str | Path) -> CheckReport:
    """Recognise the family of a checkpoint folder and check it (``CheckError`` if unknown)."""
    from sgt_models.registry import AdapterLoadError, family_of_folder

    folder = Path(path)
    if not folder.exists():
        raise CheckError(f"{folder} does not exist")
    if not folder.is_dir():
        raise CheckError(f"{folder} is not a folder")
    try:
        family = family_of_folder(folder)
    except AdapterLoadError as exc:
        raise CheckError(str(exc)) from None
    if family.inspect is None:
        raise CheckError(f"{folder}: the {family.kind!r} family offers no check")
    return family.inspect(folder)
