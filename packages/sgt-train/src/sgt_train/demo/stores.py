"""The demo's data: a scene world written to disk and converted into sample stores by sgt-data."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgt_data.convert import (
    CaptionConverter,
    CocoInstancesConverter,
    CocoStuffConverter,
    Converter,
    ConvertOptions,
    VqaConverter,
    run_conversion,
)
from sgt_data.scenes import SCENE_CLASSES, SceneConfig, WorldPaths, write_world
from sgt_data.schema import StoreManifest

__all__ = ["DemoStores", "build_stores"]

_log = logging.getLogger(__name__)

#: Class ids of the scene world's semantic maps: 0 = background, 1..6 = the shape classes.
NUM_SCENE_CLASSES = len(SCENE_CLASSES) + 1


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
    #: train split, Canny edge targets (``build_stores(..., edge=True)``), else None
    edge: Path | None = None


def build_stores(
    root: Path,
    *,
    num_train: int,
    num_eval: int,
    seed: int,
    config: SceneConfig | None = None,
    edge: bool = False,
    progress: Any = None,
) -> DemoStores:
    """Write the scene world under ``root/world`` and convert it into stores under ``root/stores``.

    ``edge``: also convert the train split's Canny edge targets into ``stores/scenes-train-edge``
    (the ablation sweep's edge arm; needs ``sgt-data[edge]``, which brings opencv).
    ``progress(done, total)`` is called per converted store.
    """
    world = write_world(
        root / "world", num_train=num_train, num_eval=num_eval, seed=seed, config=config
    )
    stores = root / "stores"

    def options(name: str, **extra: Any) -> ConvertOptions:
        return ConvertOptions(name=name, seed=seed, num_classes=NUM_SCENE_CLASSES, **extra)

    depth = {"depth_dir": str(world.train.depth), "depth_range": (0.0, 15.0)}
    jobs: list[tuple[str, Converter, Path]] = [
        (
            "scenes",
            CocoInstancesConverter(
                world.train.instances, world.train.images, options("scenes-train", **depth)
            ),
            stores / "scenes-train",
        ),
        (
            "vqa",
            VqaConverter(world.train.vqa, world.root, options("scenes-train-vqa")),
            stores / "scenes-train-vqa",
        ),
        (
            "t2i",
            CaptionConverter(
                world.train.t2i, world.root, options("scenes-train-t2i", reconstruction=False)
            ),
            stores / "scenes-train-t2i",
        ),
        (
            "eval_semantic",
            CocoStuffConverter(
                world.eval.semantic,
                world.eval.images,
                options("scenes-eval-semantic", reconstruction=False),
            ),
            stores / "scenes-eval-semantic",
        ),
    ]
    if edge:
        edge_options = options("scenes-train-edge", edge=True, reconstruction=False)
        jobs.append(
            (
                "edge",
                CocoInstancesConverter(world.train.instances, world.train.images, edge_options),
                stores / "scenes-train-edge",
            )
        )
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
        edge=jobs[4][2] if edge else None,
    )
