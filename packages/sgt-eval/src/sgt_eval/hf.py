"""``transformers``-backed GenEval detector and colour classifier, loaded lazily from local paths.

GenEval's official detector is mmdet-2 Mask2Former (Swin-S, COCO) and its colour classifier
open_clip ViT-L-14; these run the transformers ports of the same families from a local folder
(``Mask2FormerForUniversalSegmentation``, ``CLIPModel``), which is a recorded deviation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sgt_eval.scoring.geneval import SCORE_THRESHOLD, Detection

__all__ = ["ClipColorClassifier", "TransformersDetector"]

_TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")


def _import(what: str) -> Any:
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - sgt-models depends on both
        raise ImportError(
            f"{what} needs torch and transformers (installed with sgt-models)"
        ) from exc
    return torch, transformers


def _features(out: Any) -> Any:
    """A feature tensor, whether the model returns it bare or in an output object."""
    return out if hasattr(out, "norm") else out.pooler_output


def _local(path: str | Path) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p}: not a local transformers model folder (no config.json)")
    return p


class TransformersDetector:
    """Instance detection with a local Mask2Former (or any universal-segmentation) checkpoint."""

    def __init__(self, model_path: str | Path, device: str = "cpu") -> None:
        self.model_path = _local(model_path)
        self.device = device
        self.name = f"transformers:{self.model_path.name}"
        self._model: Any = None
        self._processor: Any = None

    def _load(self) -> None:
        _torch, tf = _import("TransformersDetector")
        self._processor = tf.AutoImageProcessor.from_pretrained(
            self.model_path, local_files_only=True
        )
        model = tf.AutoModelForUniversalSegmentation.from_pretrained(
            self.model_path, local_files_only=True
        )
        self._model = model.to(self.device).eval()

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        """Instances with class name, score, box from the mask, and mask."""
        if self._model is None:
            self._load()
        torch, _ = _import("TransformersDetector")
        inputs = self._processor(images=image, return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = self._model(**inputs)
        h, w = image.shape[:2]
        result = self._processor.post_process_instance_segmentation(
            outputs, threshold=SCORE_THRESHOLD, target_sizes=[(h, w)]
        )[0]
        seg = result["segmentation"].cpu().numpy()
        id2label = self._model.config.id2label
        detections = []
        for info in result["segments_info"]:
            mask = seg == info["id"]
            if not mask.any():
                continue
            rows, cols = np.nonzero(mask)
            box = (
                float(cols.min()),
                float(rows.min()),
                float(cols.max() + 1),
                float(rows.max() + 1),
            )
            label = str(id2label[int(info["label_id"])])
            detections.append(Detection(label, float(info["score"]), box, mask))
        return detections


class ClipColorClassifier:
    """Zero-shot colour naming with a local CLIP, prompt-ensembled over GenEval's three templates."""

    def __init__(self, model_path: str | Path, device: str = "cpu") -> None:
        self.model_path = _local(model_path)
        self.device = device
        self.name = f"clip:{self.model_path.name}"
        self._model: Any = None
        self._processor: Any = None
        self._text_cache: dict[tuple[str, tuple[str, ...]], Any] = {}

    def _load(self) -> None:
        _, tf = _import("ClipColorClassifier")
        self._processor = tf.CLIPProcessor.from_pretrained(self.model_path, local_files_only=True)
        model = tf.CLIPModel.from_pretrained(self.model_path, local_files_only=True)
        self._model = model.to(self.device).eval()

    def _text_embeddings(self, label: str, colors: Sequence[str]) -> Any:
        key = (label, tuple(colors))
        if key not in self._text_cache:
            torch, _ = _import("ClipColorClassifier")
            prompts = [t.format(c=c, obj=label) for c in colors for t in _TEMPLATES]
            tokens = self._processor(text=prompts, return_tensors="pt", padding=True).to(
                self.device
            )
            with torch.no_grad():
                emb = _features(self._model.get_text_features(**tokens))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            emb = emb.reshape(len(colors), len(_TEMPLATES), -1).mean(dim=1)
            self._text_cache[key] = emb / emb.norm(dim=-1, keepdim=True)
        return self._text_cache[key]

    def classify(
        self, crops: Sequence[NDArray[np.uint8]], label: str, colors: Sequence[str]
    ) -> list[str]:
        """The colour name of each crop (highest cosine similarity to the colour's prompts)."""
        if not crops:
            return []
        if self._model is None:
            self._load()
        torch, _ = _import("ClipColorClassifier")
        text = self._text_embeddings(label, colors)
        pixels = self._processor(images=list(crops), return_tensors="pt").to(self.device)
        with torch.no_grad():
            img = _features(self._model.get_image_features(**pixels))
        img = img / img.norm(dim=-1, keepdim=True)
        best = (img @ text.T).argmax(dim=-1).tolist()
        return [colors[i] for i in best]
