"""The local engine's worker pool: batches of items converted into sealed records and staged
as shard files by forked worker processes (or in this process), handed back in order for the
runner to commit."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sys
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from sgt_data.errors import ConversionError, SgtDataError, WorkerDiedError
from sgt_data.schema import SkippedItem
from sgt_data.store import BatchStager, FieldSpec, SampleRecord, StagedBatch, seal_record

if TYPE_CHECKING:
    from sgt_data.convert._base import Converter, WorkItem

__all__ = ["convert_batches"]


@dataclass(frozen=True)
class _Bad:
    item_id: str
    file: str
    reason: str


@dataclass(frozen=True)
class _Crash:
    """An unexpected exception in a worker (a bug, not bad input): re-raised by the parent."""

    item_id: str
    text: str


def _process(
    conv: Converter, item: WorkItem, fields: Sequence[FieldSpec] | None = None
) -> SampleRecord | _Bad:
    """Convert one item into a sealed record (its stored form computed for ``fields``, the
    run's field description, by default ``conv.fields()``), or say why it is bad."""
    try:
        rec = conv.process(item)
        # compress label maps, serialise metadata and checksum here, in the worker: the
        # writer then only writes plain data (sealed records), never asking the converter
        seal_record(rec, conv.fields() if fields is None else fields)
        return rec
    except ConversionError as exc:
        return _Bad(exc.item_id, exc.file, exc.reason)
    except SgtDataError as exc:  # e.g. an RLEError from the kernels
        return _Bad(item.item_id, item.file, str(exc))


@dataclass(frozen=True)
class BatchOut:
    """A converted batch of items: staged for its commit, or (a strict run) stopped at its
    first bad item, which the parent raises when the batch's turn comes."""

    staged: StagedBatch | None
    skipped: list[SkippedItem]
    bad: _Bad | None = None


def _convert_batch(
    conv: Converter,
    items: Sequence[WorkItem],
    lo: int,
    hi: int,
    stager: BatchStager,
    skip_bad: bool,
    name: str,
    at: list[int] | None = None,
) -> BatchOut:
    """Convert items ``lo:hi`` and stage them as one batch (in a worker, or in the parent);
    ``at[0]`` follows the item being converted (to name it if converting it fails)."""
    records: list[SampleRecord] = []
    skipped: list[SkippedItem] = []
    for k in range(lo, hi):
        if at is not None:
            at[0] = k
        res = _process(conv, items[k], stager.fields)
        if isinstance(res, _Bad):
            if not skip_bad:
                return BatchOut(None, skipped, res)
            skipped.append(SkippedItem(item_id=res.item_id, file=res.file, reason=res.reason))
        else:
            records.append(res)
    return BatchOut(stager.stage(records, name), skipped)


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when its parent dies (Linux), so that no orphan of a
    killed conversion goes on writing into the store's staging folder (a resumed run's worker
    could be staging the same batch). Elsewhere a worker stops at its next message."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: unique staging names still keep runs apart
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker_loop(
    conn: Connection,
    conv: Converter,
    items: Sequence[WorkItem],
    stager: BatchStager,
    skip_bad: bool,
    parent: int,
) -> None:
    """A worker process: convert and stage the batches the parent sends (index ranges), send
    back what each holds, stop at ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and stops the workers
    _die_with(parent)
    try:
        while (task := conn.recv()) is not None:
            number, lo, hi, name = task
            out: BatchOut | _Crash
            at = [lo]
            try:
                out = _convert_batch(conv, items, lo, hi, stager, skip_bad, name, at)
            except Exception:  # a bug: reported with its traceback, not a silent death
                import traceback

                out = _Crash(items[at[0]].item_id, traceback.format_exc())
            conn.send((number, out))
    except (EOFError, OSError):  # the parent stopped early (an error, ^C): nothing to report
        pass


def convert_batches(
    conv: Converter,
    items: Sequence[WorkItem],
    bounds: Sequence[tuple[int, int, str]],
    stager: BatchStager,
    skip_bad: bool,
    workers: int,
) -> Generator[BatchOut, None, None]:
    """Each batch ``(lo, hi, staging name)`` converted and staged, in order, by ``workers``
    processes; the parent only commits them (renames and a journal write per batch).

    A small pool of its own instead of ``multiprocessing.Pool``: under fork the workers inherit
    the items, so only index ranges go to them (no per-item pickling), and the parent has no
    helper threads. Workers write their batches' shard files themselves: the parent's serial
    work per image is a few microseconds, so conversion scales with workers."""
    if workers <= 1 or len(bounds) <= 1:
        for lo, hi, name in bounds:
            yield _convert_batch(conv, items, lo, hi, stager, skip_bad, name)
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    if method == "fork":
        # one item here first, before forking: its imports and compiled-kernel loads (~0.6 s
        # CPU for COCO) then happen once, not again in every worker (its result is dropped)
        _process(conv, items[bounds[0][0]], stager.fields)
        if gc.get_freeze_count():  # keep what it created out of the workers' gc passes too
            gc.freeze()
    ctx: Any = multiprocessing.get_context(method)
    workers = min(workers, len(bounds))
    procs: list[tuple[Connection, Any]] = []
    finished = False
    try:
        for _ in range(workers):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_loop,
                args=(child_end, conv, items, stager, skip_bad, os.getpid()),
                daemon=True,
            )
            proc.start()
            child_end.close()
            procs.append((parent_end, proc))
        pending: dict[Connection, int] = {c: 0 for c, _ in procs}  # batches in flight per worker
        ready: dict[int, BatchOut | _Crash] = {}
        sent = nxt = 0

        def died(conn: Connection) -> WorkerDiedError:
            proc = next(p for c, p in procs if c is conn)
            proc.join(1)
            code = proc.exitcode
            how = (
                f"killed by signal {-code}"
                + (" (SIGKILL: by the OS, e.g. for lack of memory)" if code == -9 else "")
                if code is not None and code < 0
                else f"exit code {code}"
            )
            return WorkerDiedError(
                f"a conversion worker died ({how}); the committed batches are kept: run the "
                "same command to resume (with fewer --workers if memory ran out)"
            )

        def feed(conn: Connection) -> None:
            nonlocal sent
            # two batches in flight per worker: it never waits for the parent between batches
            while pending[conn] < 2 and sent < len(bounds):
                try:
                    conn.send((sent, *bounds[sent]))
                except (BrokenPipeError, ConnectionResetError):  # it died after its last result
                    raise died(conn) from None
                pending[conn] += 1
                sent += 1

        for conn in pending:
            feed(conn)
        while nxt < len(bounds):
            while nxt not in ready:
                for waited in wait([c for c, n in pending.items() if n]):
                    assert isinstance(waited, Connection)
                    conn = waited
                    try:
                        got, out = conn.recv()
                    except (EOFError, ConnectionResetError):  # the worker died
                        raise died(conn) from None
                    ready[got] = out
                    pending[conn] -= 1
                    feed(conn)
            res = ready.pop(nxt)
            if isinstance(res, _Crash):
                raise RuntimeError(f"worker failed on item {res.item_id}:\n{res.text}")
            yield res
            nxt += 1
        finished = True
    finally:
        for conn, proc in procs:
            if finished:  # idle workers: let them exit
                with contextlib.suppress(OSError):
                    conn.send(None)
            else:  # stopped early: their work in flight is not wanted
                proc.terminate()
            conn.close()
        for _, proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
