"""LLaVA-style VQA converter: JSONL (or a JSON list) of ``{"id", "image", "conversations"}`` plus
an image folder -> understanding samples (image + user/assistant turns). The scalar entries of a
record's optional ``metadata`` object (question type, POPE split...) are kept in the sample's
metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sgt_data.convert._base import (
    AnnotationFileConverter,
    WorkItem,
    read_json_records,
    scalar_metadata,
)
from sgt_data.errors import ConversionError
from sgt_data.schema import SkippedItem, TaskKind
from sgt_data.store import SampleRecord

__all__ = ["VqaConverter"]

#: The metadata keys the converter writes itself; a record's own entries of these names are dropped.
_RESERVED = ("source_id", "format", "file", "height", "width")

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _turns(conv: Any, file: str, item_id: str) -> list[dict[str, str]]:
    if not isinstance(conv, list) or not conv:
        raise ConversionError(file, item_id, "'conversations' must be a non-empty list")
    out = []
    for k, t in enumerate(conv):
        if (
            not isinstance(t, dict)
            or not isinstance(t.get("value"), str)
            or t.get("from") not in _ROLES
        ):
            raise ConversionError(
                file,
                item_id,
                f"turn {k} must be {{'from': human|gpt, 'value': str}}, got {t!r:.80}",
            )
        role = _ROLES[t["from"]]
        want = "user" if k % 2 == 0 else "assistant"
        if role != want:
            raise ConversionError(
                file,
                item_id,
                f"turn {k} is from {role}, expected {want} (turns must alternate, user first)",
            )
        out.append({"role": role, "text": t["value"].replace("<image>", "").strip()})
    if len(out) % 2:
        raise ConversionError(file, item_id, "the conversation ends with a user turn (no answer)")
    return out


class VqaConverter(AnnotationFileConverter):
    """LLaVA-style conversations -> understanding samples."""

    format = "vqa"

    def list_items(self) -> tuple[list[WorkItem], list[SkippedItem]]:
        file = str(self.annotations)
        items: list[WorkItem] = []
        bad: list[SkippedItem] = []
        seen: set[str] = set()
        for n, rec in read_json_records(self.annotations, "LLaVA"):
            if not isinstance(rec, dict) or "id" not in rec or "conversations" not in rec:
                raise ConversionError(
                    file, f"record {n}", "a record needs 'id' and 'conversations'"
                )
            rid = str(rec["id"])
            if rid in seen:
                bad.append(
                    SkippedItem(item_id=rid, file=file, reason=f"duplicate id {rid!r} (record {n})")
                )
                continue
            seen.add(rid)
            image = rec.get("image")
            if image is not None and not isinstance(image, str):
                bad.append(
                    SkippedItem(item_id=rid, file=file, reason="'image' must be a relative path")
                )
                continue
            items.append(
                WorkItem(
                    rid,
                    str(self.images / image) if image else file,
                    {
                        "image": image,
                        "conv": rec["conversations"],
                        "metadata": rec.get("metadata"),
                    },
                )
            )
        return items, bad

    def process(self, item: WorkItem) -> SampleRecord:
        file = str(self.annotations)
        turns = _turns(item.payload["conv"], file, item.item_id)
        extra = scalar_metadata(item.payload["metadata"], file, item.item_id, reserved=_RESERVED)
        meta: dict[str, Any] = {
            "metadata": {**extra, "source_id": item.item_id, "format": "vqa"},
            "conversation": turns,
        }
        arrays = {}
        h = w = 0
        if item.payload["image"]:
            path = Path(item.file)
            data, (h, w), _ = self.load_image(path, item)
            arrays["image"] = np.frombuffer(data, np.uint8)
            meta["metadata"].update(file=item.payload["image"], height=h, width=w)
        return SampleRecord(
            f"{self.opts.name}:{item.item_id}",
            h,
            w,
            frozenset({(TaskKind.UNDERSTANDING, None)}),
            arrays,
            meta,
        )
