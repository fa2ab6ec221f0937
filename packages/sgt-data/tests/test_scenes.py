"""The scene world's ground truth holds when re-derived from what it writes.

Every check decodes the emitted files with independent tools (pycocotools for COCO polygons and RLE,
Pillow for the PNGs), re-derives counts, colours (from image pixels under each mask), GenEval
relations (from the decoded masks' boxes) and nearer/farther (from the depth map under the masks),
and compares every emitted answer and prompt with those re-derivations, never with the
generator's own records.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pydantic import ValidationError

from sgt_data.errors import SgtDataError
from sgt_data.scenes import (
    SCENE_CLASSES,
    SceneConfig,
    WorldPaths,
    generate_scene,
    scene_seed,
    write_world,
)

# Canonical sRGB of the ten colour names (CSS values), independent of the generator's palette.
_CANONICAL = {
    "red": (255, 0, 0),
    "orange": (255, 165, 0),
    "yellow": (255, 255, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
    "purple": (128, 0, 128),
    "pink": (255, 192, 203),
    "brown": (139, 69, 19),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
_NAMES = list(_CANONICAL)
_TABLE = np.array([_CANONICAL[n] for n in _NAMES], dtype=np.float64)
_CONFIG = SceneConfig()
# pycocotools 2.0.x on numpy 2 warns on every decode; the warning is about pycocotools, not us.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
_NUM_TRAIN, _NUM_EVAL = 160, 60
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_PHRASE = {
    "to the left of": "left of",
    "to the right of": "right of",
    "above": "above",
    "below": "below",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldPaths:
    return write_world(
        tmp_path_factory.mktemp("world"), num_train=_NUM_TRAIN, num_eval=_NUM_EVAL, seed=7
    )


class _Truth:
    """Ground truth of one split, re-derived from the written files only."""

    def __init__(self, world: WorldPaths, split: str) -> None:
        paths = world.train if split == "train" else world.eval
        self.root = world.root
        self.coco = COCO(str(paths.instances))
        self.cat_name = {c["id"]: c["name"] for c in self.coco.loadCats(self.coco.getCatIds())}
        self.objects: dict[int, list[dict[str, Any]]] = {}
        self.file_to_id: dict[str, int] = {}
        for image_id, info in self.coco.imgs.items():
            rel = f"images/{split}/{info['file_name']}"
            self.file_to_id[rel] = image_id
            image = np.asarray(Image.open(self.root / rel).convert("RGB"))
            stem = Path(info["file_name"]).stem
            depth = np.asarray(Image.open(paths.depth / f"{stem}.png")).astype(np.float64) / 1000
            objs = []
            for ann in self.coco.imgToAnns[image_id]:
                mask = self.coco.annToMask(ann).astype(bool)
                pixels = image[mask].astype(np.float64)
                objs.append(
                    {
                        "ann": ann,
                        "class": self.cat_name[ann["category_id"]],
                        "mask": mask,
                        "color": _NAMES[int(_nearest(pixels.mean(axis=0))[0])],
                        "pixel_colors": _nearest(pixels),
                        "bbox": mask_utils.toBbox(
                            mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                        ).tolist(),
                        "depth": float(np.median(depth[mask])),
                        "depth_values": depth[mask],
                    }
                )
            self.objects[image_id] = objs

    def resolve(self, image_id: int, ref: str) -> dict[str, Any]:
        """The single object a referring expression ('star' or 'red star') names."""
        words = ref.split()
        found = [
            o
            for o in self.objects[image_id]
            if o["class"] == words[-1] and (len(words) == 1 or o["color"] == words[0])
        ]
        assert len(found) == 1, f"image {image_id}: {ref!r} names {len(found)} objects"
        return found[0]


def _nearest(rgb: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(np.atleast_2d(rgb)[:, None, :] - _TABLE[None], axis=-1)
    return np.asarray(np.argmin(d, axis=1))


def _relations(a: list[float], b: list[float], margin: float) -> set[str]:
    """GenEval's relative_position, written from its description (centres, sizes, margin)."""
    ca = np.array([a[0] + a[2] / 2, a[1] + a[3] / 2])
    cb = np.array([b[0] + b[2] / 2, b[1] + b[3] / 2])
    offset = ca - cb
    shrunk = np.sign(offset) * np.clip(
        np.abs(offset) - margin * np.array([a[2] + b[2], a[3] + b[3]]), 0, None
    )
    if np.abs(shrunk).max() < 1e-3:
        return set()
    dx, dy = shrunk / np.hypot(*offset)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


