"""Every shipped recipe validates, and the paper recipes carry the published hyper-parameters."""

from __future__ import annotations

import pytest

from sgt_models import BagelAdapterConfig, OmniGen2AdapterConfig, ReferenceAdapterConfig
from sgt_train import load_run_config
from sgt_train.cli import main
from sgt_train.recipes import recipe_names, recipe_path

REQUIRED = {
    "bagel-sgt",
    "omnigen2-sgt",
    "tiny-sgt",
    *(
        f"bagel-ablation-{k}"
        for k in ("vqa-only", "edge", "depth", "reconstruction", "segmentation")
    ),
    *(f"bagel-scale-{k}" for k in ("2k", "10k", "50k", "100k")),
}


def test_required_recipes_ship() -> None:
    assert set(recipe_names()) >= REQUIRED


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_validates(name: str) -> None:
    config = load_run_config(recipe_path(name))
    assert config.name == name
    assert main(["validate", name, "--config-only"]) == 0  # its stores are not here


def test_bagel_recipe_matches_the_release() -> None:
    c = load_run_config(recipe_path("bagel-sgt"))
    assert isinstance(c.model, BagelAdapterConfig)
    assert (c.optimizer.lr, c.optimizer.betas, c.optimizer.eps) == (1e-4, (0.9, 0.95), 1e-15)
    assert (c.schedule.kind, c.schedule.warmup_steps) == ("constant", 1000)
    assert (c.loss_weights.ce, c.loss_weights.mse, c.ema.decay, c.grad_clip) == (
        1.5,
        1.0,
        0.9999,
        1.0,
    )
    assert (c.checkpoint.every, c.checkpoint.save_after) == (1000, 7000)
    ratios = {s.task.value: s.ratio for s in c.data.sources}
    assert ratios == {"segmentation": 2.0, "understanding": 1.0}


def test_omnigen2_recipe_matches_the_release() -> None:
    c = load_run_config(recipe_path("omnigen2-sgt"))
    assert isinstance(c.model, OmniGen2AdapterConfig)
    assert (c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.eps) == (5e-6, 0.01, 1e-8)
    assert (c.steps, c.micro_batch_size * c.gradient_accumulation) == (5000, 60)
    assert c.data.pattern == ("seg", "seg", "vqa")
    assert c.ema.decay == 0.0


def test_ablations_and_scale_sweep_differ_only_in_data() -> None:
    base = load_run_config(recipe_path("bagel-sgt"))
    tasks = {}
    for name in sorted(REQUIRED):
        if name.startswith(("bagel-ablation-", "bagel-scale-")):
            c = load_run_config(recipe_path(name))
            assert c.model_copy(update={"name": base.name, "data": base.data}) == base
            tasks[name] = sorted(s.task.value for s in c.data.sources)
    assert tasks["bagel-ablation-vqa-only"] == ["understanding"]
    assert tasks["bagel-ablation-depth"] == ["depth", "understanding"]
    caps = {
        load_run_config(recipe_path(f"bagel-scale-{k}")).data.sources[0].max_samples
        for k in ("2k", "10k", "50k", "100k")
    }
    assert caps == {2000, 10000, 50000, 100000}


def test_tiny_recipe_uses_the_reference_model() -> None:
    c = load_run_config(recipe_path("tiny-sgt"))
    assert isinstance(c.model, ReferenceAdapterConfig)
    assert c.model.size == "tiny"
    assert c.precision == "fp32"


def test_unknown_recipe_name_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "no-such-recipe"]) == 2
    err = capsys.readouterr().err
    assert "no-such-recipe: no such file and no shipped recipe of that name" in err
    assert "tiny-sgt" in err  # the recipes are listed
