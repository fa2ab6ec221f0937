"""The sgt-data contracts round-trip through JSON and reject malformed records."""

import numpy as np
import pytest
from pydantic import ValidationError

from sgt_data import (
    MixtureConfig,
    MixtureSource,
    RendererSpec,
    Sample,
    SkippedItem,
    SourceSpec,
    StoreManifest,
    TaskKind,
    Turn,
)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_sample_round_trips_through_json_bit_exact() -> None:
    sample = Sample(
        sample_id="coco:139",
        source="coco-val",
        task=TaskKind.SEGMENTATION,
        task_variant="instance",
        instruction="Segment instances with different colors.",
        image=_image(5, 7, 0),
        target_image=_image(5, 7, 1),
        history=(Turn(role="user", text="hi"), Turn(role="assistant", text="hello")),
        metadata={"image_id": 139, "width": 7},
    )
    again = Sample.model_validate_json(sample.model_dump_json())
    assert again.sample_id == sample.sample_id
    assert again.task is TaskKind.SEGMENTATION
    assert again.history == sample.history
    assert again.metadata == sample.metadata
    assert again.image is not None
    assert sample.image is not None
    np.testing.assert_array_equal(again.image, sample.image)
    assert again.target_image is not None
    assert sample.target_image is not None
    np.testing.assert_array_equal(again.target_image, sample.target_image)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "understanding", "image": _image(2, 2, 0)}, "needs an answer"),
        ({"task": "segmentation", "image": _image(2, 2, 0)}, "needs both an input image"),
        ({"task": "text_to_image"}, "needs a target image"),
        ({"task": "segmentation", "image": np.zeros((2, 2), np.uint8)}, "HxWx3"),
        ({"task": "segmentation", "image": np.zeros((2, 2, 3), np.float32)}, "uint8"),
        ({"task": "segmentation", "colour": "red"}, "Extra inputs"),
        ({"task": "detection"}, "Input should be"),
    ],
)
def test_sample_rejects_malformed_records(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Sample.model_validate({"sample_id": "x:1", "source": "s", "instruction": "i", **fields})


def test_serialised_image_with_wrong_byte_count_is_rejected() -> None:
    bad = {"shape": [2, 2, 3], "dtype": "uint8", "data": "AAAA"}
    with pytest.raises(ValidationError, match="needs 12"):
        Sample.model_validate(
            {
                "sample_id": "x:1",
                "source": "s",
                "task": "reconstruction",
                "instruction": "i",
                "image": bad,
                "target_image": bad,
            }
        )


def test_manifest_round_trips_through_json() -> None:
    manifest = StoreManifest(
        created_by="sgt-data 0.1.0",
        name="coco-val",
        sources=(SourceSpec(format="coco", path="/data/instances_val2017.json", num_items=5000),),
        num_samples=4999,
        task_counts={TaskKind.SEGMENTATION: 4999, TaskKind.EDGE: 4999},
        renderers=(
            RendererSpec(
                name="instance", task=TaskKind.SEGMENTATION, version=1, params={"seed": 0}
            ),
            RendererSpec(
                name="canny", task=TaskKind.EDGE, version=1, params={"low": 100, "high": 200}
            ),
        ),
        palette_seed=0,
        arrays={"images/pixels": "ab" * 32},
        skipped=(SkippedItem(item_id="image 17", file="17.jpg", reason="corrupt JPEG"),),
    )
    assert StoreManifest.model_validate_json(manifest.model_dump_json()) == manifest


def test_manifest_refuses_an_unknown_schema_version() -> None:
    with pytest.raises(ValidationError, match="schema_version"):
        StoreManifest.model_validate(
            {
                "schema_version": 2,
                "created_by": "x",
                "name": "n",
                "sources": [],
                "num_samples": 0,
                "task_counts": {},
                "renderers": [],
                "palette_seed": 0,
            }
        )


def test_mixture_round_trips_and_checks_pattern_names() -> None:
    mix = MixtureConfig(
        sources=(
            MixtureSource(
                name="seg", store="s", task=TaskKind.SEGMENTATION, ratio=2, max_samples=2000
            ),
            MixtureSource(name="vqa", store="v", task=TaskKind.UNDERSTANDING),
        ),
        pattern=("seg", "seg", "vqa"),
    )
    assert MixtureConfig.model_validate_json(mix.model_dump_json()) == mix
    with pytest.raises(ValidationError, match="unknown sources"):
        MixtureConfig.model_validate({**mix.model_dump(), "pattern": ["seg", "depth"]})
    with pytest.raises(ValidationError, match="unique"):
        MixtureConfig.model_validate(
            {"sources": [mix.sources[0].model_dump(), mix.sources[0].model_dump()]}
        )
