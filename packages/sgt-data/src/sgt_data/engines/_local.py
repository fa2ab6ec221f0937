"""The engine interface and the local engine (a process pool on this machine)."""

from __future__ import annotations

import abc
import os
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, TypeAlias

from sgt_data.convert._pool import BatchOut, convert_batches
from sgt_data.convert._runner import (
    ConvertJob,
    Progress,
    convert_listed,
    frozen_heap,
    list_items,
    select_shard,
)
from sgt_data.schema import SkippedItem, StoreManifest
from sgt_data.store import BatchStager

if TYPE_CHECKING:
    from sgt_data.convert._base import Converter, WorkItem

__all__ = ["Engine", "LocalEngine"]

#: where a conversion writes its store (a path; for the local engine also a remote URL)
OutPath: TypeAlias = str | os.PathLike[str]


class Engine(abc.ABC):
    """Runs one conversion: ``conv``'s items (the ``job``'s shard of them) into the store at
    ``out``, resuming what an interrupted run of the same job committed."""

    @abc.abstractmethod
    def convert(
        self, conv: Converter, out: OutPath, job: ConvertJob, progress: Progress | None = None
    ) -> StoreManifest:
        """Convert and return the finished store's manifest (``progress(done, total)`` items)."""


class LocalEngine(Engine):
    """``workers`` processes on this machine (forked on Linux) convert and stage batches; this
    process commits them in order."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def convert(
        self, conv: Converter, out: OutPath, job: ConvertJob, progress: Progress | None = None
    ) -> StoreManifest:
        with frozen_heap():
            items, problems = list_items(conv, job.skip_bad)
            items, problems = select_shard(items, problems, job.shard)
            return self.convert_listed(conv, items, problems, out, job, progress)

    def convert_listed(
        self,
        conv: Converter,
        items: Sequence[WorkItem],
        problems: Sequence[SkippedItem],
        out: OutPath,
        job: ConvertJob,
        progress: Progress | None = None,
    ) -> StoreManifest:
        """Convert items already listed (one shard's, with their listing problems)."""
        return convert_listed(conv, items, problems, out, job, self._batches, progress)

    def _batches(
        self,
        conv: Converter,
        items: Sequence[WorkItem],
        bounds: Sequence[tuple[int, int, str]],
        stager: BatchStager,
        skip_bad: bool,
    ) -> Generator[BatchOut, None, None]:
        return convert_batches(conv, items, bounds, stager, skip_bad, self.workers)
