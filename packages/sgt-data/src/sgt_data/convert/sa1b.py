"""SA-1B converter: a folder of per-image JSON files (compressed RLE masks) beside their JPEGs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sgt_data.convert._base import Converter, ConvertOptions, WorkItem, label_dtype, load_json
from sgt_data.errors import ConversionError, SgtDataError
from sgt_data.render import InstanceRenderer
from sgt_data.schema import RendererSpec, SkippedItem, SourceSpec, TaskKind
from sgt_data.store import FieldSpec, SampleRecord, label_field

__all__ = ["Sa1bConverter"]

#: how much of a JSON file ``list_items`` reads to find its image id (SA-1B writes "image" first)
_HEAD_BYTES = 4096
_IMAGE_ID = re.compile(rb'"image"\s*:\s*\{[^{}]*?"image_id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')


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
        # the file name is the item's identity; a file whose image_id an earlier file (in name
        # order) already holds stays in the list, marked, so that it fails (or is skipped) in
        # its place and its shard, like any other bad item
        items = []
        first: dict[str, str] = {}
        for p in sorted(self.folder.glob("*.json")):
            image_id = _peek_image_id(p)
            reason = None
            if image_id is not None:
                if image_id in first:
                    reason = f"duplicate image id {image_id!r} (also in {first[image_id]})"
                else:
                    first[image_id] = p.name
            items.append(WorkItem(p.stem, str(p), reason))
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

        if item.payload is not None:
            raise ConversionError(item.file, item.item_id, item.payload)
        try:
            raw = load_json(item.file)
        except ConversionError as exc:  # name the item, not "-"
            raise ConversionError(exc.file, item.item_id, exc.reason) from exc
        if not isinstance(raw, dict):
            raise ConversionError(
                item.file,
                item.item_id,
                "does not match the SA-1B format: the top level must be an object with 'image' "
                f"and 'annotations', got {type(raw).__name__}",
            )
        try:
            rec = _Record.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConversionError(
                item.file,
                item.item_id,
                f"does not match the SA-1B format: {_where(first['loc'], raw)}: {first['msg']}",
            ) from None
        name = rec.image.file_name
        if not name or name != Path(name).name or name in (".", ".."):
            raise ConversionError(
                item.file,
                item.item_id,
                f"image.file_name must be a file name beside the JSON file, got {name!r}",
            )
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
                rles, h, w, dtype=label_dtype(len(rles)), image_id=item.item_id, ann_ids=ids
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


def _peek_image_id(path: Path) -> str | None:
    """The image id of an SA-1B JSON file as a string, read from the file's first bytes (the
    whole file if its "image" object is not there); None if the file cannot be read or parsed
    (``process`` then reports it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
        m = _IMAGE_ID.search(head)
        if m is not None:
            return str(json.loads(m.group(1)))
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    image = raw.get("image") if isinstance(raw, dict) else None
    image_id = image.get("image_id") if isinstance(image, dict) else None
    return str(image_id) if isinstance(image_id, int | str) else None


def _where(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """A pydantic error location as ``annotations[3] (id 17).segmentation.counts``."""
    if not loc:
        return "top level"
    out = str(loc[0])
    for k, part in enumerate(loc[1:], 1):
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
        if k == 1 and loc[0] == "annotations" and isinstance(part, int):
            ann = raw["annotations"][part]  # the error is inside it, so it exists
            if isinstance(ann, dict) and isinstance(ann.get("id"), int | str):
                out += f" (id {ann['id']})"
    return out
