"""SA-1B converter: a folder of per-image JSON files (compressed RLE masks) beside their JPEGs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from sgt_data.convert._base import Converter, ConvertOptions, WorkItem, load_json
from sgt_data.errors import ConversionError, SgtDataError
from sgt_data.render import InstanceRenderer
from sgt_data.schema import RendererSpec, SkippedItem, SourceSpec, TaskKind
from sgt_data.store import FieldSpec, SampleRecord, label_field

__all__ = ["Sa1bConverter"]


class _Rle(BaseModel):
    model_config = ConfigDict(extra="allow")
    size: tuple[int, int]
    counts: str


class _Ann(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int | str
    segmentation: _Rle


class _Img(BaseModel):
    model_config = ConfigDict(extra="allow")
    image_id: int | str
    width: int
    height: int
    file_name: str


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")
    image: _Img
    annotations: list[_Ann]


class Sa1bConverter(Converter):
    """SA-1B ``sa_*.json`` + ``sa_*.jpg`` -> instance segmentation targets (every mask one instance)."""

    format = "sa1b"

    def __init__(self, folder: str | os.PathLike[str], opts: ConvertOptions) -> None:
        super().__init__(opts)
        self.folder = Path(folder)

    def list_items(self) -> tuple[list[WorkItem], list[SkippedItem]]:
        if not self.folder.is_dir():
            raise ConversionError(str(self.folder), "-", "SA-1B folder does not exist")
        # the file name is the image's identity; duplicate image_ids inside are caught per item
        items = [WorkItem(p.stem, str(p)) for p in sorted(self.folder.glob("*.json"))]
        return items, []

    def label_fields(self) -> list[FieldSpec]:
        return [label_field("labels/segments", "uint16")]

    def segmentation_renderers(self) -> list[RendererSpec]:
        o = self.opts
        return [
            InstanceRenderer(
                o.seed, num_classes=o.num_classes, max_instances=o.max_instances
            ).spec()
        ]

    def source(self, num_items: int) -> SourceSpec:
        return SourceSpec(format="sa1b", path=str(self.folder), num_items=num_items)

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "folder": str(self.folder.resolve())}

    def process(self, item: WorkItem) -> SampleRecord:
        from sgt_data import rle

        raw = load_json(item.file)
        try:
            rec = _Record.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ConversionError(
                item.file, item.item_id, f"does not match the SA-1B format: {where}: {first['msg']}"
            ) from None
        h, w = rec.image.height, rec.image.width
        ids = [a.id for a in rec.annotations]
        if len(set(ids)) != len(ids):
            dup = sorted({str(i) for i in ids if ids.count(i) > 1})
            raise ConversionError(item.file, item.item_id, f"duplicate annotation ids {dup[:5]}")
        if len(ids) > self.opts.max_instances:
            raise ConversionError(
                item.file,
                item.item_id,
                f"{len(ids)} masks exceed max_instances {self.opts.max_instances}",
            )
        for a in rec.annotations:
            if tuple(a.segmentation.size) != (h, w):
                raise ConversionError(
                    item.file,
                    f"{item.item_id} (annotation {a.id})",
                    f"mask size {list(a.segmentation.size)} disagrees with its image {h}x{w}",
                )
        path = Path(item.file).with_name(rec.image.file_name)
        data, hw, rgb = self.load_image(path, item, expect=(h, w))
        rles = [{"size": [h, w], "counts": a.segmentation.counts} for a in rec.annotations]
        try:
            labels = rle.paint_label_map(
                rles, h, w, dtype=np.uint16, image_id=item.item_id, ann_ids=ids
            )
        except SgtDataError as exc:
            raise ConversionError(item.file, item.item_id, str(exc)) from exc
        meta = {
            "metadata": {
                "source_id": str(rec.image.image_id),
                "file": rec.image.file_name,
                "height": h,
                "width": w,
                "format": "sa1b",
            },
            "segments": {
                "category": [0] * len(ids),
                "isthing": [True] * len(ids),
                "ann_id": ids,
                "slot": self.instance_slots(labels, len(ids), item),
            },
        }
        return self.image_record(
            item,
            path,
            data,
            hw,
            rgb,
            frozenset({(TaskKind.SEGMENTATION, "instance")}),
            {"labels/segments": labels},
            meta,
        )
