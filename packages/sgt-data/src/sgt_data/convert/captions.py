"""Caption converter: images with their captions (or prompts) -> text-to-image samples (the image
as target, the caption in the sample's ``caption`` metadata).

Two inputs are read:

* a JSONL file (or a JSON list) of records ``{"image": path, "caption" | "prompt": str, "id"?: ...}``
  with image paths relative to the image folder (``id`` defaults to the image path). Other scalar
  fields of a record, and the scalar entries of its optional ``metadata`` object, are kept in the
  sample's metadata; so the scene world's ``t2i/<split>.jsonl`` (GenEval metadata + ``id``,
  ``image``) keeps its ``tag``;
* a COCO captions JSON (``images`` + ``annotations`` of ``{"id", "image_id", "caption"}``): one
  sample per caption annotation, its id the annotation id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sgt_data.convert._base import (
    AnnotationFileConverter,
    WorkItem,
    load_json,
    read_json_records,
    scalar_metadata,
)
from sgt_data.convert.coco import _dedupe, _load_images, _parse_list
from sgt_data.errors import ConversionError
from sgt_data.schema import SkippedItem, TaskKind
from sgt_data.store import SampleRecord

__all__ = ["CaptionConverter"]

#: The metadata keys the converter writes itself; a record's own entries of these names are dropped.
_RESERVED = ("caption", "source_id", "format", "file", "height", "width")
#: Record fields read by the converter (not copied into the metadata as they are).
_READ = ("id", "image", "caption", "prompt", "metadata")


class _CaptionAnn(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int | str
    image_id: int | str
    caption: str


def _caption(rec: dict[str, Any]) -> Any:
    return rec["caption"] if "caption" in rec else rec.get("prompt")


class CaptionConverter(AnnotationFileConverter):
    """Captioned images (JSONL records or COCO captions JSON) -> text-to-image samples."""

    format = "captions"

    def list_items(self) -> tuple[list[WorkItem], list[SkippedItem]]:
        if self.annotations.suffix != ".jsonl":
            data = load_json(self.annotations)
            if isinstance(data, dict):
                return self._coco_items(data)
            if isinstance(data, list):
                return self._record_items(list(enumerate(data, 1)))
        return self._record_items(read_json_records(self.annotations, "caption"))

    def _record_items(
        self, records: list[tuple[int, Any]]
    ) -> tuple[list[WorkItem], list[SkippedItem]]:
        file = str(self.annotations)
        items: list[WorkItem] = []
        bad: list[SkippedItem] = []
        seen: set[str] = set()
        for n, rec in records:
            if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
                raise ConversionError(file, f"record {n}", "a record needs a string 'image' path")
            rid = str(rec.get("id", rec["image"]))
            caption = _caption(rec)
            if not isinstance(caption, str) or not caption.strip():
                raise ConversionError(
                    file, f"record {n} id={rid}", "a record needs a non-empty 'caption' or 'prompt'"
                )
            if rid in seen:
                bad.append(
                    SkippedItem(item_id=rid, file=file, reason=f"duplicate id {rid!r} (record {n})")
                )
                continue
            seen.add(rid)
            extra = {k: v for k, v in rec.items() if k not in _READ}
            extra.update(scalar_metadata(rec.get("metadata"), file, rid))
            payload = {
                "caption": caption,
                "file": rec["image"],
                "hw": None,
                "extra": scalar_metadata(extra, file, rid, reserved=_RESERVED),
            }
            items.append(WorkItem(rid, str(self.images / rec["image"]), payload))
        return items, bad

    def _coco_items(self, data: Any) -> tuple[list[WorkItem], list[SkippedItem]]:
        file, _, images, bad = _load_images(self.annotations, data)
        anns, bad_anns = _dedupe(
            _parse_list(_CaptionAnn, data, "annotations", file), "id", file, "caption"
        )
        bad += bad_anns
        by_id = {im.id: im for im in images}
        items = []
        for a in sorted(anns, key=lambda x: (str(type(x.id)), x.id)):
            im = by_id.get(a.image_id)
            if im is None:
                reason = f"caption refers to unknown image id {a.image_id!r}"
                bad.append(SkippedItem(item_id=str(a.id), file=file, reason=reason))
                continue
            if not a.caption.strip():
                bad.append(SkippedItem(item_id=str(a.id), file=file, reason="empty caption"))
                continue
            payload = {
                "caption": a.caption,
                "file": im.file_name,
                "hw": (im.height, im.width),
                "extra": {"image_id": im.id},
            }
            items.append(WorkItem(str(a.id), str(self.images / im.file_name), payload))
        return items, bad

    def process(self, item: WorkItem) -> SampleRecord:
        p = item.payload
        path = Path(item.file)
        data, hw, rgb = self.load_image(path, item, expect=p["hw"])
        meta = {
            "metadata": {
                **p["extra"],
                "caption": p["caption"],
                "source_id": item.item_id,
                "file": p["file"],
                "height": hw[0],
                "width": hw[1],
                "format": "captions",
            }
        }
        return self.image_record(
            item, path, data, hw, rgb, frozenset({(TaskKind.TEXT_TO_IMAGE, None)}), {}, meta
        )