@pytest.fixture(scope="module")
def truth(world: WorldPaths) -> dict[str, _Truth]:
    return {split: _Truth(world, split) for split in ("train", "eval")}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_annotations_decode_to_disjoint_visible_masks_matching_the_pixels(
    truth: dict[str, _Truth], world: WorldPaths, split: str
) -> None:
    t = truth[split]
    paths = world.train if split == "train" else world.eval
    min_area = _CONFIG.min_visible_area * _CONFIG.height * _CONFIG.width
    kinds: Counter[str] = Counter()
    for image_id, objs in t.objects.items():
        info = t.coco.imgs[image_id]
        covered = np.zeros((info["height"], info["width"]), dtype=np.int32)
        expected_semantic = np.full(covered.shape, 255, dtype=np.uint8)
        for o in objs:
            ann = o["ann"]
            kinds["polygon" if isinstance(ann["segmentation"], list) else "rle"] += 1
            assert ann["iscrowd"] == 0
            assert ann["area"] == o["mask"].sum() >= min_area
            np.testing.assert_allclose(ann["bbox"], o["bbox"])
            # every pixel under the mask shows the object's colour (100 %, not a majority)
            assert (o["pixel_colors"] == _NAMES.index(o["color"])).all(), ann["id"]
            # a shape is one card at one depth, in front of the background plane
            assert np.ptp(o["depth_values"]) < 2e-3
            assert o["depth"] < 10.0
            covered += o["mask"]
            expected_semantic[o["mask"]] = ann["category_id"] - 1
        assert covered.max() <= 1, f"image {image_id}: overlapping visible masks"
        semantic = np.asarray(Image.open(paths.semantic / f"{Path(info['file_name']).stem}.png"))
        np.testing.assert_array_equal(semantic, expected_semantic)
    # both encodings occur: unoccluded shapes as polygons, occluded ones as RLE
    assert kinds["polygon"] > 0
    assert kinds["rle"] > 0


def test_occlusion_is_real_and_follows_depth(truth: dict[str, _Truth]) -> None:
    """An RLE (occluded) shape touches a nearer shape; no shape is drawn over a nearer one."""
    occluded = 0
    for objs in truth["train"].objects.values():
        for o in objs:
            if isinstance(o["ann"]["segmentation"], list):
                continue
            occluded += 1
            grown = o["mask"].copy()
            grown[1:] |= o["mask"][:-1]
            grown[:-1] |= o["mask"][1:]
            grown[:, 1:] |= o["mask"][:, :-1]
            grown[:, :-1] |= o["mask"][:, 1:]
            neighbours = [p for p in objs if p is not o and (p["mask"] & grown).any()]
            assert any(p["depth"] < o["depth"] for p in neighbours), o["ann"]["id"]
    assert occluded > 10


