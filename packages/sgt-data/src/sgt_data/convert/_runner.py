"""The conversion runner: list a converter's items, cut them into shards and batches, commit
the batches an engine converts (in order, resumable), write the manifest; and the merge of
finished stores. Data flows one way: converter -> sealed records (staged by the engine) ->
writer, which is handed the store's field description and manifest entries as plain data."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgt_data._store_merge import copy_samples
from sgt_data.convert._pool import BatchOut
from sgt_data.errors import ConversionError, StoreError
from sgt_data.schema import SkippedItem, SourceSpec, StoreManifest
from sgt_data.store import LAYOUT_VERSION, MANIFEST_FILE, SampleStore, StoreWriter

if TYPE_CHECKING:
    from sgt_data.convert._base import Converter, WorkItem

__all__ = [
    "BatchSource",
    "ConvertJob",
    "convert_listed",
    "list_items",
    "merge_stores",
    "parse_shard",
    "select_shard",
]

_log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def created_by() -> str:
    from importlib.metadata import version

    return f"sgt-data {version('sgt-data')}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/8), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < N")
    return i, n


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects alive before a conversion (modules, compiled kernels, caches: ~10^5)
    out of the collector's full passes during it (measured: 0.1-0.5 ms CPU per COCO image), and
    unwritten by those passes in forked workers. A caller's own freeze is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: listing a COCO file creates a container object per
    JSON value and per annotation, and the collector's passes over them took as long as the
    parse itself (measured 0.28-0.39 vs 0.14 ms CPU per image of the bench's annotation file).
    What is listed is acyclic (parsed JSON, records); reference counting frees it as before."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True)
class ConvertJob:
    """How one conversion is run, besides its converter and output: plain data, so that an
    engine can send it to other processes or machines. ``shard``: block ``i`` of ``N``
    contiguous blocks of the items; ``fsync`` is not part of the resume fingerprint."""

    shard: tuple[int, int] = (0, 1)
    batch_size: int = 64
    skip_bad: bool = False
    overwrite: bool = False
    fsync: bool = False


#: what an engine provides the runner: ``(conv, items, bounds, stager, skip_bad)`` -> each
#: batch ``(lo, hi, staging name)`` converted and staged, in order
BatchSource = Callable[..., Generator[BatchOut, None, None]]


def list_items(conv: Converter, skip_bad: bool) -> tuple[list[WorkItem], list[SkippedItem]]:
    """All of ``conv``'s items and the problems met listing them (the first raised unless
    ``skip_bad``)."""
    with no_cyclic_gc():
        items, problems = conv.list_items()
    if problems and not skip_bad:
        p = problems[0]
        raise ConversionError(p.file, p.item_id, p.reason)
    return items, problems


def shard_bounds(num_items: int, shard: tuple[int, int]) -> tuple[int, int]:
    """Items ``lo:hi`` of shard ``i`` of ``N`` (contiguous blocks, as ``--shard i/N``)."""
    i, n = shard
    return num_items * i // n, num_items * (i + 1) // n


def select_shard(
    items: Sequence[WorkItem], problems: Sequence[SkippedItem], shard: tuple[int, int]
) -> tuple[list[WorkItem], list[SkippedItem]]:
    """The items of one shard, and the listing problems that name them."""
    lo, hi = shard_bounds(len(items), shard)
    out = list(items[lo:hi])
    if shard[1] > 1:
        ids = {it.item_id for it in out}
        return out, [p for p in problems if p.item_id in ids]
    return out, list(problems)


def fingerprint(conv: Converter, job: ConvertJob, num_items: int) -> dict[str, Any]:
    """What identifies a store converted from ``num_items`` items (resume key)."""
    return {
        **conv.fingerprint(),
        "shard": list(job.shard),
        "skip_bad": job.skip_bad,
        "items": num_items,
        "layout": LAYOUT_VERSION,
    }


def open_writer(
    conv: Converter, out: str | os.PathLike[str], job: ConvertJob, num_items: int
) -> StoreWriter:
    """The writer of a conversion's store: created, resumed or found finished."""
    return StoreWriter.open(
        out,
        name=conv.opts.name,
        fields=conv.fields(),
        batch_size=job.batch_size,
        fingerprint=fingerprint(conv, job, num_items),
        overwrite=job.overwrite,
        # everything a strict run committed is good, so it may go on with --skip-bad
        resumable_from={"skip_bad": False},
        fsync=job.fsync,
    )


