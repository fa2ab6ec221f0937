"""doc_to_visual / doc_to_text of the local test task: PNG bytes in a list column (0, 1 or 2
images per document), a question."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(png)).convert("RGB") for png in doc["images"]]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: Any = None) -> str:
    return f"{doc['question']}\nAnswer the question using a single word or phrase."