@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_vqa_answer_follows_from_the_decoded_scene(
    truth: dict[str, _Truth], world: WorldPaths, split: str
) -> None:
    t = truth[split]
    records = _read_jsonl((world.train if split == "train" else world.eval).vqa)
    seen: Counter[str] = Counter()
    existence: dict[tuple[int, str], Counter[str]] = {}
    for rec in records:
        assert set(rec) >= {"id", "image", "conversations"}
        human, gpt = rec["conversations"]
        assert human["from"] == "human"
        assert gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n")
        question, answer = human["value"][len("<image>\n") :], gpt["value"]
        image_id = t.file_to_id[rec["image"]]
        objs = t.objects[image_id]
        classes = Counter(o["class"] for o in objs)
        colors = Counter(o["color"] for o in objs)  # decoded from the pixels under each mask

        def count(noun: str, classes: Counter[str] = classes, colors: Counter[str] = colors) -> int:
            """The count a noun of a reasoning question names: 'circles' or 'red shapes'."""
            if noun.endswith(" shapes"):
                assert noun.removesuffix(" shapes") in _NAMES, noun
                return colors[noun.removesuffix(" shapes")]
            assert noun[:-1] in SCENE_CLASSES, noun
            assert noun.endswith("s"), noun
            return classes[noun[:-1]]

        if m := re.match(r"Is there an? (\w+) in the image\?", question):
            seen["existence"] += 1
            assert answer == ("Yes" if classes[m[1]] else "No"), rec["id"]
            split_key = (image_id, str(rec["metadata"]["pope_split"]))
            existence.setdefault(split_key, Counter())[answer] += 1
        elif m := re.match(r"How many (.+?) and (.+?) are there in total\?", question):
            seen["count_sum"] += 1
            assert answer == str(count(m[1]) + count(m[2])), rec["id"]
            assert count(m[1]) + count(m[2]) > 0, rec["id"]
        elif m := re.match(r"Are there more (.+?) than (.+?)\?", question):
            seen["count_compare"] += 1
            assert count(m[1]) != count(m[2]), rec["id"]
            assert answer == ("Yes" if count(m[1]) > count(m[2]) else "No"), rec["id"]
        elif m := re.match(r"How many more (.+?) than (.+?) are there\?", question):
            seen["count_difference"] += 1
            assert int(answer) == count(m[1]) - count(m[2]) >= 1, rec["id"]
        elif m := re.match(r"How many (\w+)s are in the image\?", question):
            seen["counting"] += 1
            assert answer == str(classes[m[1]]), rec["id"]
        elif m := re.match(r"What color is the (\w+)\?", question):
            seen["color"] += 1
            assert answer == t.resolve(image_id, m[1])["color"], rec["id"]
        elif m := re.match(
            r"Is the (.+?) (to the left of|to the right of|above|below) the (.+?)\?", question
        ):
            seen["relation"] += 1
            a, b = t.resolve(image_id, m[1]), t.resolve(image_id, m[3])
            held = _relations(a["bbox"], b["bbox"], _CONFIG.relation_margin)
            asked = _PHRASE[m[2]]
            if answer == "Yes":
                assert asked in held, rec["id"]
            else:  # a 'No' is only asked where the opposite relation clearly holds
                assert answer == "No"
                assert asked not in held
                assert _OPPOSITE[asked] in held, rec["id"]
        elif m := re.match(
            r"Which object is (closer to|farther from) the camera, the (.+?) or the (.+?)\?\n"
            r"\(A\) (.+?)\n\(B\) (.+?)\n",
            question,
        ):
            seen["depth"] += 1
            assert (m[4], m[5]) == (m[2], m[3])
            da, db = t.resolve(image_id, m[2])["depth"], t.resolve(image_id, m[3])["depth"]
            assert abs(da - db) >= _CONFIG.depth_margin_m - 2e-3, rec["id"]
            a_wins = da < db if m[1] == "closer to" else da > db
            assert answer == ("A" if a_wins else "B"), rec["id"]
        else:
            pytest.fail(f"unrecognised question {question!r} in {rec['id']}")
    assert all(seen[k] > 0 for k in ("existence", "counting", "color", "relation", "depth")), seen
    reasoning = ("count_sum", "count_compare", "count_difference")
    if split == "eval":  # the benchmark set: reasoning too, each POPE split balanced per image
        assert all(seen[k] > 0 for k in reasoning), seen
        for key, answers in existence.items():
            assert answers["Yes"] == answers["No"] == 1, key
    else:  # the training mix, as before: positives shared by the splits, balanced per image
        assert not any(seen[k] for k in reasoning), seen
        per_image: dict[int, Counter[str]] = {}
        for (image_id, _split), answers in existence.items():
            per_image.setdefault(image_id, Counter()).update(answers)
        for image_id, answers in per_image.items():
            assert answers["Yes"] == answers["No"], image_id


