"""GenEval rules: thresholds, counting with exclusion, colour, position margin, tag averaging.

The detector path uses ``ColorBlobDetector`` on rendered scenes of coloured shapes: it really
finds the objects (connected regions, class from shape), it is never told the expected answer.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from sgt_eval.benchmarks.generation import read_geneval_outputs
from sgt_eval.detectors import ColorBlobDetector, NearestColorClassifier
from sgt_eval.harness import run_geneval
from sgt_eval.report import EvalSettings
from sgt_eval.scoring.geneval import (
    Detection,
    GenEvalImageResult,
    GenEvalMetadataError,
    GenEvalPrompt,
    evaluate_geneval_image,
    load_geneval_metadata,
    relative_position,
    score_geneval,
    select_detections,
)
from sgt_eval_shapeworld import ShapeWorldAdapter, scene

DET, COL = ColorBlobDetector(), NearestColorClassifier()
_EMPTY = np.zeros((4, 4), bool)


def _det(box: tuple[float, float, float, float], label: str = "x", score: float = 1.0) -> Detection:
    return Detection(label, score, box, _EMPTY)


def test_blob_detector_finds_shapes_and_colours() -> None:
    image = scene([("circle", "red"), ("square", "blue"), ("triangle", "green")])
    found = sorted(DET.detect(image), key=lambda d: d.box[0])
    assert [d.label for d in found] == ["circle", "square", "triangle"]
    assert all(d.score > 0.9 for d in found)
    from sgt_eval.scoring.geneval import color_crops

    assert COL.classify(color_crops(image, found), "x", ["red", "blue", "green"]) == [
        "red",
        "blue",
        "green",
    ]


def test_position_margin() -> None:
    # centres 14 apart horizontally, sizes 10: margin 0.1·(10+10) = 2 -> dx = -12/14 -> left of
    assert relative_position(_det((0, 0, 10, 10)), _det((14, 0, 24, 10))) == {"left of"}
    # centres 1.5 apart, sizes 20: the margin of 4 swallows the offset -> no relation
    assert relative_position(_det((0, 0, 20, 20)), _det((1.5, 0, 21.5, 20))) == set()
    # offset (-5, 3), margins (2, 2): revised (-3, 1) / |(-5, 3)| = (-0.51, 0.17): only left of,
    # whereas without the margin dy = 3/5.83 = 0.51 would also make it 'below'
    assert relative_position(_det((0, 3, 10, 13)), _det((5, 0, 15, 10))) == {"left of"}
    assert relative_position(_det((0, 30, 10, 40)), _det((0, 0, 10, 10))) == {"below"}


def test_thresholds_and_cap() -> None:
    dets = [_det((0, 0, 1, 1), "circle", s) for s in (0.95, 0.95, 0.95, 0.5)]
    assert len(select_detections(dets, "counting")["circle"]) == 3  # 0.9 for counting
    assert len(select_detections(dets, "two_object")["circle"]) == 4  # 0.3 otherwise
    many = [_det((0, 0, 1, 1), "dot", 0.99)] * 20
    assert len(select_detections(many, "single_object")["dot"]) == 16


def _counting(n: int, index: int = 0) -> GenEvalPrompt:
    return GenEvalPrompt(
        index,
        "counting",
        f"{n} circles",
        ({"class": "circle", "count": n},),
        ({"class": "circle", "count": n + 1},),
    )


@pytest.mark.parametrize(("drawn", "correct"), [(3, True), (4, False), (2, False)])
def test_counting_exclusion_on_rendered_scenes(drawn: int, correct: bool) -> None:
    image = scene([("circle", "red")] * drawn)
    verdict = evaluate_geneval_image(image, _counting(3), DET, COL)
    assert verdict.correct is correct
    if drawn == 4:  # include passes (at least 3), the exclusion of >= 4 fails it
        assert "circle<4" in verdict.reason


def test_colour_and_position_on_rendered_scenes() -> None:
    blue_square = GenEvalPrompt(
        1, "colors", "a blue square", ({"class": "square", "count": 1, "color": "blue"},)
    )
    assert evaluate_geneval_image(scene([("square", "blue")]), blue_square, DET, COL).correct
    red = evaluate_geneval_image(scene([("square", "red")]), blue_square, DET, COL)
    assert not red.correct
    assert "blue square" in red.reason
    left = GenEvalPrompt(
        2,
        "position",
        "a circle left of a square",
        (
            {"class": "square", "count": 1},
            {"class": "circle", "count": 1, "position": ["left of", 0]},
        ),
    )
    assert evaluate_geneval_image(
        scene([("circle", "red"), ("square", "blue")]), left, DET, COL
    ).correct
    swapped = evaluate_geneval_image(scene([("square", "blue"), ("circle", "red")]), left, DET, COL)
    assert not swapped.correct
    assert "right of" in swapped.reason
    no_target = evaluate_geneval_image(scene([("circle", "red")]), left, DET, COL)
    assert not no_target.correct
    assert "no target" in no_target.reason


def test_overall_is_unweighted_mean_of_tags() -> None:
    results = [GenEvalImageResult(0, "single_object", True, "")] * 2 + [
        GenEvalImageResult(1, "counting", c, "") for c in (True, False, False, False)
    ]
    r = score_geneval(results)
    assert r.metrics["single_object"] == 100.0
    assert r.metrics["counting"] == 25.0
    assert r.metrics["overall"] == 62.5  # (100 + 25) / 2, not 3/6 images
    assert r.metrics["correct_images"] == 50.0
    assert r.metrics["correct_prompts"] == 100.0  # prompt 1 has one right image
    assert any("missing" in d for d in r.deviations)


def test_metadata_checks(tmp_path: Path) -> None:
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text(
        json.dumps(
            {
                "tag": "colors",
                "prompt": "p",
                "include": [{"class": "a", "count": 1, "color": "teal"}],
            }
        )
        + "\n"
    )
    with pytest.raises(GenEvalMetadataError, match=r"evaluation_metadata.jsonl:1: colour 'teal'"):
        load_geneval_metadata(path, None)
    path.write_text(
        json.dumps({"tag": "colors", "prompt": "p", "include": [{"class": "a", "count": 1}]}) + "\n"
    )
    with pytest.raises(GenEvalMetadataError, match="1 prompts, expected 553"):
        load_geneval_metadata(path)


def test_geneval_run_with_shape_world_adapter(tmp_path: Path) -> None:
    prompts = [
        GenEvalPrompt(
            0, "single_object", "a photo of a square", ({"class": "square", "count": 1},)
        ),
        GenEvalPrompt(
            1,
            "two_object",
            "a photo of a circle and a triangle",
            ({"class": "circle", "count": 1}, {"class": "triangle", "count": 1}),
        ),
        _counting(3, 2),  # "3 circles": the adapter only reads number words -> draws nothing
        GenEvalPrompt(
            3,
            "counting",
            "a photo of three circles",
            ({"class": "circle", "count": 3},),
            ({"class": "circle", "count": 4},),
        ),
        GenEvalPrompt(
            4,
            "colors",
            "a photo of a red square",
            ({"class": "square", "count": 1, "color": "red"},),
        ),
        GenEvalPrompt(
            5,
            "position",
            "a photo of a circle and a square",
            (
                {"class": "circle", "count": 1},
                {"class": "square", "count": 1, "position": ["right of", 0]},
            ),
        ),
        GenEvalPrompt(
            6,
            "position",
            "a stacked photo of a circle and a square",
            (
                {"class": "circle", "count": 1},
                {"class": "square", "count": 1, "position": ["right of", 0]},
            ),
        ),
        GenEvalPrompt(
            7,
            "color_attr",
            "a photo of a red circle and a green square",
            (
                {"class": "circle", "count": 1, "color": "red"},
                {"class": "square", "count": 1, "color": "green"},
            ),
        ),
    ]
    settings = EvalSettings(seed=3, images_per_prompt=2, batch_size=3)
    r = run_geneval(ShapeWorldAdapter(), prompts, DET, COL, settings, output_dir=tmp_path / "out")
    # counting: prompt 2 fails, prompt 3 passes -> 50; position: drawn in a row passes, stacked fails
    assert r.metrics["counting"] == 50.0
    assert r.metrics["position"] == 50.0
    assert r.metrics["single_object"] == r.metrics["two_object"] == 100.0
    assert r.metrics["colors"] == r.metrics["color_attr"] == 100.0
    assert r.metrics["overall"] == pytest.approx(500 / 6)
    assert r.num_items == 16
    assert r.judge == "color-blob-shapes + nearest-palette-color"
    assert any("2 images per prompt" in d for d in r.deviations)
    written = read_geneval_outputs(tmp_path / "out")
    assert [p.index for p, _ in written] == list(range(8))
    assert all(len(imgs) == 2 for _, imgs in written)
    assert written[3][0].exclude == ({"class": "circle", "count": 4},)
