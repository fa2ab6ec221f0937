"""The conversion pipeline shared by every input format: list items, process them (in worker
processes), write them batch by batch into a store, resume after an interruption, merge shards."""

from __future__ import annotations

import abc
import contextlib
import gc
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import signal
import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from sgt_data._store_merge import copy_samples
from sgt_data.convert._image_check import structure_problem, verbatim_header
from sgt_data.errors import ConversionError, SgtDataError, StoreError, WorkerDiedError
from sgt_data.render import (
    DEFAULT_MAX_INSTANCES,
    DEFAULT_NUM_CLASSES,
    DepthRenderer,
    EdgeRenderer,
    InstanceRenderer,
    check_depth_model,
    depth_from_model,
)
from sgt_data.schema import RendererSpec, SkippedItem, SourceSpec, StoreManifest, TaskKind
from sgt_data.store import (
    LAYOUT_VERSION,
    MANIFEST_FILE,
    BatchStager,
    FieldSpec,
    SampleRecord,
    SampleStore,
    StagedBatch,
    StoreWriter,
    label_field,
    seal_record,
)

__all__ = [
    "AnnotationFileConverter",
    "ConvertOptions",
    "Converter",
    "WorkItem",
    "merge_stores",
    "read_json_records",
    "run_conversion",
    "scalar_metadata",
]

_log = logging.getLogger(__name__)

_BYTESIO_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")

Progress = Callable[[int, int], None]
SourceFormat = Literal["coco", "coco-panoptic", "coco-stuff", "sa1b", "vqa", "captions"]


@dataclass(frozen=True)
class WorkItem:
    """One input item (an image with its annotations, or a VQA record): its id, the file to name
    in errors, and converter-specific data."""

    item_id: str
    file: str
    payload: Any = None


@dataclass(frozen=True)
class ConvertOptions:
    """Options shared by the converters (all but ``verify_images`` are part of the resume
    fingerprint)."""

    name: str
    seed: int = 0
    num_classes: int = DEFAULT_NUM_CLASSES
    max_instances: int = DEFAULT_MAX_INSTANCES
    edge: bool = False
    edge_low: int = 100
    edge_high: int = 200
    depth_dir: str | None = None
    depth_model: str | None = None
    depth_range: tuple[float, float] = (0.0, 10.0)
    reconstruction: bool = True
    #: how image files stored verbatim (JPEG, PNG) are checked: "structure" (markers, chunk
    #: CRCs, end marker: catches truncated and overwritten files without decoding) or "full"
    #: (a decode, which also catches damage inside a JPEG's entropy-coded data). Images that
    #: are decoded anyway (edge and model-depth targets, other formats) are always decoded.
    verify_images: Literal["structure", "full"] = "structure"

    def fingerprint(self) -> dict[str, Any]:
        # verify_images is left out: it decides which damaged files are rejected, never what
        # a converted sample holds, so a run may be resumed with the other check
        return {
            "name": self.name,
            "seed": self.seed,
            "num_classes": self.num_classes,
            "max_instances": self.max_instances,
            "edge": [self.edge, self.edge_low, self.edge_high],
            "depth": [_abs(self.depth_dir), _abs(self.depth_model), list(self.depth_range)],
            "reconstruction": self.reconstruction,
        }


def _abs(p: str | None) -> str | None:
    return str(Path(p).resolve()) if p else None


