"""A synthetic scene world: coloured shapes at known positions and depths, written as real datasets.

Each scene is a deterministic function of one integer seed. Shapes (circle, square, triangle, star,
diamond, hexagon) of ten GenEval colour names are placed at a depth in metres; their apparent size
falls with depth and they are painted far to near (painter's algorithm), so nearer shapes really
occlude farther ones. From one scene come:

* the RGB image (PNG, or JPEG on request),
* COCO instance annotations of the *visible* masks: a polygon when the shape is unoccluded (it
  rasterises exactly to the drawn pixels), compressed RLE otherwise, both through
  :mod:`sgt_data.rle`,
* a COCO-Stuff style semantic map (8-bit PNG: ``category_id - 1`` on shapes, 255 = unlabeled),
* a depth map (16-bit PNG, depth in millimetres; shapes are fronto-parallel cards at one depth, the
  background a plane receding from 10 m at the bottom row to 14 m at the top row),
* questions whose answers follow from the scene (LLaVA-style JSONL): the training mix on the train
  split, the balanced perception and reasoning benchmark set on the held-out split
  (:mod:`sgt_data.scene_questions`), and a text-to-image prompt with GenEval metadata.

Visible-area rule: a shape is kept only if its visible area after occlusion is at least
``min_visible_area`` of the image *and* at least ``min_visible_ratio`` of its own unoccluded area;
otherwise it is removed before the image is drawn (the most hidden one first, until every shape
passes). So every shape in an image is annotated, counted and asked about, and no image holds an
unannotated sliver that would make an existence or counting answer ambiguous.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from sgt_data._scene_model import (
    SCENE_CLASSES,
    SCENE_COLORS,
    SCENE_MAX_ROTATION,
    Scene,
    SceneConfig,
    SceneObject,
    coco_annotations,
    generate_scene,
    geneval_relations,
    semantic_map,
    shape_outline,
)
from sgt_data.errors import SgtDataError
from sgt_data.scene_questions import (
    ScenePrompt,
    SceneQuestion,
    benchmark_questions,
    reasoning_questions,
    scene_prompt,
    scene_questions,
)

__all__ = [
    "SCENE_CLASSES",
    "SCENE_COLORS",
    "SCENE_MAX_ROTATION",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "ScenePrompt",
    "SceneQuestion",
    "WorldPaths",
    "WorldSplitPaths",
    "benchmark_questions",
    "coco_annotations",
    "generate_scene",
    "geneval_relations",
    "reasoning_questions",
    "scene_prompt",
    "scene_questions",
    "scene_seed",
    "semantic_map",
    "shape_outline",
    "write_world",
]

_log = logging.getLogger(__name__)

SplitName = Literal["train", "eval"]
_SPLIT_CODES: dict[str, int] = {"train": 0, "eval": 1}
_IMAGE_ID_OFFSET: dict[str, int] = {"train": 0, "eval": 1_000_000_000}

# --------------------------------------------------------------------------- writing a world


@dataclass(frozen=True)
class WorldSplitPaths:
    """Where one split of a written world lies (all under the world root)."""

    split: str
    images: Path
    instances: Path
    semantic: Path
    depth: Path
    vqa: Path
    t2i: Path
    num_images: int


@dataclass(frozen=True)
class WorldPaths:
    """A written world: its root, manifest, and the paths of its train and held-out eval splits."""

    root: Path
    manifest: Path
    train: WorldSplitPaths
    eval: WorldSplitPaths


def scene_seed(world_seed: int, split: SplitName, index: int) -> int:
    """The ``generate_scene`` seed of scene ``index`` of a world's ``split``.

    ``write_world(..., num_train=n, seed=s)`` draws its train scenes from
    ``scene_seed(s, "train", i)`` for ``i < n``, its held-out ones from the ``"eval"`` split, so
    more train scenes of the same world (``i >= n``) never coincide with a held-out one.
    """
    if split not in _SPLIT_CODES:
        raise SgtDataError(f"unknown split {split!r}; known: {', '.join(_SPLIT_CODES)}")
    if world_seed < 0 or index < 0:
        raise SgtDataError(f"world seed and scene index must be >= 0, got {world_seed}, {index}")
    state = np.random.SeedSequence(world_seed, spawn_key=(_SPLIT_CODES[split], index))
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _save_image(array: NDArray[Any], path: Path, cfg: SceneConfig | None = None) -> None:
    from PIL import Image

    img = Image.fromarray(array)
    if cfg is not None and cfg.image_format == "jpeg":
        img.save(path, format="JPEG", quality=cfg.jpeg_quality)
    else:
        img.save(path, format="PNG", compress_level=1)


def _write_split(
    root: Path, split: SplitName, num_images: int, world_seed: int, cfg: SceneConfig
) -> WorldSplitPaths:
    ext = "jpg" if cfg.image_format == "jpeg" else "png"
    images_dir = root / "images" / split
    semantic_dir = root / "semantic" / split
    depth_dir = root / "depth" / split
    for d in (
        images_dir,
        semantic_dir,
        depth_dir,
        root / "annotations",
        root / "vqa",
        root / "t2i",
    ):
        d.mkdir(parents=True, exist_ok=True)
    coco_images: list[dict[str, Any]] = []
    coco_anns: list[dict[str, Any]] = []
    vqa_path = root / "vqa" / f"{split}.jsonl"
    t2i_path = root / "t2i" / f"{split}.jsonl"
    with vqa_path.open("w", encoding="utf-8") as vqa, t2i_path.open("w", encoding="utf-8") as t2i:
        for index in range(num_images):
            seed = scene_seed(world_seed, split, index)
            scene = generate_scene(seed, cfg)
            image_id = _IMAGE_ID_OFFSET[split] + index + 1
            stem = f"{image_id:012d}"
            image_rel = f"images/{split}/{stem}.{ext}"
            _save_image(scene.image, root / image_rel, cfg)
            _save_image(semantic_map(scene), semantic_dir / f"{stem}.png")
            depth_mm = np.clip(np.rint(scene.depth_m * 1000.0), 0, 65535).astype(np.uint16)
            _save_image(depth_mm, depth_dir / f"{stem}.png")
            coco_images.append(
                {
                    "id": image_id,
                    "file_name": f"{stem}.{ext}",
                    "width": cfg.width,
                    "height": cfg.height,
                    "scene_seed": seed,
                }
            )
            coco_anns += coco_annotations(scene, image_id, len(coco_anns) + 1)
            if split == "eval":
                questions = benchmark_questions(scene, cfg)
            else:
                questions = scene_questions(scene, cfg)
                questions += reasoning_questions(scene) if cfg.train_reasoning else []
            for q, question in enumerate(questions):
                record = {
                    "id": f"{stem}-q{q:02d}",
                    "image": image_rel,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{question.question}"},
                        {"from": "gpt", "value": question.answer},
                    ],
                    "metadata": {
                        "question_type": question.question_type,
                        "image_id": image_id,
                        **question.metadata,
                    },
                }
                vqa.write(json.dumps(record) + "\n")
            prompt = scene_prompt(scene, cfg)
            if prompt is not None:
                record = {"id": f"{stem}-t2i", "image": image_rel, **prompt.to_geneval()}
                t2i.write(json.dumps(record) + "\n")
    instances_path = root / "annotations" / f"instances_{split}.json"
    coco = {
        "info": {"description": f"SGT synthetic scene world, {split} split", "version": "1"},
        "licenses": [],
        "images": coco_images,
        "annotations": coco_anns,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SCENE_CLASSES)
        ],
    }
    instances_path.write_text(json.dumps(coco), encoding="utf-8")
    _log.info("wrote %d %s scenes (%d instances) to %s", num_images, split, len(coco_anns), root)
    return WorldSplitPaths(
        split=split,
        images=images_dir,
        instances=instances_path,
        semantic=semantic_dir,
        depth=depth_dir,
        vqa=vqa_path,
        t2i=t2i_path,
        num_images=num_images,
    )


def write_world(
    root: str | Path,
    *,
    num_train: int = 1000,
    num_eval: int = 200,
    seed: int = 0,
    config: SceneConfig | None = None,
) -> WorldPaths:
    """Write a train split and a held-out eval split (disjoint scene seeds) under ``root``.

    Layout (mirrors COCO): ``images/<split>/``, ``annotations/instances_<split>.json``,
    ``semantic/<split>/`` (COCO-Stuff style PNG), ``depth/<split>/`` (16-bit PNG, millimetres),
    ``vqa/<split>.jsonl`` (LLaVA), ``t2i/<split>.jsonl`` (GenEval metadata + ``id``, ``image``),
    and ``world.json`` (the config and seeds to regenerate it). Image paths in the JSONL files are
    relative to ``root``.
    """
    if num_train < 0 or num_eval < 0:
        raise SgtDataError(
            f"{root}: split sizes must be >= 0, got train={num_train}, eval={num_eval}"
        )
    if seed < 0:
        raise SgtDataError(f"{root}: world seed must be >= 0, got {seed}")
    cfg = config or SceneConfig()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    train_seeds = {scene_seed(seed, "train", i) for i in range(num_train)}
    clash = train_seeds.intersection(scene_seed(seed, "eval", i) for i in range(num_eval))
    if clash:  # 63-bit seeds: never seen, but held-out must mean held out
        raise SgtDataError(f"{root}: scene seeds {sorted(clash)} fall in both splits")
    train = _write_split(root, "train", num_train, seed, cfg)
    held_out = _write_split(root, "eval", num_eval, seed, cfg)
    manifest = root / "world.json"
    manifest.write_text(
        json.dumps(
            {
                "generator": "sgt_data.scenes",
                "seed": seed,
                "splits": {"train": num_train, "eval": num_eval},
                "config": cfg.model_dump(mode="json"),
                "classes": list(SCENE_CLASSES),
                "colors": {k: list(v) for k, v in SCENE_COLORS.items()},
                "depth_png_unit": "millimetre",
                "semantic_png": "category_id - 1, 255 = unlabeled",
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    return WorldPaths(root=root, manifest=manifest, train=train, eval=held_out)
