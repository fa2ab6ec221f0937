"""lmms-eval model plugin: run any lmms-eval task on an SGT adapter.

Registered under the ``lmms_eval.models`` entry-point group (``manifests``), so
``lmms-eval --model sgt --model_args pretrained=DIR`` works once the ``lmms-eval`` extra is
installed; or pass ``SGTLmms(adapter=...)`` to ``lmms_eval.evaluator.simple_evaluate``. This module
imports without lmms-eval; the class is built on first access, under its module-level name (so
it pickles by reference, as lmms-eval's multi-process runs need).

SGT adapters answer one question about one image. A document with several images is answered on
one image holding them side by side (scaled to a common height, in order); a text-only document
on a blank white image. Both are logged once per task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MODEL_ID",
    "combine_visuals",
    "load_adapter",
    "manifests",
]  # and SGTLmms, built on first access

_log = logging.getLogger(__name__)

MODEL_ID = "sgt"
#: Side of the blank image a text-only document is answered on.
_BLANK_SIDE = 64
_EXTRA_HINT = "the lmms-eval plugin needs lmms-eval: pip install 'sgt-eval[lmms-eval]'"


def _lmms_base() -> Any:
    try:
        from lmms_eval.api.model import lmms
    except ImportError as exc:
        raise ImportError(_EXTRA_HINT) from exc
    return lmms


def manifests() -> list[Any]:
    """The ``ModelManifest`` list lmms-eval loads from this entry point."""
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError as exc:
        raise ImportError(_EXTRA_HINT) from exc
    return [ModelManifest(MODEL_ID, simple_class_path=f"{__name__}.SGTLmms", aliases=("sgt_eval",))]


def _to_rgb(visual: Any) -> np.ndarray[Any, np.dtype[np.uint8]]:
    if hasattr(visual, "convert"):
        visual = visual.convert("RGB")
    arr = np.asarray(visual)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"SGTLmms: expected an RGB image, got shape {arr.shape}")
    return arr.astype(np.uint8)


def combine_visuals(
    visuals: Sequence[Any], side: int = _BLANK_SIDE
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The one RGB image an adapter sees for a document's visuals: the image itself, several
    side by side at the height of the first (aspect kept), or a blank white ``side`` square."""
    if not visuals:
        return np.full((side, side, 3), 255, np.uint8)
    images = [_to_rgb(v) for v in visuals]
    if len(images) == 1:
        return images[0]
    from PIL import Image

    height = images[0].shape[0]
    scaled = [
        im
        if im.shape[0] == height
        else np.asarray(
            Image.fromarray(im).resize(
                (max(1, round(im.shape[1] * height / im.shape[0])), height),
                Image.Resampling.BILINEAR,
            )
        )
        for im in images
    ]
    return np.ascontiguousarray(np.concatenate(scaled, axis=1))


def load_adapter(pretrained: str) -> Any:
    """An adapter from a folder written by ``save_pretrained`` (through ``sgt_models.registry``)."""
    try:
        from sgt_models import registry
    except ImportError as exc:
        raise ImportError("loading an adapter by path needs sgt_models.registry") from exc
    loader: Callable[[str], Any] = registry.load_adapter
    return loader(pretrained)


def _build_class() -> type:
    base = _lmms_base()

    class SGTLmms(base):  # type: ignore[misc, valid-type]
        """An SGT adapter seen as an lmms-eval simple model (``generate_until`` only)."""

        is_simple = True

        def __init__(
            self,
            adapter: Any = None,
            pretrained: str | None = None,
            max_new_tokens: int = 32,
            batch_size: int = 1,
            **_: Any,
        ) -> None:
            super().__init__()
            if adapter is None:
                if pretrained is None:
                    raise ValueError("SGTLmms needs adapter=... or pretrained=DIR")
                adapter = load_adapter(pretrained)
            self.adapter = adapter
            self.max_new_tokens = int(max_new_tokens)
            self.batch_size_per_gpu = int(batch_size)
            self._rank, self._world_size = 0, 1
            self._noted: set[tuple[str, bool]] = set()

        def generate_until(self, requests: list[Any]) -> list[str]:
            out: list[str] = []
            for req in requests:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                visuals = list(doc_to_visual(self.task_dict[task][split][doc_id]) or [])
                if len(visuals) != 1 and (task, len(visuals) > 1) not in self._noted:
                    self._noted.add((task, len(visuals) > 1))
                    _log.warning(
                        "SGTLmms: %s doc %s has %d images; answered on %s (SGT adapters take one)",
                        task,
                        doc_id,
                        len(visuals),
                        "them side by side" if visuals else "a blank white image",
                    )
                image = combine_visuals(visuals)
                max_new = int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))
                text = self.adapter.answer([image], [context], max_new)[0]
                for stop in gen_kwargs.get("until", []) or []:
                    if isinstance(stop, str) and stop and stop in text:
                        text = text.split(stop, 1)[0]
                out.append(text)
            return out

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            raise NotImplementedError(
                "SGT adapters answer by generation; loglikelihood tasks are unsupported"
            )

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise NotImplementedError("multi-round generation is not supported by SGT adapters")

    # the module-level name, which __getattr__ serves: pickle finds the class by reference
    SGTLmms.__module__ = __name__
    SGTLmms.__qualname__ = "SGTLmms"
    return SGTLmms


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    global _CLASS
    if name == "SGTLmms":
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
