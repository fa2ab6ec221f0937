"""The ``omnigen2-sgt`` recipe on a tiny random OmniGen2 folder, on the CPU.

``sgt-train fit omnigen2-sgt --set model.model_path=TINY ...`` trains in two gloo processes under
ZeRO-2 and ZeRO-3 on real stores (the demo's scene world) with replicas that agree; a run stopped
by SIGTERM and resumed reproduces the uninterrupted run bit for bit; ``sgt-train export`` writes an
official-layout folder that ``sgt-models check`` accepts and that loads back into the trained
model's outputs, LoRA merged in.

The file doubles as the worker of the two-process runs (``python -m torch.distributed.run ...
test_omnigen2_fit.py OUT fit omnigen2-sgt --set ...``): it runs ``sgt-train``'s own ``main`` and
records what each rank ended with.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import family_fit
from sgt_data import Sample
from sgt_models import GenerationSettings
from sgt_models.omnigen2.testing import write_tiny_omnigen2_folder
from sgt_models.registry import load_adapter
from sgt_models.testing import contract_samples
from sgt_train.config import RunConfig, load_run_config
from sgt_train.demo.stores import DemoStores, build_stores
from sgt_train.export import export_run
from sgt_train.loop import fit
from sgt_train.recipes import recipe_path

#: the MLLM sees the tiny folder's 56 x 56 inputs; the DiT draws 64 x 64 maps (8 x 8 latents)
_PIXELS = 64 * 64


# -- shared set-up -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_omnigen2_folder(tmp_path_factory.mktemp("omnigen2") / "OmniGen2")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> DemoStores:
    # an epoch ends with its last 'seg' micro-batch and the next starts the pattern afresh: 32
    # scenes make one epoch of 4 whole [seg, seg, vqa] patterns per rank (2 ranks, micro-batch 2)
    return build_stores(tmp_path_factory.mktemp("data"), num_train=32, num_eval=1, seed=0)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # the tiny model gains nothing from intra-op threads on a shared CPU (they spin-wait)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _overrides(
    out: Path,
    tiny: Path,
    stores: DemoStores,
    *,
    stage: int,
    steps: int,
    every: int,
    extra: Sequence[str] = (),
) -> list[str]:
    """The recipe at CPU scale: fp32, 64 x 64 maps, micro-batch 2 x [seg, seg, vqa], real stores."""
    return [
        f"output_dir={out}",
        f"model.model_path={tiny}",
        "model.dtype=float32",
        "precision=fp32",
        f"model.max_output_pixels={_PIXELS}",
        f"model.max_input_pixels={_PIXELS}",
        f"data.sources.0.store={stores.scenes}",
        f"data.sources.1.store={stores.vqa}",
        f"steps={steps}",
        "schedule.warmup_steps=1",
        "optimizer.lr=1e-3",  # the recipe's 5e-6 would hardly move a tiny model in a few steps
        "gradient_accumulation=3",  # one [seg, seg, vqa] pattern per optimizer step
        f"zero.stage={stage}",
        "num_workers=0",
        f"checkpoint.every={every}",
        "logging.every=1",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]


def _config(out: Path, tiny: Path, stores: DemoStores, **kwargs: Any) -> RunConfig:
    return load_run_config(recipe_path("omnigen2-sgt"), _overrides(out, tiny, stores, **kwargs))


def _torchrun_fit(out: Path, overrides: Sequence[str]) -> None:
    family_fit.torchrun_fit(__file__, out, "omnigen2-sgt", overrides)


def test_recipe_trains_in_two_processes_under_zero2_and_zero3(
    tmp_path: Path, tiny: Path, stores: DemoStores
) -> None:
    """Both ranks end with the same weights, every step logs finite losses of both tasks,
    checkpoints are written, and ZeRO-3 trains what ZeRO-2 trains (same data, same seeds)."""
    losses: dict[int, list[float]] = {}
    for stage in (2, 3):
        out = tmp_path / f"zero{stage}"
        _torchrun_fit(out, _overrides(out, tiny, stores, stage=stage, steps=3, every=2))
        results = [json.loads((out / f"result_rank{r}.json").read_text()) for r in (0, 1)]
        assert [r["final_step"] for r in results] == [3, 3]
        assert results[0]["losses"] == results[1]["losses"]
        weights = [torch.load(out / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1)]
        assert weights[0].keys() == weights[1].keys()
        for name, value in weights[0].items():
            assert value.numel() > 0, name  # ZeRO-3: the run hands back whole parameters
            assert torch.equal(value, weights[1][name]), (stage, name)

        run = out / "omnigen2-sgt"
        rows = family_fit.rows(run)
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows), rows
        for row in rows:  # each step: 2 ranks x 3 micro-batches x 2 samples, both tasks
            assert math.isfinite(row["segmentation/mse"]), row
            assert math.isfinite(row["understanding/ce"]), row
        assert [r["samples"] for r in rows] == [12, 24, 36]
        assert [r["loss"] for r in rows] == results[0]["losses"]
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert names == ["step_00000002", "step_00000003"]
        state = json.loads((run / "checkpoints/step_00000003/trainer_state.json").read_text())
        assert state["world_size"] == 2
        shards = sorted(p.name for p in (run / "checkpoints/step_00000003/ds").glob("*optim*"))
        assert len(shards) == 2, shards
        losses[stage] = results[0]["losses"]
    np.testing.assert_allclose(losses[3], losses[2], rtol=1e-5, atol=0)


# -- SIGTERM and resume ----------------------------------------------------------------------------


_WITHIN_BATCH = ("data.mode=within_batch", "data.pattern=null", "gradient_accumulation=2")


@pytest.mark.parametrize(
    ("stage", "mixing"),
    [(2, ()), (3, ()), (2, _WITHIN_BATCH)],
    ids=["zero2-interleave", "zero3-interleave", "zero2-within-batch"],
)
def test_sigterm_and_resume_are_bit_identical(
    tmp_path: Path, tiny: Path, stores: DemoStores, stage: int, mixing: tuple[str, ...]
) -> None:
    """The real adapter from the folder (the default builder): stopped by SIGTERM after step 2
    and resumed, a run logs the uninterrupted run's losses and ends with its weights, exactly."""

    def config(out: Path) -> RunConfig:
        return _config(out, tiny, stores, stage=stage, steps=4, every=4, extra=mixing)

    full = fit(config(tmp_path / "full"))
    first = fit(config(tmp_path / "split"), hooks=family_fit.sigterm_at(2))
    assert first.preempted
    assert first.last_checkpoint is not None
    assert first.last_checkpoint.name == "step_00000002"
    resumed = fit(config(tmp_path / "split"))
    assert (resumed.start_step, resumed.final_step) == (2, 4)

    assert len(full.losses) == 4
    assert all(math.isfinite(x) for x in full.losses)
    assert first.losses + resumed.losses == full.losses  # exact
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for name, value in full_state.items():
        assert value.numel() > 0, name
        assert torch.equal(value, resumed_state[name]), name
    rows = family_fit.rows(resumed.run_dir)
    assert [r["loss"] for r in rows] == full.losses
    if mixing:  # every micro-batch mixes both tasks
        assert all("segmentation/mse" in r and "understanding/ce" in r for r in rows), rows