def finished_manifest(out: str | os.PathLike[str]) -> StoreManifest:
    """The manifest of the finished store at ``out``."""
    _log.info("%s is already complete", out)
    return StoreManifest.model_validate_json(
        (Path(out) / MANIFEST_FILE).read_text(encoding="utf-8")
    )


def finish(
    writer: StoreWriter,
    conv: Converter,
    num_items: int,
    problems: Sequence[SkippedItem],
    *,
    sources: Sequence[SourceSpec] | None = None,
) -> StoreManifest:
    """Write the manifest of a conversion's store: what the converter says of its output (source,
    renderers, palette seed), handed to the writer as plain data."""
    return writer.finish(
        created_by=created_by(),
        sources=[conv.source(num_items)] if sources is None else sources,
        renderers=conv.renderers(),
        palette_seed=conv.opts.seed,
        extra_skipped=problems,
    )


def convert_listed(
    conv: Converter,
    items: Sequence[WorkItem],
    problems: Sequence[SkippedItem],
    out: str | os.PathLike[str],
    job: ConvertJob,
    batches: BatchSource,
    progress: Progress | None = None,
) -> StoreManifest:
    """Convert listed ``items`` (one shard's, with its listing ``problems``) into the store at
    ``out``: the engine's ``batches`` convert and stage them, this process commits them in
    order (resuming after the last committed batch)."""
    writer = open_writer(conv, out, job, len(items))
    if writer.finished:
        return finished_manifest(out)
    done = writer.items_done
    if progress:
        progress(done, len(items))
    batch_size = job.batch_size
    # batches of batch_size items from the resume point on (a committed batch always ends on a
    # multiple of batch_size, so an interrupted run re-creates an uninterrupted run's batches)
    # staging folders named per run too: nothing of an earlier, killed run can mix into them
    run = f"{os.getpid()}-{os.urandom(4).hex()}"
    bounds = [
        (lo, min(lo + batch_size, len(items)), f"b{lo}-{run}")
        for lo in range(done, len(items), batch_size)
    ]
    # closed on the way out, so that a bad item's error stops the workers at once
    with contextlib.closing(batches(conv, items, bounds, writer.stager, job.skip_bad)) as converted:
        for (_, hi, _), got in zip(bounds, converted, strict=False):
            if got.bad is not None:
                raise ConversionError(got.bad.file, got.bad.item_id, got.bad.reason)
            assert got.staged is not None
            for sk in got.skipped:
                _log.warning("skipping %s (%s): %s", sk.item_id, sk.file, sk.reason)
            writer.commit(got.staged, hi, got.skipped)
            done = hi
            if progress:
                progress(done, len(items))
    return finish(writer, conv, len(items), problems)


def merge_stores(
    parts: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: Progress | None = None,
    fsync: bool = False,
) -> StoreManifest:
    """Concatenate finished stores (e.g. the ``--shard i/N`` outputs, in order) into one store
    (``fsync``: durable commits, as in :func:`run_conversion`)."""
    if not parts:
        raise StoreError("merge needs at least one store")
    stores = [SampleStore.open(p) for p in parts]
    first = stores[0]
    for p, s in zip(parts[1:], stores[1:], strict=True):
        if s.name != first.name:
            raise StoreError(f"{p}: store name {s.name!r} differs from {first.name!r} ({parts[0]})")
        if s.manifest.renderers != first.manifest.renderers:
            raise StoreError(f"{p}: renderers differ from those of {parts[0]}")
        if [f.path for f in s.fields] != [f.path for f in first.fields]:
            raise StoreError(
                f"{p}: arrays {[f.path for f in s.fields]} differ from those of {parts[0]}"
            )
    fp = {
        "merge": [hashlib.sha256((Path(p) / MANIFEST_FILE).read_bytes()).hexdigest() for p in parts]
    }
    writer = StoreWriter.open(
        out,
        name=first.name,
        fields=first.fields,
        batch_size=batch_size,
        fingerprint=fp,
        overwrite=overwrite,
        fsync=fsync,
    )
    # the samples' stored bytes copied, not decoded and encoded again (sgt_data._store_merge)
    copy_samples(parts, [len(s) for s in stores], writer, batch_size=batch_size, progress=progress)
    sources: list[SourceSpec] = []
    for s in stores:
        sources += [src for src in s.manifest.sources if src not in sources]
    return writer.finish(
        created_by=created_by(),
        sources=sources,
        renderers=first.manifest.renderers,
        palette_seed=first.manifest.palette_seed,
        extra_skipped=[sk for s in stores for sk in s.manifest.skipped],
    )
