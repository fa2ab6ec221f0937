"""Image arrays to model tensors: the one resize rule the adapters' processors share."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional

__all__ = ["image_to_tensor"]


def image_to_tensor(
    image: NDArray[np.uint8],
    size: tuple[int, int],
    *,
    nearest: bool = False,
    smooth: Literal["bilinear", "bicubic"] = "bilinear",
) -> torch.Tensor:
    """An HxWx3 uint8 image as ``(3, h, w)`` float32 in [-1, 1], resized to ``size`` if needed.

    ``nearest`` keeps the colours of rendered maps (segmentation palettes) exact; otherwise the
    image is resampled with antialiasing by ``smooth`` (BAGEL's transforms use bicubic).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {tuple(image.shape)}")
    # astype copies into a fresh (writable) float array: store-read images may be read-only
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != size:
        if nearest:
            x = functional.interpolate(x, size=size, mode="nearest-exact")
        else:
            x = functional.interpolate(
                x, size=size, mode=smooth, antialias=True, align_corners=False
            )
    return (x[0] / 127.5 - 1.0).clamp(-1.0, 1.0)
