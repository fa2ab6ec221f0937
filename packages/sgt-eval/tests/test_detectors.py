"""The scene world's detector (``SceneShapeDetector``), checked against the world's written ground
truth: COCO masks decoded by pycocotools, never the detector's own output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from sgt_data.scenes import write_world
from sgt_eval.detectors import SceneShapeDetector, scene_color_classifier
from sgt_eval.scoring.geneval import (
    COLORS,
    color_crops,
    evaluate_geneval_image,
    load_geneval_metadata,
)

pycocotools_mask = pytest.importorskip("pycocotools.mask")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_world(root, num_train=60, num_eval=0, seed=3)
    return root


def _ground_truth(root: Path, split: str) -> list[tuple[NDArray[np.uint8], list[dict[str, Any]]]]:
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = []
    for im in coco["images"]:
        image = np.asarray(Image.open(root / "images" / split / im["file_name"]).convert("RGB"))
        objects = []
        for ann in coco["annotations"]:
            if ann["image_id"] != im["id"]:
                continue
            seg = ann["segmentation"]
            if isinstance(seg, list):
                rle = pycocotools_mask.merge(
                    pycocotools_mask.frPyObjects(seg, im["height"], im["width"])
                )
            else:
                rle = seg
            mask = pycocotools_mask.decode(rle).astype(bool)
            objects.append(
                {
                    "class": names[ann["category_id"]],
                    "color": ann["color"],
                    "mask": mask,
                    "occluded": isinstance(seg, dict),
                }
            )
        out.append((image, objects))
    return out


def test_scene_detector_finds_the_annotated_shapes(world: Path) -> None:
    detector, classifier = SceneShapeDetector(), scene_color_classifier()
    clean = clean_hits = color_hits = spurious = 0
    for image, objects in _ground_truth(world, "train"):
        detections = detector.detect(image)
        matched: set[int] = set()
        for obj in objects:
            ious = [(d.mask & obj["mask"]).sum() / (d.mask | obj["mask"]).sum() for d in detections]
            best = int(np.argmax(ious)) if ious else -1
            if best >= 0 and ious[best] > 0.5:
                matched.add(best)
            if obj["occluded"]:
                continue
            clean += 1
            if best >= 0 and ious[best] > 0.5 and detections[best].label == obj["class"]:
                clean_hits += 1
                crop = color_crops(image, [detections[best]])
                color_hits += (
                    classifier.classify(crop, obj["class"], list(COLORS))[0] == obj["color"]
                )
        spurious += len(detections) - len(matched)
    assert clean > 100
    assert clean_hits / clean >= 0.9, f"class right for {clean_hits}/{clean} unoccluded shapes"
    assert color_hits == clean_hits, "colour of a correctly detected shape misnamed"
    assert spurious == 0, f"{spurious} detections match no annotated shape"


def test_scene_detector_sees_no_shape_in_backgrounds_and_noise() -> None:
    rng = np.random.default_rng(0)
    plain = np.full((64, 64, 3), (170, 168, 160), np.uint8)
    textured = np.clip(plain + rng.integers(-10, 11, (64, 64, 1)), 0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    black_ground = np.zeros((64, 64, 3), np.uint8)  # a segmentation map's background
    detector = SceneShapeDetector()
    assert detector.detect(black_ground) == []
    assert detector.detect(plain) == []
    assert detector.detect(textured) == []
    assert all(d.score < 0.3 for d in detector.detect(noise))


def test_world_images_pass_their_own_geneval_prompts(world: Path) -> None:
    """The true image of a prompt must satisfy it through the GenEval rules and the detector
    (misses come from occluded or merged same-colour shapes, which the world allows)."""
    path = world / "t2i" / "train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    prompts = load_geneval_metadata(path, expected_rows=None)
    detector, classifier = SceneShapeDetector(), scene_color_classifier()
    passed = [
        evaluate_geneval_image(
            np.asarray(Image.open(world / rec["image"]).convert("RGB")), p, detector, classifier
        ).correct
        for p, rec in zip(prompts, records, strict=True)
    ]
    assert sum(passed) / len(passed) >= 0.75
    # a prompt about another scene's image mostly fails
    shifted = [
        evaluate_geneval_image(
            np.asarray(Image.open(world / rec["image"]).convert("RGB")), p, detector, classifier
        ).correct
        for p, rec in zip(prompts, records[1:] + records[:1], strict=True)
    ]
    assert sum(shifted) < sum(passed) / 2
