"""What every input format shares: the :class:`Converter` interface (list items, turn one item
into a sample record), its options and image/depth loading, and :func:`run_conversion`, which
hands a conversion to an engine (``sgt_data.engines``: the local process pool by default, or
Ray). The runner lives in ``_runner``, the local worker pool in ``_pool``, input readers in
``_inputs``."""

from __future__ import annotations

import abc
import io
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from sgt_data._palette import DEFAULT_MAX_INSTANCES, DEFAULT_NUM_CLASSES
from sgt_data.convert._image_check import structure_problem, verbatim_header
from sgt_data.convert._inputs import (
    file_sha256,
    load_json,
    read_depth_map,
    read_json_records,
    scalar_metadata,
)
from sgt_data.convert._pool import _process as _process
from sgt_data.convert._runner import ConvertJob, merge_stores, parse_shard
from sgt_data.convert._runner import created_by as _created_by  # noqa: F401
from sgt_data.convert._runner import no_cyclic_gc as _no_cyclic_gc  # noqa: F401
from sgt_data.errors import ConversionError, SgtDataError
from sgt_data.render import (
    DepthRenderer,
    EdgeRenderer,
    InstanceRenderer,
    check_depth_model,
    depth_from_model,
)
from sgt_data.schema import RendererSpec, SkippedItem, SourceSpec, StoreManifest, TaskKind
from sgt_data.store import FieldSpec, SampleRecord, label_field

if TYPE_CHECKING:
    from sgt_data.engines import Engine

__all__ = [
    "AnnotationFileConverter",
    "ConvertOptions",
    "Converter",
    "WorkItem",
    "file_sha256",
    "label_dtype",
    "load_json",
    "merge_stores",
    "parse_shard",
    "read_json_records",
    "run_conversion",
    "scalar_metadata",
]

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
        return read_depth_map(self.opts.depth_dir, image_path, item.item_id, hw)


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
    engine: Engine | None = None,
) -> StoreManifest:
    """Convert ``conv``'s items (or shard ``i`` of ``N`` contiguous blocks of them) into a store at
    ``out``, resuming an interrupted run with the same inputs and options. ``batch_size`` input
    items make one committed batch, which one worker converts and writes. ``fsync``: make each
    commit durable against a crash of the machine (see ``StoreWriter.open``); not part of the
    resume fingerprint. ``engine``: where the items are converted (default: the local engine
    with ``workers`` processes; an engine given here brings its own workers)."""
    from sgt_data.engines import LocalEngine

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if engine is not None and workers != 1:
        raise ValueError("give the workers to the engine, not to run_conversion, with engine=")
    job = ConvertJob(
        shard=shard, batch_size=batch_size, skip_bad=skip_bad, overwrite=overwrite, fsync=fsync
    )
    return (engine or LocalEngine(workers)).convert(conv, out, job, progress)
