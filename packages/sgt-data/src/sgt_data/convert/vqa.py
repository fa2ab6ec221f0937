"""LLaVA-style VQA converter: JSONL (or a JSON list) of ``{"id", "image", "conversations"}`` plus
an image folder -> understanding samples (image + user/assistant turns)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sgt_data.convert._base import Converter, ConvertOptions, WorkItem, file_sha256
from sgt_data.convert.coco import load_json
from sgt_data.errors import ConversionError
from sgt_data.schema import SkippedItem, SourceSpec, TaskKind
from sgt_data.store import SampleRecord

__all__ = ["VqaConverter"]

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


class VqaConverter(Converter):
    """LLaVA-style conversations -> understanding samples."""

    format = "vqa"

    def __init__(
        self,
        annotations: str | os.PathLike[str],
        images: str | os.PathLike[str],
        opts: ConvertOptions,
    ) -> None:
        super().__init__(opts)
        self.annotations = Path(annotations)
        self.images = Path(images)

    def _records(self) -> list[tuple[int, Any]]:
        file = str(self.annotations)
        if self.annotations.suffix == ".jsonl":
            out = []
            try:
                lines = self.annotations.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConversionError(file, "-", f"cannot read: {exc.strerror or exc}") from exc
            for n, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        out.append((n, json.loads(line)))
                    except ValueError as exc:
                        raise ConversionError(file, f"line {n}", f"not valid JSON: {exc}") from exc
            return out
        data = load_json(self.annotations)
        if not isinstance(data, list):
            raise ConversionError(file, "-", "a LLaVA JSON file must hold a list of records")
        return list(enumerate(data, 1))

    def list_items(self) -> tuple[list[WorkItem], list[SkippedItem]]:
        file = str(self.annotations)
        items: list[WorkItem] = []
        bad: list[SkippedItem] = []
        seen: set[str] = set()
        for n, rec in self._records():
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
                    {"image": image, "conv": rec["conversations"]},
                )
            )
        return items, bad

    def source(self, num_items: int) -> SourceSpec:
        return SourceSpec(
            format="vqa",
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

    def process(self, item: WorkItem) -> SampleRecord:
        turns = _turns(item.payload["conv"], str(self.annotations), item.item_id)
        meta: dict[str, Any] = {
            "metadata": {"source_id": item.item_id, "format": "vqa"},
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