# -- export ----------------------------------------------------------------------------------------


def _fixed_samples() -> list[Sample]:
    und, seg, *_ = contract_samples(64, seed=3)
    return [und, seg, seg]


def _outputs(model: Any) -> dict[str, Any]:
    settings = GenerationSettings(num_steps=3, height=64, width=64, seed=5)
    return family_fit.outputs(model, _fixed_samples(), settings)


def _safetensors_keys(folder: Path) -> set[str]:
    from safetensors import safe_open

    keys: set[str] = set()
    for file in folder.rglob("*.safetensors"):
        with safe_open(str(file), framework="pt") as fh:
            keys |= set(fh.keys())
    return keys


def test_zero3_run_exports_an_official_folder_with_the_trained_outputs(
    tmp_path: Path, tiny: Path, stores: DemoStores
) -> None:
    """``sgt-train export RUN --out OUT --raw`` after a ZeRO-3 run: ``sgt-models check OUT``
    passes and ``load_adapter(OUT)`` gives the trained model's loss, answers and images, exactly."""
    from sgt_train.cli import main

    result = fit(_config(tmp_path, tiny, stores, stage=3, steps=2, every=2))
    trained = result.model
    out = tmp_path / "export"
    assert main(["export", str(result.run_dir), "--out", str(out), "--raw"]) == 0
    for component in ("mllm", "processor", "scheduler", "transformer", "vae"):
        assert (out / component).is_dir(), component
    assert "OmniGen2" in family_fit.check(out)

    loaded = load_adapter(out)
    for (name, a), b in zip(
        trained.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    expected, got = _outputs(trained), _outputs(loaded)
    for key in ("total", "ce", "mse"):
        assert torch.equal(expected[key], got[key]), key
    assert expected["answer"] == got["answer"]
    np.testing.assert_array_equal(expected["t2i"], got["t2i"])
    np.testing.assert_array_equal(expected["seg"], got["seg"])
    # the run trained: the export is not the folder it started from
    start = _outputs(load_adapter(tiny))
    assert not torch.equal(start["total"], got["total"])


_LORA_WEIGHTS = tuple(f"{t}.weight" for t in ("to_q", "to_k", "to_v", "to_out.0"))


@pytest.mark.parametrize("lora_mllm", [False, True], ids=["dit-lora", "dit-and-llm-lora"])
def test_lora_run_exports_merged_weights_with_the_unmerged_outputs(
    tmp_path: Path, tiny: Path, stores: DemoStores, lora_mllm: bool
) -> None:
    """A LoRA run (ZeRO-2, fp32): the export folds the adapters into the official names, passes
    ``sgt-models check`` and reproduces the trained (unmerged) model within 1e-5."""
    extra = [
        "model.lora_rank=4",
        "model.lora_alpha=8",
        f"model.lora_mllm={str(lora_mllm).lower()}",
        "optimizer.lr=1e-2",  # deltas well above the 1e-5 the comparison allows
    ]
    result = fit(_config(tmp_path, tiny, stores, stage=2, steps=2, every=2, extra=extra))
    trained = result.model
    lora_b = {n: p for n, p in trained.named_parameters() if ".lora_B." in n}
    assert any(n.startswith("mllm.") for n in lora_b) == lora_mllm
    # trained away from B = 0, except the reference-image refiner: a segmentation sample's input
    # image never reaches the DiT as a latent
    for name, value in lora_b.items():
        assert bool(value.abs().max() > 0) != ("ref_image_refiner" in name), name

    out = export_run(result.run_dir, tmp_path / "export", ema=False)
    assert not any("lora" in k or "base_layer" in k for k in _safetensors_keys(out))
    family_fit.check(out)
    loaded = load_adapter(out)
    assert not any(".lora_" in n for n, _ in loaded.named_parameters())
    adapter_config = json.loads((out / "sgt_adapter.json").read_text())
    assert adapter_config["lora_rank"] is None
    # the DiT's attention projections carry the merged deltas; its other weights stayed frozen
    base = load_adapter(tiny).transformer.state_dict()
    merged = loaded.transformer.state_dict()
    assert merged.keys() == base.keys()
    for name, value in merged.items():
        delta = name.endswith(_LORA_WEIGHTS) and "ref_image_refiner" not in name
        assert torch.equal(value, base[name]) != delta, name

    expected, got = _outputs(trained), _outputs(loaded)
    for key in ("total", "ce", "mse"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=0)
    assert expected["answer"] == got["answer"]
    for key in ("t2i", "seg"):  # uint8 images: at most a rounding step apart
        diff = np.abs(expected[key].astype(np.int16) - got[key].astype(np.int16))
        assert diff.max() <= 1, key


# -- the worker of the two-process runs ----------------------------------------------------------


def _worker(argv: Sequence[str]) -> int:
    """``sgt-train`` with ``argv[1:]``; each rank writes its losses and final weights to ``argv[0]``."""
    return family_fit.run_cli_recording(argv)


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1:]))
