"""Exceptions raised by sgt-data for bad input. Every one is a ``ValueError``."""

from __future__ import annotations

__all__ = [
    "ConversionError",
    "RLEError",
    "RenderError",
    "SgtDataError",
    "StoreError",
    "TargetGuardError",
]


class SgtDataError(ValueError):
    """Base class of every bad-input error raised by sgt-data."""


class RLEError(SgtDataError):
    """A malformed RLE, polygon, box or mask; the message names the annotation and image."""


class ConversionError(SgtDataError):
    """Bad conversion input (missing or corrupt image, JSON not matching its format, a mask whose
    size disagrees with its image, a duplicate id); the message names the file and the item id."""

    def __init__(self, file: str, item_id: str, reason: str) -> None:
        # item "-" is a whole-file error (missing, not JSON): no item to name
        where = f"{file}: " if item_id == "-" else f"{file}: item {item_id!r}: "
        super().__init__(where + reason)
        self.file = file
        self.item_id = item_id
        self.reason = reason

    def __reduce__(self) -> tuple[type[ConversionError], tuple[str, str, str]]:
        return (type(self), (self.file, self.item_id, self.reason))


class WorkerDiedError(SgtDataError):
    """A conversion worker process ended without reporting (killed by the OS, e.g. out of
    memory); the batches committed before it are kept and the same command resumes."""


class RenderError(SgtDataError):
    """A label map or image a target renderer cannot draw or decode (wrong shape, id out of range)."""


class StoreError(SgtDataError):
    """A sample store that is missing, incomplete, from other options, or disagrees with its manifest."""


class TargetGuardError(SgtDataError):
    """A generative-proxy sample whose target is not a rendered map (e.g. the input image itself).

    The message names the sample id and its source; ``sample_id``, ``source`` and ``reason`` are
    also attributes.
    """

    def __init__(self, sample_id: str, source: str, reason: str) -> None:
        super().__init__(f"sample {sample_id!r} from source {source!r}: {reason}")
        self.sample_id = sample_id
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[type[TargetGuardError], tuple[str, str, str]]:
        return (type(self), (self.sample_id, self.source, self.reason))
