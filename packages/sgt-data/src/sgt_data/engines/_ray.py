"""The Ray engine: the input split into the shards ``--shard i/N`` makes, each converted by a
Ray task into a part store on shared storage (``OUT.parts/``), the parts then merged into the
store at ``OUT``, byte-identical to the local engine's.

A task that fails (an ``OSError``, a dead worker pool) or whose worker or node dies is retried
by Ray (``max_retries``); a part store is resumable like any conversion (its journal names the
committed batches, and what an interrupted attempt left uncommitted is removed when it is
reopened), so a retried shard gives the bytes of an uninterrupted one. Bad input is not
retried: it names its file and id as in the local engine. This is the only module that imports
``ray``."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgt_data._store_merge import Batch, copy_batches, copy_samples
from sgt_data.convert._runner import (
    ConvertJob,
    Progress,
    fingerprint,
    finish,
    finished_manifest,
    frozen_heap,
    list_items,
    open_writer,
    select_shard,
    shard_bounds,
)
from sgt_data.engines._local import Engine, LocalEngine, OutPath
from sgt_data.errors import ConversionError, SgtDataError, WorkerDiedError
from sgt_data.schema import SkippedItem, StoreManifest
from sgt_data.store import SampleStore, StoreWriter

if TYPE_CHECKING:
    from sgt_data.convert._base import Converter, WorkItem

__all__ = ["RayEngine"]

_log = logging.getLogger(__name__)

#: the part stores' folder next to the output, and the file in it that fixes the shard count
PARTS_SUFFIX = ".parts"
PLAN_FILE = "plan.json"


def _ray() -> Any:
    try:  # (the extra may be missing where the package is type-checked too)
        import ray  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise SgtDataError(
            "--engine ray needs Ray, which is not installed: pip install 'sgt-data[ray]'"
        ) from None
    return ray


@dataclass(frozen=True)
class _ShardResult:
    """What a shard's task sends back: the items it skipped (``--skip-bad``) and its samples,
    or the bad item that stopped it (a strict run)."""

    samples: int = 0
    skipped: list[SkippedItem] = field(default_factory=list)
    bad: tuple[str, str, str] | None = None


class _Board:
    """A Ray actor: the items each shard has committed, for the driver's progress bar."""

    def __init__(self, shards: int) -> None:
        self.done = [0] * shards

    def report(self, shard: int, done: int) -> None:
        self.done[shard] = done

    def total(self) -> int:
        return sum(self.done)


def _convert_shard(
    conv: Converter,
    items: Sequence[WorkItem],
    problems: Sequence[SkippedItem],
    part: str,
    job: ConvertJob,
    workers: int,
    cwd: str,
    board: Any,
    index: int,
) -> _ShardResult:
    """The body of one shard's Ray task: convert (or resume) the part store ``part``."""
    here = os.getcwd()
    os.chdir(cwd)  # the driver's relative input paths (shared storage: the same on every node)
    try:

        def progress(done: int, total: int) -> None:
            board.report.remote(index, done)

        with frozen_heap():
            m = LocalEngine(workers).convert_listed(conv, items, problems, part, job, progress)
    except ConversionError as exc:  # bad input: the same on a retry, so reported, not raised
        return _ShardResult(bad=(exc.file, exc.item_id, exc.reason))
    finally:
        os.chdir(here)
    return _ShardResult(m.num_samples, list(m.skipped[len(problems) :]))


