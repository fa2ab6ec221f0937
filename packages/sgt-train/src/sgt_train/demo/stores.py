"""The demo's data: a scene world written to disk and converted into sample stores by sgt-data."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgt_data.convert import (
    CocoInstancesConverter,
    CocoStuffConverter,
    Converter,
    ConvertOptions,
    VqaConverter,
    WorkItem,
    run_conversion,
)
from sgt_data.errors import ConversionError
from sgt_data.scenes import SCENE_CLASSES, SceneConfig, WorldPaths, write_world
from sgt_data.schema import SkippedItem, SourceSpec, StoreManifest, TaskKind
from sgt_data.store import SampleRecord

__all__ = ["DemoStores", "SceneCaptionConverter", "build_stores"]

_log = logging.getLogger(__name__)

#: Class ids of the scene world's semantic maps: 0 = background, 1..6 = the shape classes.
NUM_SCENE_CLASSES = len(SCENE_CLASSES) + 1


class SceneCaptionConverter(Converter):
    """The world's text-to-image JSONL (GenEval metadata + ``id``, ``image``) -> text-to-image
    samples: the image as target, its prompt as the ``caption`` metadata."""

    # sgt-data's converter formats do not name text-to-image sources yet; "scene" is what the
    # manifest's SourceSpec calls this world.
    format = "scene"  # type: ignore[assignment]

    def __init__(
        self,
        annotations: str | os.PathLike[str],
        root: str | os.PathLike[str],
        opts: ConvertOptions,
    ) -> None:
        super().__init__(opts)
        self.annotations = Path(annotations)
        self.root = Path(root)

    def list_items(self) -> tuple[list[WorkItem], list[SkippedItem]]:
        """One item per JSONL line (duplicate ids are reported, not converted)."""
        file = str(self.annotations)
        items: list[WorkItem] = []
        bad: list[SkippedItem] = []
        seen: set[str] = set()
        for n, line in enumerate(self.annotations.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ConversionError(file, f"line {n}", f"not valid JSON: {exc}") from exc
            if not isinstance(record, dict) or not all(
                isinstance(record.get(k), str) for k in ("id", "image", "prompt")
            ):
                raise ConversionError(
                    file, f"line {n}", "a record needs string 'id', 'image', 'prompt'"
                )
            rid = record["id"]
            if rid in seen:
                bad.append(SkippedItem(item_id=rid, file=file, reason=f"duplicate id (line {n})"))
                continue
            seen.add(rid)
            items.append(WorkItem(rid, str(self.root / record["image"]), record))
        return items, bad

    def source(self, num_items: int) -> SourceSpec:
        """The manifest's source record."""
        from sgt_data.convert._base import file_sha256

        return SourceSpec(
            format="scene",
            path=str(self.annotations),
            num_items=num_items,
            sha256=file_sha256(self.annotations),
        )

    def fingerprint(self) -> dict[str, Any]:
        """Inputs and options (for resuming)."""
        return {
            **super().fingerprint(),
            "annotations": str(self.annotations.resolve()),
            "root": str(self.root.resolve()),
        }

    def process(self, item: WorkItem) -> SampleRecord:
        """The image bytes and the caption of one prompt."""
        data, (h, w), _ = self.load_image(Path(item.file), item)
        meta = {
            "metadata": {
                "caption": item.payload["prompt"],
                "tag": item.payload.get("tag", ""),
                "source_id": item.item_id,
                "format": "scene-t2i",
            }
        }
        return SampleRecord(
            f"{self.opts.name}:{item.item_id}",
            h,
            w,
            frozenset({(TaskKind.TEXT_TO_IMAGE, None)}),
            {"image": np.frombuffer(data, np.uint8)},
            meta,
        )


@dataclass(frozen=True)
class DemoStores:
    """Where the demo's world and stores lie."""

    world: WorldPaths
    #: train split, COCO instances: segmentation (instance, semantic), depth, reconstruction
    scenes: Path
    #: train split, LLaVA questions: understanding
    vqa: Path
    #: train split, GenEval prompts: text-to-image
    t2i: Path
    #: held-out split, COCO-Stuff style semantic maps (segmentation ground truth)
    eval_semantic: Path
    manifests: dict[str, StoreManifest]


def build_stores(
    root: Path,
    *,
    num_train: int,
    num_eval: int,
    seed: int,
    config: SceneConfig | None = None,
    progress: Any = None,
) -> DemoStores:
    """Write the scene world under ``root/world`` and convert it into stores under ``root/stores``.

    ``progress(done, total)`` is called per converted store.
    """
    world = write_world(
        root / "world", num_train=num_train, num_eval=num_eval, seed=seed, config=config
    )
    stores = root / "stores"
    jobs: list[tuple[str, Converter, Path]] = [
        (
            "scenes",
            CocoInstancesConverter(
                world.train.instances,
                world.train.images,
                ConvertOptions(
                    name="scenes-train",
                    depth_dir=str(world.train.depth),
                    depth_range=(0.0, 15.0),
                    seed=seed,
                    num_classes=NUM_SCENE_CLASSES,
                ),
            ),
            stores / "scenes-train",
        ),
        (
            "vqa",
            VqaConverter(
                world.train.vqa,
                world.root,
                ConvertOptions(name="scenes-train-vqa", seed=seed, num_classes=NUM_SCENE_CLASSES),
            ),
            stores / "scenes-train-vqa",
        ),
        (
            "t2i",
            SceneCaptionConverter(
                world.train.t2i,
                world.root,
                ConvertOptions(
                    name="scenes-train-t2i",
                    reconstruction=False,
                    seed=seed,
                    num_classes=NUM_SCENE_CLASSES,
                ),
            ),
            stores / "scenes-train-t2i",
        ),
        (
            "eval_semantic",
            CocoStuffConverter(
                world.eval.semantic,
                world.eval.images,
                ConvertOptions(
                    name="scenes-eval-semantic",
                    reconstruction=False,
                    seed=seed,
                    num_classes=NUM_SCENE_CLASSES,
                ),
            ),
            stores / "scenes-eval-semantic",
        ),
    ]
    manifests: dict[str, StoreManifest] = {}
    for done, (key, converter, out) in enumerate(jobs):
        manifests[key] = run_conversion(converter, out, overwrite=True)
        _log.info(
            "store %s: %d samples %s", out, manifests[key].num_samples, manifests[key].task_counts
        )
        if progress is not None:
            progress(done + 1, len(jobs))
    return DemoStores(
        world=world,
        scenes=jobs[0][2],
        vqa=jobs[1][2],
        t2i=jobs[2][2],
        eval_semantic=jobs[3][2],
        manifests=manifests,
    )