def label_dtype(n: int) -> type[np.unsignedinteger[Any]]:
    """The narrowest instance-map dtype holding ids 0..n (uint8 or uint16): half the bytes to
    paint, scan and compress while ids fit a byte (the stored frame is uint8 then anyway)."""
    return np.uint8 if n < 256 else np.uint16


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class Converter(abc.ABC):
    """One input format: lists its items and turns one item into a :class:`SampleRecord`."""

    format: ClassVar[SourceFormat]

    def __init__(self, opts: ConvertOptions) -> None:
        self.opts = opts
        self._instance: InstanceRenderer | None = None
        self._edge = EdgeRenderer(opts.edge_low, opts.edge_high) if opts.edge else None
        self._depth = (
            DepthRenderer(*opts.depth_range, per_image=opts.depth_model is not None)
            if opts.depth_dir or opts.depth_model
            else None
        )
        if opts.depth_model:
            # a bad model path is the run's error, not every item's (--skip-bad would skip all)
            check_depth_model(opts.depth_model)

    @abc.abstractmethod
    def list_items(self) -> tuple[list[WorkItem], list[SkippedItem]]:
        """All items in a fixed order, and the problems found while listing (e.g. duplicate ids)."""

    @abc.abstractmethod
    def process(self, item: WorkItem) -> SampleRecord:
        """Convert one item; raises :class:`ConversionError` naming the file and id on bad input."""

    @abc.abstractmethod
    def source(self, num_items: int) -> SourceSpec:
        """The source record for the manifest."""

    def label_fields(self) -> list[FieldSpec]:
        """The label-map arrays this format writes (besides image and meta)."""
        return []

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this conversion's output (inputs and options)."""
        return {"format": self.format, **self.opts.fingerprint()}

    def fields(self) -> list[FieldSpec]:
        out = self.label_fields()
        if self._edge is not None:
            out.append(label_field("labels/edge", "uint8"))
        if self._depth is not None:
            out.append(label_field("labels/depth", "uint16"))
        return out

    def segmentation_renderers(self) -> list[RendererSpec]:
        """Renderers of the segmentation variants this format produces."""
        return []

    def renderers(self) -> list[RendererSpec]:
        specs = self.segmentation_renderers()
        if self._edge is not None:
            specs.append(self._edge.spec())
        if self._depth is not None:
            specs.append(self._depth.spec())
        if self.opts.reconstruction and self.format != "vqa":
            from sgt_data.render import ReconstructionRenderer

            specs.append(ReconstructionRenderer().spec())
        return specs

    # -- helpers for subclasses -----------------------------------------------------------
    def instance_slots(
        self,
        labels: NDArray[Any],
        num_segments: int,
        item: WorkItem,
        isthing: Sequence[bool] | None = None,
    ) -> list[int]:
        """The instance palette slot of each segment 1..``num_segments`` of a label map (-1: stuff
        or absent), computed once here so that readers render targets with a table lookup."""
        from sgt_data.render import InstanceRenderer

        inst = self._instance
        if inst is None:
            o = self.opts
            inst = self._instance = InstanceRenderer(
                o.seed, num_classes=o.num_classes, max_instances=o.max_instances
            )
        things = labels
        if isthing is not None and not all(isthing):
            keep = np.concatenate([[0], np.arange(1, num_segments + 1)])
            keep[1:][~np.asarray(isthing, dtype=bool)] = 0
            things = np.take(keep.astype(labels.dtype), labels)
        try:
            slots = inst.assign(things)
        except SgtDataError as exc:  # more instances than palette colours
            raise ConversionError(item.file, item.item_id, str(exc)) from exc
        out = np.full(num_segments, -1, dtype=np.int64)
        out[: len(slots)] = slots
        return [int(v) for v in out]

    def load_image(
        self,
        path: Path,
        item: WorkItem,
        *,
        expect: tuple[int, int] | None = None,
        need_rgb: bool = False,
    ) -> tuple[bytes, tuple[int, int], NDArray[np.uint8] | None]:
        """Read and decode an image file: (bytes to store, (height, width), RGB array if needed).

        JPEG and PNG files are stored verbatim; other formats are re-encoded as PNG."""
        from PIL import Image, UnidentifiedImageError

        need_rgb = need_rgb or self._edge is not None or self.opts.depth_model is not None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConversionError(
                str(path), item.item_id, f"image file cannot be read: {exc.strerror or exc}"
            ) from exc
        if not need_rgb and self.opts.verify_images == "structure":
            # a JPEG or PNG stored verbatim: its size and structure from one walk over its
            # markers or chunks, without opening it in PIL (~0.1 ms per COCO image)
            header = verbatim_header(data, Image.MAX_IMAGE_PIXELS)
            if header is not None:
                _, size, damage = header
                if damage is not None:
                    raise ConversionError(
                        str(path), item.item_id, f"corrupt or unreadable image: {damage}"
                    )
                self._check_size(path, item, size, expect)
                return data, size, None
        problem: str | None = None
        rgb: NDArray[np.uint8] | None = None
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
                hw = (im.height, im.width)
                verbatim = fmt in ("JPEG", "PNG")
                if need_rgb or not verbatim:
                    im.load()
                    rgb = np.asarray(im.convert("RGB"))
                elif self.opts.verify_images == "full":
                    if fmt == "JPEG":
                        # a DCT-scaled decode still entropy-decodes every block (the same
                        # errors as a full decode, ~40% cheaper)
                        im.draft(im.mode, (max(1, hw[1] // 8), max(1, hw[0] // 8)))
                    im.load()
                else:
                    # stored verbatim and not needed as pixels: check the file's structure
                    # (a tenth of the cost of even a DCT-scaled decode)
                    problem = structure_problem(data, str(fmt))
        except UnidentifiedImageError as exc:  # PIL's text names only its in-memory file
            head = data[:8]
            what = "the file is empty" if not data else f"it starts with {head!r}"
            raise ConversionError(
                str(path),
                item.item_id,
                f"not an image file: no image format recognised ({what})",
            ) from exc
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            text = _BYTESIO_REPR.sub("the file", str(exc))
            raise ConversionError(
                str(path), item.item_id, f"corrupt or unreadable image: {text}"
            ) from exc
        if problem is not None:
            raise ConversionError(
                str(path), item.item_id, f"corrupt or unreadable image: {problem}"
            )
        self._check_size(path, item, hw, expect)
        if fmt not in ("JPEG", "PNG"):
            assert rgb is not None
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
            data = buf.getvalue()
        return data, hw, rgb

    @staticmethod
    def _check_size(
        path: Path, item: WorkItem, hw: tuple[int, int], expect: tuple[int, int] | None
    ) -> None:
        if expect is not None and tuple(expect) != hw:
            raise ConversionError(
                str(path),
                item.item_id,
                f"image is {hw[0]}x{hw[1]} but the annotations say {expect[0]}x{expect[1]}",
            )

    def image_record(
        self,
        item: WorkItem,
        image_path: Path,
        encoded: bytes,
        hw: tuple[int, int],
        rgb: NDArray[np.uint8] | None,
        tasks: Iterable[tuple[TaskKind, str | None]],
        labels: dict[str, NDArray[Any]],
        meta: dict[str, Any],
    ) -> SampleRecord:
        """The record of one image sample: the encoded image, its label arrays and metadata,
        plus the edge / depth / reconstruction targets the options ask for."""
        record = SampleRecord(
            f"{self.opts.name}:{item.item_id}",
            hw[0],
            hw[1],
            frozenset(tasks),
            {"image": np.frombuffer(encoded, np.uint8), **labels},
            meta,
        )
        self.extra_targets(item, image_path, hw, rgb, record)
        return record

    def extra_targets(
        self,
        item: WorkItem,
        image_path: Path,
        hw: tuple[int, int],
        rgb: NDArray[np.uint8] | None,
        record: SampleRecord,
    ) -> None:
        """Add the edge / depth / reconstruction targets the options ask for."""
        tasks = set(record.tasks)
        if self.opts.reconstruction:
            tasks.add((TaskKind.RECONSTRUCTION, None))
        if self._edge is not None:
            assert rgb is not None
            record.arrays["labels/edge"] = self._edge.compute(rgb)
            tasks.add((TaskKind.EDGE, None))
        if self._depth is not None:
            depth = self._load_depth(item, image_path, hw, rgb)
            d_range = self._depth.range_for(depth)
            record.arrays["labels/depth"] = self._depth.quantise(depth, d_range)
            record.meta["depth_range"] = list(d_range)
            tasks.add((TaskKind.DEPTH, None))
        record.tasks = frozenset(tasks)

    def _load_depth(
        self, item: WorkItem, image_path: Path, hw: tuple[int, int], rgb: NDArray[np.uint8] | None
    ) -> NDArray[np.float32]:
        if self.opts.depth_model:
            assert rgb is not None
            return depth_from_model(rgb, self.opts.depth_model)
        assert self.opts.depth_dir is not None
        base = Path(self.opts.depth_dir) / image_path.stem
        npy, png = base.with_suffix(".npy"), base.with_suffix(".png")
        if npy.exists():
            try:
                depth = np.load(npy).astype(np.float32)
            except (OSError, ValueError) as exc:
                raise ConversionError(
                    str(npy), item.item_id, f"unreadable depth map: {exc}"
                ) from exc
            src = npy
        elif png.exists():
            from PIL import Image

            try:
                with Image.open(png) as im:
                    depth = np.asarray(im, dtype=np.float32) / 1000.0  # 16-bit PNG in millimetres
            except OSError as exc:
                raise ConversionError(
                    str(png), item.item_id, f"unreadable depth map: {exc}"
                ) from exc
            src = png
        else:
            raise ConversionError(
                str(npy), item.item_id, "no depth map (.npy or .png) for this image"
            )
        if depth.shape != hw:
            raise ConversionError(
                str(src),
                item.item_id,
                f"depth map is {depth.shape[0]}x{depth.shape[1]}, image is {hw[0]}x{hw[1]}",
            )
        out: NDArray[np.float32] = depth
        return out


class AnnotationFileConverter(Converter):
    """A format read from one annotation file (its sha256 goes into the manifest) plus a folder
    that the file's image paths are relative to."""

    def __init__(
        self,
        annotations: str | os.PathLike[str],
        images: str | os.PathLike[str],
        opts: ConvertOptions,
    ) -> None:
        super().__init__(opts)
        self.annotations = Path(annotations)
        self.images = Path(images)

    def source(self, num_items: int) -> SourceSpec:
        return SourceSpec(
            format=self.format,
            path=str(self.annotations),
            num_items=num_items,
            sha256=file_sha256(self.annotations),
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "annotations": str(self.annotations.resolve()),
            "images": str(self.images.resolve()),
        }


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


# -- the pipeline ---------------------------------------------------------------------------
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


def _process(conv: Converter, item: WorkItem) -> SampleRecord | _Bad:
    try:
        rec = conv.process(item)
        # compress label maps, serialise metadata and checksum here, in the worker
        seal_record(rec, conv.fields())
        return rec
    except ConversionError as exc:
        return _Bad(exc.item_id, exc.file, exc.reason)
    except SgtDataError as exc:  # e.g. an RLEError from the kernels
        return _Bad(item.item_id, item.file, str(exc))


@dataclass(frozen=True)
class _BatchOut:
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
) -> _BatchOut:
    """Convert items ``lo:hi`` and stage them as one batch (in a worker, or in the parent);
    ``at[0]`` follows the item being converted (to name it if converting it fails)."""
    records: list[SampleRecord] = []
    skipped: list[SkippedItem] = []
    for k in range(lo, hi):
        if at is not None:
            at[0] = k
        res = _process(conv, items[k])
        if isinstance(res, _Bad):
            if not skip_bad:
                return _BatchOut(None, skipped, res)
            skipped.append(SkippedItem(item_id=res.item_id, file=res.file, reason=res.reason))
        else:
            records.append(res)
    return _BatchOut(stager.stage(records, name), skipped)


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
            out: _BatchOut | _Crash
            at = [lo]
            try:
                out = _convert_batch(conv, items, lo, hi, stager, skip_bad, name, at)
            except Exception:  # a bug: reported with its traceback, not a silent death
                import traceback

                out = _Crash(items[at[0]].item_id, traceback.format_exc())
            conn.send((number, out))
    except (EOFError, OSError):  # the parent stopped early (an error, ^C): nothing to report
        pass


def _batches(
    conv: Converter,
    items: Sequence[WorkItem],
    bounds: Sequence[tuple[int, int, str]],
    stager: BatchStager,
    skip_bad: bool,
    workers: int,
) -> Generator[_BatchOut, None, None]:
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
        _process(conv, items[bounds[0][0]])
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
        ready: dict[int, _BatchOut | _Crash] = {}
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


def _created_by() -> str:
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


def run_conversion(
    conv: Converter,
    out: str | os.PathLike[str],
    *,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 64,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    fsync: bool = False,
) -> StoreManifest:
    """Convert ``conv``'s items (or shard ``i`` of ``N`` contiguous blocks of them) into a store at
    ``out``, resuming an interrupted run with the same inputs and options. ``batch_size`` input
    items make one committed batch, which one worker converts and writes. ``fsync``: make each
    commit durable against a crash of the machine (see ``StoreWriter.open``); not part of the
    resume fingerprint."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with _frozen_heap():
        return _run_conversion(
            conv, out, workers, shard, batch_size, skip_bad, overwrite, progress, fsync
        )


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
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
def _no_cyclic_gc() -> Iterator[None]:
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


def _run_conversion(
    conv: Converter,
    out: str | os.PathLike[str],
    workers: int,
    shard: tuple[int, int],
    batch_size: int,
    skip_bad: bool,
    overwrite: bool,
    progress: Progress | None,
    fsync: bool,
) -> StoreManifest:
    with _no_cyclic_gc():
        items, problems = conv.list_items()
    if problems and not skip_bad:
        p = problems[0]
        raise ConversionError(p.file, p.item_id, p.reason)
    i, n = shard
    lo, hi = len(items) * i // n, len(items) * (i + 1) // n
    items = items[lo:hi]
    if n > 1:
        problems = [p for p in problems if p.item_id in {it.item_id for it in items}]
    fp = {
        **conv.fingerprint(),
        "shard": [i, n],
        "skip_bad": skip_bad,
        "items": len(items),
        "layout": LAYOUT_VERSION,
    }
    writer = StoreWriter.open(
        out,
        name=conv.opts.name,
        fields=conv.fields(),
        batch_size=batch_size,
        fingerprint=fp,
        overwrite=overwrite,
        # everything a strict run committed is good, so it may go on with --skip-bad
        resumable_from={"skip_bad": False},
        fsync=fsync,
    )
    if writer.finished:
        _log.info("%s is already complete", out)
        return StoreManifest.model_validate_json(
            (Path(out) / MANIFEST_FILE).read_text(encoding="utf-8")
        )
    done = writer.items_done
    if progress:
        progress(done, len(items))
    # batches of batch_size items from the resume point on (a committed batch always ends on a
    # multiple of batch_size, so an interrupted run re-creates an uninterrupted run's batches)
    # staging folders named per run too: nothing of an earlier, killed run can mix into them
    run = f"{os.getpid()}-{os.urandom(4).hex()}"
    bounds = [
        (lo, min(lo + batch_size, len(items)), f"b{lo}-{run}")
        for lo in range(done, len(items), batch_size)
    ]
    # closed on the way out, so that a bad item's error stops the workers at once
    with contextlib.closing(
        _batches(conv, items, bounds, writer.stager, skip_bad, workers)
    ) as batches:
        for (_, hi, _), got in zip(bounds, batches, strict=False):
            if got.bad is not None:
                raise ConversionError(got.bad.file, got.bad.item_id, got.bad.reason)
            assert got.staged is not None
            for sk in got.skipped:
                _log.warning("skipping %s (%s): %s", sk.item_id, sk.file, sk.reason)
            writer.commit(got.staged, hi, got.skipped)
            done = hi
            if progress:
                progress(done, len(items))
    return writer.finish(
        created_by=_created_by(),
        sources=[conv.source(len(items))],
        renderers=conv.renderers(),
        palette_seed=conv.opts.seed,
        extra_skipped=problems,
    )


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
        created_by=_created_by(),
        sources=sources,
        renderers=first.manifest.renderers,
        palette_seed=first.manifest.palette_seed,
        extra_skipped=[sk for s in stores for sk in s.manifest.skipped],
    )
