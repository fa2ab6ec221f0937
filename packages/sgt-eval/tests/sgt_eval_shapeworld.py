"""A world of flat-coloured shapes and an adapter for it (imported by sgt-eval's tests).

``ShapeWorldAdapter`` implements the adapter protocol honestly for this world: it answers by
detecting the shapes in the image (``ColorBlobDetector``) and draws what an instruction names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from sgt_eval.detectors import PALETTE, ColorBlobDetector, NearestColorClassifier
from sgt_eval.scoring.geneval import COLORS, color_crops

SHAPES = ("square", "circle", "triangle")
NUMBERS = {"one": 1, "a": 1, "an": 1, "two": 2, "three": 3, "four": 4}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, color: str, x: int, y: int, s: int) -> None:
    """Draw a shape of side ``s`` with its top-left corner at (x, y)."""
    fill = PALETTE[color]
    if shape == "square":
        draw.rectangle([x, y, x + s - 1, y + s - 1], fill=fill)
    elif shape == "circle":
        draw.ellipse([x, y, x + s - 1, y + s - 1], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y + s - 1), (x + s - 1, y + s - 1), (x + s // 2, y)], fill=fill)
    else:
        raise ValueError(shape)


def scene(
    objects: Sequence[tuple[str, str]], vertical: bool = False, size: int = 96
) -> NDArray[np.uint8]:
    """Shapes (shape, colour) in a row (or a column) on white, in the given order."""
    im = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    n = max(len(objects), 1)
    cell = size // n
    s = min(cell - 6, 28)
    for k, (shape, color) in enumerate(objects):
        offset = k * cell + (cell - s) // 2
        centre = (size - s) // 2
        x, y = (centre, offset) if vertical else (offset, centre)
        draw_shape(draw, shape, color, x, y, s)
    return np.asarray(im)


class ShapeWorldAdapter:
    """Answers questions about shape scenes by detecting them; draws scenes from instructions."""

    kind: ClassVar[str] = "shape-world"

    def __init__(self) -> None:
        self.detector = ColorBlobDetector()
        self.colors = NearestColorClassifier()
        self.calls: list[int] = []

    def _seen(self, image: NDArray[np.uint8]) -> list[tuple[str, str]]:
        dets = [d for d in self.detector.detect(image) if d.score > 0.5]
        names = self.colors.classify(color_crops(image, dets), "object", COLORS)
        return [(d.label, c) for d, c in zip(dets, names, strict=True)]

    @staticmethod
    def _pick(question: str, wanted: str) -> str | None:
        for letter, text in re.findall(r"\(([A-Fa-f])\)\s*([^()\n]+?)(?=\s*\(|\n|$)", question):
            if text.strip().lower() == wanted:
                return letter.upper()
        for letter, text in re.findall(r"^([A-F])\.\s*(.+)$", question, flags=re.MULTILINE):
            if text.strip().lower() == wanted:
                return letter
        return None

    def _answer_one(self, image: NDArray[np.uint8], question: str) -> str:
        seen = self._seen(image)
        q = question.lower()
        m = re.search(r"how many (\w+?)s? ", q)
        if m:
            count = sum(s == m.group(1) for s, _ in seen)
            return self._pick(question, str(count)) or str(count)
        m = re.search(r"what colou?r is the (\w+)", q)
        if m:
            colors = [c for s, c in seen if s == m.group(1)]
            if colors:
                return self._pick(question, colors[0]) or colors[0]
        m = re.search(r"is there an? (\w+) (\w+)?", q)
        if m:
            shape = m.group(1) if m.group(1) in SHAPES else m.group(2)
            color = m.group(1) if m.group(1) in PALETTE else None
            present = any(s == shape and (color is None or c == color) for s, c in seen)
            return "Yes, there is." if present else "No, there is not."
        m = re.search(r"there is an? (\w+) (\w+)", q)
        if m:
            present = any(s == m.group(2) and c == m.group(1) for s, c in seen)
            return "yes" if present else "no"
        return "I am not sure."

    def answer(
        self,
        images: Sequence[NDArray[np.uint8]],
        questions: Sequence[str],
        max_new_tokens: int = 32,
    ) -> list[str]:
        self.calls.append(len(images))
        return [
            self._answer_one(im, q)[: max_new_tokens * 8]
            for im, q in zip(images, questions, strict=True)
        ]

    def generate(
        self,
        instructions: Sequence[str],
        images: Sequence[NDArray[np.uint8]] | None = None,
        settings: object = None,
    ) -> list[NDArray[np.uint8]]:
        """Draw the objects an instruction names, left to right in the order named."""
        out = []
        for text in instructions:
            objects: list[tuple[str, str]] = []
            for num, color, shape in re.findall(
                r"\b(one|two|three|four|an?)\s+(?:(\w+)\s+)?(square|circle|triangle)s?",
                text.lower(),
            ):
                colour = color if color in PALETTE else "blue"
                objects += [(shape, colour)] * NUMBERS[num]
            out.append(scene(objects, vertical="stacked" in text.lower()))
        return out


# ---------------------------------------------------------------- benchmark files in published formats


def png(image: NDArray[np.uint8]) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_benchmark_files(root: Path) -> dict[str, dict[str, Any]]:
    """Small shape-world copies of each benchmark in its published format; loader kwargs by name.

    ``EXPECTED`` holds the scores ``ShapeWorldAdapter`` must get on them (worked out per file).
    """
    import base64
    import csv
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    three = scene([("circle", "red")] * 3)
    two = scene([("circle", "red"), ("square", "blue"), ("circle", "green")])
    one = scene([("square", "blue")])
    count_q = "How many circles are in the image?\n(A) 1 (B) 2 (C) 3"
    out: dict[str, dict[str, Any]] = {}

    # CV-Bench: HF parquet with image structs. 2D all right; Omni3D: one of two unanswerable
    cv = root / "cv-bench"
    cv.mkdir()
    rows = [
        ("ADE20K", "2D", three, count_q, "(C)"),
        ("ADE20K", "2D", two, count_q, "(B)"),
        ("COCO", "2D", one, count_q.replace("circles", "squares"), "(A)"),
        ("COCO", "2D", two, count_q, "(B)"),
        ("Omni3D", "3D", two, count_q, "(B)"),
        (
            "Omni3D",
            "3D",
            two,
            "Which object is closer to the camera?\n(A) circle (B) square",
            "(A)",
        ),
    ]
    table = pa.table(
        {
            "idx": list(range(len(rows))),
            "type": [r[1] for r in rows],
            "source": [r[0] for r in rows],
            "image": [{"bytes": png(r[2]), "path": None} for r in rows],
            "prompt": [r[3] for r in rows],
            "answer": [r[4] for r in rows],
        }
    )
    pq.write_table(table, cv / "test.parquet")
    out["cv-bench"] = {"path": cv}

    # MMVP: Questions.csv + MMVP Images/<Index>.jpg; pair 2's second question is unanswerable
    mmvp = root / "mmvp"
    (mmvp / "MMVP Images").mkdir(parents=True)
    mrows = [
        (1, "What colour is the square?", "(a) red (b) blue", "(b)", one),
        (2, "What colour is the square?", "(a) red (b) blue", "(a)", scene([("square", "red")])),
        (3, "How many circles are there?", "(a) 2 (b) 3", "(b)", three),
        (4, "Is the camera looking up?", "(a) yes (b) no", "(a)", three),
    ]
    with (mmvp / "Questions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Index", "Question", "Options", "Correct Answer"])
        for idx, q, o, a, img in mrows:
            w.writerow([idx, q, o, a])
            Image.fromarray(img).save(mmvp / "MMVP Images" / f"{idx}.jpg", quality=95)
    out["mmvp"] = {"path": mmvp}

    # VSR zero-shot: jsonl + COCO-style image folder; the last caption is beyond the adapter
    vsr = root / "vsr"
    (vsr / "images").mkdir(parents=True)
    for name, img in (("a.png", two), ("b.png", one)):
        Image.fromarray(img).save(vsr / "images" / name)
    vrows = [
        {"image": "a.png", "caption": "There is a green circle.", "label": 1, "relation": "has"},
        {"image": "b.png", "caption": "There is a red circle.", "label": 0, "relation": "has"},
        {"image": "b.png", "caption": "There is a blue square.", "label": 1, "relation": "has"},
        {
            "image": "a.png",
            "caption": "The circle is left of the square.",
            "label": 1,
            "relation": "left of",
        },
    ]
    (vsr / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vrows))
    out["vsr"] = {"path": vsr / "test.jsonl", "image_root": vsr / "images"}

    # SIBench: VLMEvalKit TSV, image paths relative to the media root; one video row
    sib = root / "sibench"
    (sib / "media").mkdir(parents=True)
    for name, img in (("s1.png", three), ("s2.png", one)):
        Image.fromarray(img).save(sib / "media" / name)
    srows = [
        ["0", count_q, "C", "MCQ", "image", "s1.png", "", "BLINK", "Counting"],
        [
            "1",
            "Is there a triangle in the image?",
            "No",
            "YN",
            "image",
            "s2.png",
            "",
            "X",
            "Existence",
        ],
        [
            "2",
            "How many circles are in the images?",
            "3",
            "Number",
            "multi-view",
            "s1.png,s2.png",
            "",
            "X",
            "Counting",
        ],
        [
            "3",
            "What happens next?",
            "A",
            "MCQ",
            "video",
            "",
            "v.mp4",
            "X",
            "Trajectory_Description",
        ],
    ]
    with (sib / "SIBench.tsv").open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(
            [
                "index",
                "question",
                "answer",
                "type",
                "input_type",
                "image_path",
                "video_path",
                "data_source",
                "category",
            ]
        )
        w.writerows(srows)
    out["sibench"] = {"path": sib / "SIBench.tsv", "media_root": sib / "media"}

    # POPE: RUCAIBox JSON lines per split (.json name) + image folder
    pope = root / "pope"
    (pope / "val2014").mkdir(parents=True)
    Image.fromarray(two).save(pope / "val2014" / "COCO_val2014_1.jpg", quality=95)
    for split, label in (("random", "no"), ("adversarial", "yes")):
        prow = [
            {
                "question_id": 1,
                "image": "COCO_val2014_1.jpg",
                "text": "Is there a circle in the image?",
                "label": "yes",
            },
            {
                "question_id": 2,
                "image": "COCO_val2014_1.jpg",
                "text": "Is there a triangle in the image?",
                "label": label,
            },
        ]
        (pope / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in prow))
    out["pope"] = {"path": pope, "image_root": pope / "val2014"}

    # HallusionBench: JSON list; the visual_input 0 row has no image and is left out
    hb = root / "hallusionbench"
    (hb / "figs").mkdir(parents=True)
    Image.fromarray(one).save(hb / "figs" / "0_0.png")
    Image.fromarray(scene([("square", "red")])).save(hb / "figs" / "0_1.png")
    base = {"category": "VD", "subcategory": "illusion", "set_id": "0"}
    hrows = [
        {
            **base,
            "figure_id": "0",
            "question_id": "0",
            "visual_input": "1",
            "question": "Is there a blue square in the image?",
            "gt_answer": "1",
            "filename": "figs/0_0.png",
        },
        {
            **base,
            "figure_id": "0",
            "question_id": "1",
            "visual_input": "1",
            "question": "Is the square tilted?",
            "gt_answer": "0",
            "filename": "figs/0_0.png",
        },
        {
            **base,
            "figure_id": "1",
            "question_id": "0",
            "visual_input": "2",
            "question": "Is there a blue square in the image?",
            "gt_answer": "0",
            "filename": "figs/0_1.png",
        },
        {
            **base,
            "figure_id": "1",
            "question_id": "1",
            "visual_input": "2",
            "question": "Is there a red square in the image?",
            "gt_answer": "1",
            "filename": "figs/0_1.png",
        },
        {
            **base,
            "category": "VS",
            "figure_id": "0",
            "question_id": "9",
            "visual_input": "0",
            "question": "Is Paris in France?",
            "gt_answer": "1",
            "filename": None,
        },
    ]
    (hb / "HallusionBench.json").write_text(json.dumps(hrows))
    out["hallusionbench"] = {"path": hb}

    # MMStar: VLMEvalKit TSV with base64 images
    ms = root / "mmstar"
    ms.mkdir()
    with (ms / "MMStar.tsv").open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["index", "question", "answer", "category", "image"])
        w.writerow(
            [
                "0",
                count_q.replace("(A) 1 (B) 2 (C) 3", "Options: (A) 1 (B) 2 (C) 3 (D) 4"),
                "C",
                "instance reasoning",
                base64.b64encode(png(three)).decode(),
            ]
        )
        w.writerow(
            [
                "1",
                "What colour is the square? (A) red (B) blue (C) green (D) pink",
                "B",
                "coarse perception",
                base64.b64encode(png(one)).decode(),
            ]
        )
    out["mmstar"] = {"path": ms}

    # RealWorldQA: parquet; one letter answer, one open answer
    rw = root / "realworldqa"
    rw.mkdir()
    pq.write_table(
        pa.table(
            {
                "image": [{"bytes": png(two), "path": None}, {"bytes": png(three), "path": None}],
                "question": [count_q, "How many circles are in the image? Answer with a number."],
                "answer": ["B", "3"],
            }
        ),
        rw / "test-00000-of-00001.parquet",
    )
    out["realworldqa"] = {"path": rw}

    # MathVista: testmini.json keyed by pid + images/
    mv = root / "mathvista"
    (mv / "images").mkdir(parents=True)
    Image.fromarray(three).save(mv / "images" / "1.png")
    mrow = {
        "1": {
            "pid": "1",
            "question": "How many circles?",
            "image": "images/1.png",
            "choices": None,
            "unit": None,
            "precision": None,
            "answer": "3",
            "question_type": "free_form",
            "answer_type": "integer",
            "query": "How many circles are in the image? Answer with an integer.",
        },
        "2": {
            "pid": "2",
            "question": "Which is larger?",
            "image": "images/1.png",
            "choices": ["left", "right"],
            "unit": None,
            "precision": None,
            "answer": "right",
            "question_type": "multi_choice",
            "answer_type": "text",
            "query": "Which circle is larger?\n(A) left (B) right",
        },
    }
    (mv / "testmini.json").write_text(json.dumps(mrow))
    out["mathvista"] = {"path": mv}
    return out


#: (benchmark, split) -> metric -> value that ShapeWorldAdapter must score on these files.
EXPECTED: dict[tuple[str, str], dict[str, float]] = {
    ("cv-bench", "default"): {"2d": 100.0, "3d": 50.0, "overall": 75.0},
    ("mmvp", "default"): {"pair_accuracy": 50.0, "question_accuracy": 75.0},
    ("vsr", "zeroshot-test"): {"accuracy": 75.0, "unknown_ratio": 25.0},
    # MCQ 'C' right; YN 'No, there is not.' -> 'no' right; 3 circles over two views right
    ("sibench", "default"): {"overall": 100.0},
    ("pope", "random"): {"accuracy": 100.0, "yes_ratio": 50.0},
    ("pope", "adversarial"): {"accuracy": 50.0, "yes_ratio": 50.0, "f1": 2 / 3 * 100},
    # Q 'tilted' unanswerable -> wrong; others right: aAcc 3/4, fig 0 fails, fig 1 passes,
    # question 0 passes on both figures, question 1 fails on figure 0
    ("hallusionbench", "default"): {"aAcc": 75.0, "fAcc": 50.0, "qAcc": 50.0},
    ("mmstar", "default"): {"accuracy": 100.0},
    ("realworldqa", "default"): {"accuracy": 100.0},
    # integer counted right; 'I am not sure.' maps to the choice nearest by edit distance: 13
    # to both 'left' and 'right', the first wins -> 'left', but the answer is 'right'
    ("mathvista", "testmini"): {"accuracy": 50.0},
}
