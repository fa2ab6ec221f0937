"""Depth from a ``transformers`` depth-estimation model saved at a local path (the ``depth`` extra):
the one module of sgt-data that imports transformers, lazily."""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sgt_data._palette import RGB, _check_rgb
from sgt_data.errors import RenderError

_log = logging.getLogger(__name__)


def depth_from_model(image: RGB, model_path: str) -> NDArray[np.float32]:
    """Relative depth of an image from a ``transformers`` depth-estimation model stored at a local
    path (needs the ``depth`` extra). Larger values are further away."""
    try:
        from transformers import pipeline
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("model depth needs transformers: pip install 'sgt-data[depth]'") from exc
    from PIL import Image

    pipe = _depth_pipeline(model_path, pipeline)
    result = pipe(Image.fromarray(_check_rgb(image)))
    pred = np.asarray(result["predicted_depth"], dtype=np.float32).squeeze()
    if pred.shape != image.shape[:2]:
        pred = np.asarray(
            Image.fromarray(pred).resize(
                (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
    # depth-estimation models (DPT, Depth Anything) predict inverse depth (disparity)
    with np.errstate(divide="ignore"):
        return np.where(pred > 0, 1.0 / pred, np.nan).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _depth_pipeline(model_path: str, factory: Any) -> Any:
    check_depth_model(model_path)
    _log.info("loading depth model from %s", model_path)
    try:
        return factory("depth-estimation", model=model_path, device="cpu")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise RenderError(f"depth model {model_path}: cannot be loaded: {exc}") from exc


def check_depth_model(model_path: str) -> None:
    """Raise a :class:`RenderError` naming ``model_path`` unless it is a local directory holding a
    saved ``transformers`` depth-estimation model (a hub id would mean a download; a model saved
    for another task would load with a random depth head)."""
    import json
    from pathlib import Path

    path = Path(model_path)
    if not path.is_dir():
        raise RenderError(
            f"depth model {model_path}: no such directory (a local transformers "
            "depth-estimation model, saved with save_pretrained, is needed)"
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise RenderError(
            f"depth model {model_path}: no readable config.json, not a saved transformers model"
        ) from exc
    except ValueError as exc:
        raise RenderError(f"depth model {model_path}: config.json is not valid JSON") from exc
    if not isinstance(config, dict):
        raise RenderError(f"depth model {model_path}: config.json is not a JSON object")
    archs = config.get("architectures") or []
    if archs:
        is_depth = any(str(a).endswith("ForDepthEstimation") for a in archs)
    else:
        from transformers.models.auto import modeling_auto

        is_depth = (
            config.get("model_type") in modeling_auto.MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES
        )
    if not is_depth:
        what = ", ".join(map(str, archs)) or repr(config.get("model_type"))
        raise RenderError(f"depth model {model_path}: {what} is not a depth-estimation model")