def test_adversarial_negatives_co_occur_more_than_random_ones(
    truth: dict[str, _Truth], world: WorldPaths
) -> None:
    """POPE's adversarial negatives are absent classes that co-occur most with present ones."""
    t = truth["train"]
    co: Counter[tuple[str, str]] = Counter()
    for objs in t.objects.values():
        present = {o["class"] for o in objs}
        for a in present:
            for b in present - {a}:
                co[(a, b)] += 1
    scores: dict[str, list[float]] = {"adversarial": [], "random": []}
    for rec in _read_jsonl(world.train.vqa):
        split = rec.get("metadata", {}).get("pope_split")
        if split not in scores:
            continue
        m = re.match(r"<image>\nIs there an? (\w+) in", rec["conversations"][0]["value"])
        assert m is not None
        present = {o["class"] for o in t.objects[t.file_to_id[rec["image"]]]}
        scores[split].append(float(np.mean([co[(m[1], p)] for p in present])))
    assert len(scores["adversarial"]) > 20
    assert len(scores["random"]) > 20
    assert np.mean(scores["adversarial"]) > 1.2 * np.mean(scores["random"])


@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_t2i_prompt_passes_a_geneval_style_check(
    truth: dict[str, _Truth], world: WorldPaths, split: str
) -> None:
    t = truth[split]
    records = _read_jsonl((world.train if split == "train" else world.eval).t2i)
    assert len(records) == len(t.objects)
    tags: Counter[str] = Counter()
    for rec in records:
        tags[rec["tag"]] += 1
        objs = t.objects[t.file_to_id[rec["image"]]]
        groups: list[list[dict[str, Any]]] = []
        for clause in rec["include"]:
            assert clause["class"] in rec["prompt"]
            found = [o for o in objs if o["class"] == clause["class"]]
            assert len(found) >= clause["count"], rec["id"]
            if "color" in clause:
                assert clause["color"] in rec["prompt"]
                assert sum(o["color"] == clause["color"] for o in found) >= clause["count"]
            if "position" in clause:
                relation, target = clause["position"]
                assert relation in rec["prompt"]
                for o in found:
                    for g in groups[target]:
                        assert relation in _relations(
                            o["bbox"], g["bbox"], _CONFIG.relation_margin
                        ), rec["id"]
            groups.append(found)
        for clause in rec.get("exclude", []):
            assert sum(o["class"] == clause["class"] for o in objs) < clause["count"], rec["id"]
    assert set(tags) == {
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
    }, tags


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_world_is_deterministic_per_seed_and_differs_across_seeds(tmp_path: Path) -> None:
    a = write_world(tmp_path / "a", num_train=12, num_eval=4, seed=3)
    b = write_world(tmp_path / "b", num_train=12, num_eval=4, seed=3)
    c = write_world(tmp_path / "c", num_train=12, num_eval=4, seed=4)
    assert _digest(a.root) == _digest(b.root)
    da, dc = _digest(a.root), _digest(c.root)
    images = [k for k in da if k.startswith("images/")]
    assert len(images) == 16
    assert sum(da[k] != dc[k] for k in images) >= 15
    one, again = generate_scene(99), generate_scene(99)
    np.testing.assert_array_equal(one.image, again.image)
    np.testing.assert_array_equal(one.depth_m, again.depth_m)
    assert not np.array_equal(one.image, generate_scene(100).image)


def test_held_out_split_is_disjoint(truth: dict[str, _Truth], world: WorldPaths) -> None:
    train, held_out = truth["train"], truth["eval"]
    assert set(train.coco.imgs).isdisjoint(held_out.coco.imgs)
    seeds = [{i["scene_seed"] for i in t.coco.imgs.values()} for t in (train, held_out)]
    assert len(seeds[0]) == _NUM_TRAIN
    assert len(seeds[1]) == _NUM_EVAL
    assert seeds[0].isdisjoint(seeds[1])
    pixels = [
        {
            hashlib.sha256(np.asarray(Image.open(t.root / rel)).tobytes()).hexdigest()
            for rel in t.file_to_id
        }
        for t in (train, held_out)
    ]
    assert pixels[0].isdisjoint(pixels[1])
    # the COCO file's scene seeds regenerate the very images on disk
    info = next(iter(held_out.coco.imgs.values()))
    on_disk = np.asarray(Image.open(world.eval.images / info["file_name"]))
    np.testing.assert_array_equal(generate_scene(info["scene_seed"]).image, on_disk)


