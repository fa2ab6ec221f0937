"""COCO-family converters: instances JSON (polygons, RLE, iscrowd), panoptic JSON + segment PNGs,
COCO-Stuff pixel maps."""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from sgt_data.convert._base import (
    AnnotationFileConverter,
    Converter,
    ConvertOptions,
    WorkItem,
    label_dtype,
    load_json,
)
from sgt_data.errors import ConversionError, SgtDataError
from sgt_data.render import InstanceRenderer, PanopticRenderer, SemanticRenderer
from sgt_data.schema import RendererSpec, SkippedItem, SourceSpec, TaskKind
from sgt_data.store import FieldSpec, SampleRecord, label_field

__all__ = ["CocoInstancesConverter", "CocoPanopticConverter", "CocoStuffConverter", "load_json"]

_SEGMENTS = label_field("labels/segments", "uint16")
_CLASSES = label_field("labels/classes", "uint16")


class _Image(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int | str
    file_name: str
    width: int
    height: int


class _Annotation(BaseModel):
    # the listing is serial (it runs before any worker starts): it checks what it needs to
    # group and name the items, and leaves each segmentation (polygon lists, RLE objects: the
    # bulk of a COCO file) to the conversion of its image, which validates it in full and
    # names the annotation; validating every coordinate here cost 3x the rest of the listing
    model_config = ConfigDict(extra="ignore")
    id: int | str
    image_id: int | str
    category_id: int
    segmentation: Any
    iscrowd: int = 0


class _Category(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    name: str = ""
    isthing: int = 1


class _Segment(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    category_id: int
    iscrowd: int = 0


class _PanopticAnn(BaseModel):
    model_config = ConfigDict(extra="allow")
    image_id: int | str
    file_name: str
    segments_info: list[_Segment]


@functools.cache
def _list_adapter(model: type[BaseModel]) -> TypeAdapter[list[Any]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def _parse_list(model: type[BaseModel], data: Any, key: str, file: str) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ConversionError(
            file, "-", f"not a COCO file: top-level key {key!r} (a list) is missing"
        )
    raw_list = data[key]
    try:  # the whole list in one pydantic-core call (a Python loop costs ~2x at COCO scale)
        out: list[Any] = _list_adapter(model).validate_python(raw_list)
    except ValidationError as exc:
        first = exc.errors()[0]
        k = int(first["loc"][0])
        raw = raw_list[k]
        ident = raw.get("id", f"#{k}") if isinstance(raw, dict) else f"#{k}"
        where = ".".join(str(x) for x in first["loc"][1:])
        raise ConversionError(
            file,
            f"{key}[{k}] id={ident}",
            f"does not match the COCO format: {where}: {first['msg']}",
        ) from None
    return out


def _dedupe(
    records: list[Any], key: str, file: str, what: str
) -> tuple[list[Any], list[SkippedItem]]:
    seen: set[Any] = set()
    keep, bad = [], []
    for r in records:
        v = getattr(r, key)
        if v in seen:
            bad.append(SkippedItem(item_id=str(v), file=file, reason=f"duplicate {what} id {v!r}"))
        else:
            seen.add(v)
            keep.append(r)
    return keep, bad


def _load_images(path: Path, data: Any = None) -> tuple[str, Any, list[_Image], list[SkippedItem]]:
    """A COCO file's name, its JSON (``data``, or parsed here), its images (duplicate ids left out)
    and the duplicates."""
    file = str(path)
    if data is None:
        data = load_json(path)
    images, bad = _dedupe(_parse_list(_Image, data, "images", file), "id", file, "image")
    return file, data, images, bad


class CocoInstancesConverter(AnnotationFileConverter):
    """COCO instances JSON + image folder -> instance and semantic segmentation targets."""

    format = "coco"

    def list_items(self) -> tuple[list[WorkItem], list[SkippedItem]]:
        file, data, images, bad = _load_images(self.annotations)
        anns, bad_anns = _dedupe(
            _parse_list(_Annotation, data, "annotations", file), "id", file, "annotation"
        )
        cats = (
            {c.id: c for c in _parse_list(_Category, data, "categories", file)}
            if "categories" in data
            else {}
        )
        by_image: dict[Any, list[_Annotation]] = defaultdict(list)
        known = {im.id for im in images}
        for a in anns:
            if a.image_id not in known:
                bad.append(
                    SkippedItem(
                        item_id=str(a.id),
                        file=file,
                        reason=f"annotation refers to unknown image id {a.image_id!r}",
                    )
                )
                continue
            by_image[a.image_id].append(a)
        # duplicate annotation ids poison the image they belong to
        poisoned = {str(b.item_id) for b in bad_anns}
        items = []
        for im in sorted(images, key=lambda x: (str(type(x.id)), x.id)):
            ann_list = sorted(by_image.get(im.id, []), key=lambda a: (str(type(a.id)), a.id))
            payload = {
                "file_name": im.file_name,
                "hw": (im.height, im.width),
                "anns": [
                    {
                        "id": a.id,
                        "cat": a.category_id,
                        "crowd": a.iscrowd,
                        "seg": a.segmentation,
                        "thing": cats[a.category_id].isthing if a.category_id in cats else 1,
                    }
                    for a in ann_list
                ],
            }
            items.append(WorkItem(str(im.id), str(self.images / im.file_name), payload))
        bad += bad_anns
        if poisoned:
            dup_imgs = {str(a.image_id) for a in anns if str(a.id) in poisoned}
            items = [it for it in items if it.item_id not in dup_imgs]
        unknown = sorted({a.category_id for a in anns} - set(cats)) if cats else []
        if unknown:
            raise ConversionError(
                file, "-", f"annotations use category ids {unknown[:10]} not in 'categories'"
            )
        if any(a.category_id >= self.opts.num_classes for a in anns):
            big = max(a.category_id for a in anns)
            raise ConversionError(
                file, "-", f"category id {big} >= num_classes {self.opts.num_classes}"
            )
        return items, bad

    def label_fields(self) -> list[FieldSpec]:
        return [_SEGMENTS]

    def segmentation_renderers(self) -> list[RendererSpec]:
        o = self.opts
        return [
            InstanceRenderer(
                o.seed, num_classes=o.num_classes, max_instances=o.max_instances
            ).spec(),
            SemanticRenderer(
                o.seed, num_classes=o.num_classes, max_instances=o.max_instances
            ).spec(),
        ]

    def process(self, item: WorkItem) -> SampleRecord:
        from sgt_data import rle

        p = item.payload
        path = Path(item.file)
        h, w = p["hw"]
        data, hw, rgb = self.load_image(path, item, expect=(h, w))
        rles = []
        for a in p["anns"]:
            seg = a["seg"]
            if not isinstance(seg, (list, dict)):
                raise ConversionError(
                    str(self.annotations),
                    f"{item.item_id} (annotation {a['id']})",
                    "segmentation must be a list of polygons [x0, y0, x1, y1, ...] or an RLE "
                    f"object {{'size': [h, w], 'counts': ...}}, got {type(seg).__name__}",
                )
            try:
                if isinstance(seg, list):
                    # counts straight to paint_label_map: no compressed string to parse again
                    counts = rle.polygons_to_counts(
                        seg, h, w, image_id=item.item_id, ann_id=a["id"]
                    )
                    r: dict[str, Any] = {"size": [h, w], "counts": counts}
                elif isinstance(seg.get("counts"), list):
                    # uncompressed counts go to paint_label_map as they are (validated there);
                    # no round trip through a compressed string
                    r = {"size": list(_rle_size(seg, item, a["id"])), "counts": seg["counts"]}
                else:
                    r = seg
            except SgtDataError as exc:
                raise ConversionError(
                    str(self.annotations), f"{item.item_id} (annotation {a['id']})", str(exc)
                ) from exc
            size = list(r.get("size", [])) if isinstance(r, dict) else []
            if size != [h, w]:
                raise ConversionError(
                    str(self.annotations),
                    f"{item.item_id} (annotation {a['id']})",
                    f"mask size {size} disagrees with its image {h}x{w}",
                )
            rles.append(r)
        try:
            labels = rle.paint_label_map(
                rles,
                h,
                w,
                dtype=label_dtype(len(rles)),
                image_id=item.item_id,
                ann_ids=[a["id"] for a in p["anns"]],
            )
        except SgtDataError as exc:
            raise ConversionError(str(self.annotations), item.item_id, str(exc)) from exc
        tasks = {(TaskKind.SEGMENTATION, "instance"), (TaskKind.SEGMENTATION, "semantic")}
        meta = {
            "metadata": {
                "source_id": item.item_id,
                "file": p["file_name"],
                "height": h,
                "width": w,
                "format": "coco",
            },
            "segments": {
                "category": [a["cat"] for a in p["anns"]],
                "isthing": [True] * len(p["anns"]),
                "ann_id": [a["id"] for a in p["anns"]],
                "iscrowd": [int(a["crowd"]) for a in p["anns"]],
                "slot": self.instance_slots(labels, len(p["anns"]), item),
            },
        }
        return self.image_record(
            item, path, data, hw, rgb, tasks, {"labels/segments": labels}, meta
        )


def _rle_size(seg: dict[str, Any], item: WorkItem, ann_id: Any) -> tuple[int, int]:
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2):
        raise ConversionError(
            item.file, f"{item.item_id} (annotation {ann_id})", "RLE without a [h, w] 'size'"
        )
    return int(size[0]), int(size[1])


class CocoPanopticConverter(AnnotationFileConverter):
    """COCO panoptic JSON + segment-id PNGs + image folder -> panoptic, semantic and instance targets."""

    format = "coco-panoptic"

    def __init__(
        self,
        annotations: str | os.PathLike[str],
        panoptic_dir: str | os.PathLike[str],
        images: str | os.PathLike[str],
        opts: ConvertOptions,
    ) -> None:
        super().__init__(annotations, images, opts)
        self.panoptic_dir = Path(panoptic_dir)

    def list_items(self) -> tuple[list[WorkItem], list[SkippedItem]]:
        file, data, images, bad = _load_images(self.annotations)
        anns, bad2 = _dedupe(
            _parse_list(_PanopticAnn, data, "annotations", file),
            "image_id",
            file,
            "panoptic annotation",
        )
        bad += bad2
        cats = {c.id: c for c in _parse_list(_Category, data, "categories", file)}
        by_image = {a.image_id: a for a in anns}
        items = []
        for im in sorted(images, key=lambda x: (str(type(x.id)), x.id)):
            a = by_image.get(im.id)
            if a is None:
                bad.append(
                    SkippedItem(
                        item_id=str(im.id), file=file, reason="image has no panoptic annotation"
                    )
                )
                continue
            segs = []
            for s in a.segments_info:
                if s.category_id not in cats:
                    raise ConversionError(
                        file, str(im.id), f"segment {s.id} has unknown category id {s.category_id}"
                    )
                if s.category_id >= self.opts.num_classes:
                    raise ConversionError(
                        file,
                        str(im.id),
                        f"category id {s.category_id} >= num_classes {self.opts.num_classes}",
                    )
                segs.append((s.id, s.category_id, bool(cats[s.category_id].isthing), s.iscrowd))
            ids = [s[0] for s in segs]
            if len(set(ids)) != len(ids):
                bad.append(
                    SkippedItem(
                        item_id=str(im.id),
                        file=file,
                        reason="duplicate segment ids in segments_info",
                    )
                )
                continue
            payload = {
                "file_name": im.file_name,
                "png": a.file_name,
                "hw": (im.height, im.width),
                "segs": segs,
            }
            items.append(WorkItem(str(im.id), str(self.images / im.file_name), payload))
        return items, bad

    def label_fields(self) -> list[FieldSpec]:
        return [_SEGMENTS]

    def segmentation_renderers(self) -> list[RendererSpec]:
        o = self.opts
        kw: dict[str, Any] = {"num_classes": o.num_classes, "max_instances": o.max_instances}
        return [
            InstanceRenderer(o.seed, **kw).spec(),
            SemanticRenderer(o.seed, **kw).spec(),
            PanopticRenderer(o.seed, **kw).spec(),
        ]

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "panoptic": str(self.panoptic_dir.resolve())}

    def process(self, item: WorkItem) -> SampleRecord:
        from PIL import Image

        p = item.payload
        h, w = p["hw"]
        path = Path(item.file)
        data, hw, rgb = self.load_image(path, item, expect=(h, w))
        png = self.panoptic_dir / p["png"]
        try:
            with Image.open(png) as im:
                seg_rgb = np.asarray(im.convert("RGB"), dtype=np.uint32)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ConversionError(
                str(png), item.item_id, f"missing or corrupt panoptic PNG: {exc}"
            ) from exc
        if seg_rgb.shape[:2] != (h, w):
            raise ConversionError(
                str(png),
                item.item_id,
                f"panoptic PNG is {seg_rgb.shape[0]}x{seg_rgb.shape[1]}, image is {h}x{w}",
            )
        ids = seg_rgb[..., 0] + 256 * seg_rgb[..., 1] + 65536 * seg_rgb[..., 2]
        uniq, inv = np.unique(ids, return_inverse=True)
        seg_index = {sid: k + 1 for k, (sid, *_rest) in enumerate(p["segs"])}
        missing = [int(u) for u in uniq if u != 0 and int(u) not in seg_index]
        if missing:
            raise ConversionError(
                str(png),
                item.item_id,
                f"segment ids {missing[:5]} in the PNG are not in segments_info",
            )
        lut = np.array([seg_index.get(int(u), 0) for u in uniq], dtype=np.uint16)
        labels = lut[inv.reshape(h, w)]
        segs = p["segs"]
        tasks = {(TaskKind.SEGMENTATION, "panoptic"), (TaskKind.SEGMENTATION, "semantic")}
        if any(s[2] for s in segs):
            tasks.add((TaskKind.SEGMENTATION, "instance"))
        meta = {
            "metadata": {
                "source_id": item.item_id,
                "file": p["file_name"],
                "height": h,
                "width": w,
                "format": "coco-panoptic",
            },
            "segments": {
                "category": [s[1] for s in segs],
                "isthing": [s[2] for s in segs],
                "segment_id": [s[0] for s in segs],
                "iscrowd": [int(s[3]) for s in segs],
                "slot": self.instance_slots(labels, len(segs), item, [s[2] for s in segs]),
            },
        }
        return self.image_record(
            item, path, data, hw, rgb, tasks, {"labels/segments": labels}, meta
        )


class CocoStuffConverter(Converter):
    """COCO-Stuff pixel maps (PNG, value = class id - 1, 255 = unlabelled) + image folder ->
    semantic targets (class id = value + 1, 0 = unlabelled)."""

    format = "coco-stuff"

    def __init__(
        self, maps: str | os.PathLike[str], images: str | os.PathLike[str], opts: ConvertOptions
    ) -> None:
        super().__init__(opts)
        self.maps = Path(maps)
        self.images = Path(images)

    def list_items(self) -> tuple[list[WorkItem], list[SkippedItem]]:
        if not self.maps.is_dir():
            raise ConversionError(str(self.maps), "-", "pixel-map folder does not exist")
        items = []
        for png in sorted(self.maps.glob("*.png")):
            stem = png.stem
            image = next(
                (
                    self.images / f"{stem}{ext}"
                    for ext in (".jpg", ".jpeg", ".png")
                    if (self.images / f"{stem}{ext}").exists()
                ),
                self.images / f"{stem}.jpg",
            )
            items.append(WorkItem(stem, str(image), {"map": str(png)}))
        return items, []

    def label_fields(self) -> list[FieldSpec]:
        return [_CLASSES]

    def segmentation_renderers(self) -> list[RendererSpec]:
        o = self.opts
        return [
            SemanticRenderer(
                o.seed, num_classes=o.num_classes, max_instances=o.max_instances
            ).spec()
        ]

    def source(self, num_items: int) -> SourceSpec:
        return SourceSpec(format="coco-stuff", path=str(self.maps), num_items=num_items)

    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "maps": str(self.maps.resolve()),
            "images": str(self.images.resolve()),
        }

    def process(self, item: WorkItem) -> SampleRecord:
        from PIL import Image

        path = Path(item.file)
        data, hw, rgb = self.load_image(path, item)
        mp = item.payload["map"]
        try:
            with Image.open(mp) as im:
                if im.mode not in ("L", "P"):
                    raise ConversionError(
                        mp,
                        item.item_id,
                        f"pixel map must be 8-bit single channel, got mode {im.mode}",
                    )
                values: NDArray[np.uint8] = np.asarray(im)
        except (OSError, SyntaxError) as exc:
            raise ConversionError(mp, item.item_id, f"corrupt pixel map: {exc}") from exc
        if values.shape != hw:
            raise ConversionError(
                mp,
                item.item_id,
                f"pixel map is {values.shape[0]}x{values.shape[1]}, image is {hw[0]}x{hw[1]}",
            )
        classes = np.where(values == 255, 0, values.astype(np.uint16) + 1).astype(np.uint16)
        if classes.max(initial=0) >= self.opts.num_classes:
            raise ConversionError(
                mp,
                item.item_id,
                f"class id {int(classes.max())} >= num_classes {self.opts.num_classes}",
            )
        meta = {
            "metadata": {
                "source_id": item.item_id,
                "file": path.name,
                "height": hw[0],
                "width": hw[1],
                "format": "coco-stuff",
            }
        }
        return self.image_record(
            item,
            path,
            data,
            hw,
            rgb,
            frozenset({(TaskKind.SEGMENTATION, "semantic")}),
            {"labels/classes": classes},
            meta,
        )