class RayEngine(Engine):
    """Shards converted as Ray tasks of ``workers`` CPUs each (the local engine inside a task),
    at most ``max_retries`` retries per shard. ``address``: the cluster to join (``auto``, or
    ``HOST:PORT``; default: the one this process is connected to, else a local one started for
    this run). ``shards``: how many (default: four per CPU of the cluster, at most one per
    batch; a resumed run keeps its first count). ``merge_progress(done, total)`` follows the
    merge of the parts."""

    def __init__(
        self,
        address: str | None = None,
        *,
        shards: int | None = None,
        workers: int = 1,
        max_retries: int = 3,
        merge_progress: Progress | None = None,
    ) -> None:
        _ray()  # the missing extra is said before anything is read
        if shards is not None and shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.address = address
        self.shards = shards
        self.workers = workers
        self.max_retries = max_retries
        self.merge_progress = merge_progress

    def convert(
        self, conv: Converter, out: OutPath, job: ConvertJob, progress: Progress | None = None
    ) -> StoreManifest:
        if job.shard != (0, 1):
            raise ValueError("--shard is the local engine's: --engine ray makes the shards itself")
        if "://" in str(out):
            raise ValueError(f"{out}: --engine ray writes to a path on shared storage")
        ray = _ray()
        out = Path(out).absolute()
        parts_dir = out.with_name(out.name + PARTS_SUFFIX)
        with frozen_heap():
            items, problems = list_items(conv, job.skip_bad)
            # the output's writer: the fingerprint of a local run of the same job, so either
            # engine resumes or recognises the other's store
            writer = open_writer(conv, out, job, len(items))
            if writer.finished:
                return finished_manifest(out)
            if job.overwrite:
                shutil.rmtree(parts_dir, ignore_errors=True)
            started = False
            if not ray.is_initialized():
                kw: dict[str, Any] = {"address": self.address, "log_to_driver": False}
                if self.address is None:
                    kw["include_dashboard"] = False
                ray.init(**kw)
                started = True
            try:
                n = self._plan(ray, parts_dir, fingerprint(conv, job, len(items)), len(items), job)
                parts = [str(parts_dir / f"part-{i:05d}-of-{n:05d}") for i in range(n)]
                results = self._run_shards(ray, conv, items, problems, parts, job, progress)
            finally:
                if started:
                    ray.shutdown()
            manifest = self._merge(writer, conv, items, problems, parts, results, job)
        shutil.rmtree(parts_dir, ignore_errors=True)
        return manifest

    def _plan(
        self, ray: Any, parts_dir: Path, fp: dict[str, Any], num_items: int, job: ConvertJob
    ) -> int:
        """The number of shards: the one the part stores at ``parts_dir`` were started with
        (same inputs and options), else a new one (and the folder emptied)."""
        plan_file = parts_dir / PLAN_FILE
        plan = None
        with contextlib.suppress(OSError, ValueError):
            plan = json.loads(plan_file.read_text(encoding="utf-8"))
        fp = json.loads(json.dumps(fp, sort_keys=True))
        if (
            isinstance(plan, dict)
            and plan.get("fingerprint") == fp
            and plan.get("batch_size") == job.batch_size
            and (self.shards is None or plan.get("shards") == self.shards)
        ):
            return int(plan["shards"])
        if self.shards is not None:
            n = self.shards
        else:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            n = max(1, min(math.ceil(num_items / job.batch_size), 4 * max(1, cpus // self.workers)))
        shutil.rmtree(parts_dir, ignore_errors=True)
        parts_dir.mkdir(parents=True)
        tmp = plan_file.with_name(f".{PLAN_FILE}.tmp")
        tmp.write_text(json.dumps({"fingerprint": fp, "batch_size": job.batch_size, "shards": n}))
        os.replace(tmp, plan_file)
        return n

    def _run_shards(
        self,
        ray: Any,
        conv: Converter,
        items: Sequence[WorkItem],
        problems: Sequence[SkippedItem],
        parts: Sequence[str],
        job: ConvertJob,
        progress: Progress | None,
    ) -> list[_ShardResult]:
        n = len(parts)
        board = ray.remote(_Board).options(num_cpus=0).remote(n)
        task = ray.remote(_convert_shard).options(
            num_cpus=self.workers,
            max_retries=self.max_retries,
            # a lost file system or a dead worker pool may go away on a retry; bad input not
            retry_exceptions=[OSError, WorkerDiedError],
        )
        conv_ref = ray.put(conv)
        refs: dict[Any, int] = {}
        for i, part in enumerate(parts):
            sub, sub_problems = select_shard(items, problems, (i, n))
            part_job = ConvertJob(
                shard=(i, n), batch_size=job.batch_size, skip_bad=job.skip_bad, fsync=job.fsync
            )
            ref = task.remote(
                conv_ref, sub, sub_problems, part, part_job, self.workers, os.getcwd(), board, i
            )
            refs[ref] = i
        results: dict[int, _ShardResult] = {}
        pending = list(refs)
        if progress:
            progress(0, len(items))
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.25)
                for ref in ready:
                    i = refs[ref]
                    res = self._result(ray, ref, i, n, parts[i])
                    if res.bad is not None:
                        raise ConversionError(*res.bad)
                    for sk in res.skipped:
                        _log.warning(
                            "skipping %s (%s): %s [shard %d/%d]",
                            sk.item_id,
                            sk.file,
                            sk.reason,
                            i,
                            n,
                        )
                    results[i] = res
                if progress:
                    progress(int(ray.get(board.total.remote())), len(items))
        finally:
            for ref in pending:  # stopped early: what they committed stays for a resume
                ray.cancel(ref, force=True)
        return [results[i] for i in range(n)]

    def _result(self, ray: Any, ref: Any, i: int, n: int, part: str) -> _ShardResult:
        try:
            res: _ShardResult = ray.get(ref)
            return res
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, SgtDataError):
                raise cause from None
            raise RuntimeError(f"shard {i}/{n} ({part}) failed:\n{exc}") from None
        except ray.exceptions.RayError as exc:
            raise WorkerDiedError(
                f"shard {i}/{n}: its Ray task ended without a result after "
                f"{self.max_retries + 1} attempts ({type(exc).__name__}); the committed batches "
                f"are kept in {Path(part).parent}: run the same command to resume"
            ) from None

    def _merge(
        self,
        writer: StoreWriter,
        conv: Converter,
        items: Sequence[WorkItem],
        problems: Sequence[SkippedItem],
        parts: Sequence[str],
        results: Sequence[_ShardResult],
        job: ConvertJob,
    ) -> StoreManifest:
        """The parts appended to the output in batches of ``batch_size`` input items, as a
        local run commits them (so the store is the local engine's, byte for byte)."""
        sizes = [r.samples for r in results]
        skipped = [sk for r in results for sk in r.skipped]
        if not skipped:  # a sample per item: batches of items are batches of samples
            copy_samples(
                parts, sizes, writer, batch_size=job.batch_size, progress=self.merge_progress
            )
        else:
            _merge_with_skips(writer, items, parts, results, job.batch_size, self.merge_progress)
        return finish(writer, conv, len(items), problems)


def _merge_with_skips(
    writer: StoreWriter,
    items: Sequence[WorkItem],
    parts: Sequence[str],
    results: Sequence[_ShardResult],
    batch_size: int,
    progress: Progress | None,
) -> None:
    """The merge where items were skipped: each batch of ``batch_size`` input items gets their
    samples, copied from the parts (:func:`copy_batches`), and the items skipped among them."""
    n = len(parts)
    sizes = [len(SampleStore.open(p)) for p in parts]
    bad: dict[str, SkippedItem] = {}
    for i, r in enumerate(results):
        ids = {it.item_id for it in items[slice(*shard_bounds(len(items), (i, n)))]}
        for sk in r.skipped:
            if sk.item_id not in ids:
                raise SgtDataError(
                    f"{parts[i]}: skipped item {sk.item_id!r} ({sk.file}) is not an item of "
                    "its shard; merge the parts with `sgt-data merge` instead"
                )
            bad[sk.item_id] = sk
        if sizes[i] != len(ids) - len(r.skipped):
            raise SgtDataError(f"{parts[i]}: {sizes[i]} samples, expected otherwise")
    # the shards are runs of items in order: the parts' samples, one after the other, are the
    # items' samples in item order, so a batch of items is a run of the parts' samples
    before = [0]  # samples of the items before each item
    for it in items:
        before.append(before[-1] + (it.item_id not in bad))
    batches: list[Batch] = []
    for lo in range(writer.items_done, len(items), batch_size):
        hi = min(lo + batch_size, len(items))
        gone = tuple(bad[it.item_id] for it in items[lo:hi] if it.item_id in bad)
        batches.append(Batch(before[lo], before[hi], hi, gone))

    def after(b: Batch, total_items: int) -> None:
        if progress:
            progress(b.items, total_items)

    copy_batches(parts, sizes, writer, batches, len(items), after)