def test_scene_seed_names_the_written_scenes(truth: dict[str, _Truth]) -> None:
    # image ids are 1-based per split (eval offset by 1e9): index = id - offset - 1
    for split, offset in (("train", 0), ("eval", 1_000_000_000)):
        for image_id, info in truth[split].coco.imgs.items():
            assert scene_seed(7, split, image_id - offset - 1) == info["scene_seed"]
    # more train scenes of the same world never hit a held-out one
    extra = {scene_seed(0, "train", i) for i in range(5000)}
    assert extra.isdisjoint(scene_seed(0, "eval", i) for i in range(5000))
    assert scene_seed(1, "train", 0) != scene_seed(0, "train", 0)
    with pytest.raises(SgtDataError, match="unknown split 'test'"):
        scene_seed(0, "test", 0)  # type: ignore[arg-type]
    with pytest.raises(SgtDataError, match="must be >= 0"):
        scene_seed(0, "train", -1)


def test_layout_mirrors_coco(world: WorldPaths) -> None:
    coco = json.loads(world.train.instances.read_text())
    assert set(coco) >= {"images", "annotations", "categories"}
    assert [c["name"] for c in coco["categories"]] == list(SCENE_CLASSES)
    assert len(list(world.train.images.glob("*.png"))) == _NUM_TRAIN
    assert len(list(world.eval.depth.glob("*.png"))) == _NUM_EVAL
    depth = Image.open(next(world.train.depth.glob("*.png")))
    assert np.asarray(depth).dtype == np.uint16
    assert json.loads(world.manifest.read_text())["depth_png_unit"] == "millimetre"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_objects": 4, "max_objects": 2}, "min_objects"),
        ({"min_depth_m": 5.0, "max_depth_m": 3.0}, "min_depth_m"),
        ({"max_depth_m": 12.0}, "in front of the background"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_bad_config_is_rejected_with_its_field_named(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SceneConfig.model_validate(fields)


def test_bad_seed_and_sizes_raise_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        generate_scene(-1)
    with pytest.raises(ValueError, match="train=-2"):
        write_world(tmp_path, num_train=-2)


def test_world_goes_through_the_real_converters(world: WorldPaths, tmp_path: Path) -> None:
    """COCO instances (+ depth PNGs), COCO-Stuff maps and LLaVA JSONL convert with nothing skipped."""
    from sgt_data.convert import (
        CocoInstancesConverter,
        CocoStuffConverter,
        ConvertOptions,
        VqaConverter,
        run_conversion,
    )

    split = world.eval
    instances = run_conversion(
        CocoInstancesConverter(
            split.instances,
            split.images,
            ConvertOptions(name="scene-coco", depth_dir=str(split.depth), depth_range=(0.0, 15.0)),
        ),
        tmp_path / "coco",
    )
    stuff = run_conversion(
        CocoStuffConverter(split.semantic, split.images, ConvertOptions(name="scene-stuff")),
        tmp_path / "stuff",
    )
    vqa = run_conversion(
        VqaConverter(split.vqa, world.root, ConvertOptions(name="scene-vqa")), tmp_path / "vqa"
    )
    assert instances.num_samples == stuff.num_samples == _NUM_EVAL
    assert vqa.num_samples == len(_read_jsonl(split.vqa))
    assert instances.skipped == stuff.skipped == vqa.skipped == ()
    # A mixture source can train on chosen question types: exactly the JSONL's records of them.
    from sgt_data.datasets import SourceDataset
    from sgt_data.schema import MixtureSource, TaskKind
    from sgt_data.store import SampleStore

    chosen = ("existence", "counting")
    source = MixtureSource(
        name="vqa",
        store=str(tmp_path / "vqa"),
        task=TaskKind.UNDERSTANDING,
        where={"question_type": chosen},
    )
    dataset = SourceDataset(source, SampleStore.open(tmp_path / "vqa"))
    expected = [r for r in _read_jsonl(split.vqa) if r["metadata"]["question_type"] in chosen]
    assert 0 < len(dataset) < vqa.num_samples
    assert [(dataset[i].sample_id, dataset[i].answer) for i in range(len(dataset))] == [
        (f"scene-vqa:{r['id']}", r["conversations"][-1]["value"]) for r in expected
    ]
