"""The ``bagel-sgt`` recipe on a tiny random BAGEL folder, on the CPU.

``sgt-train fit bagel-sgt --set model.model_path=TINY ...`` trains in two gloo processes under
ZeRO-2 and ZeRO-3 on real stores (the demo's scene world: segmentation and VQA mixed within each
packed micro-batch, 2:1), with packs filled to the token budget; a run stopped by SIGTERM and
resumed (mid-draw of the mixture) reproduces the uninterrupted run bit for bit; ``sgt-train
export`` writes an official-layout folder that ``sgt-models check`` accepts and that loads back
into the trained model's outputs, with LoRA merged in.

The file doubles as the worker of the two-process runs (``python -m torch.distributed.run ...
test_bagel_fit.py OUT fit bagel-sgt --set ...``): it runs ``sgt-train``'s own ``main`` and records
what each rank ended with and the packs it trained on.
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
from sgt_models.bagel.testing import TINY_ADAPTER_SETTINGS, write_tiny_bagel_folder
from sgt_models.registry import load_adapter
from sgt_models.testing import contract_samples
from sgt_train._preflight import load_cli_config
from sgt_train.checkpoint import load_rank_state
from sgt_train.config import RunConfig
from sgt_train.demo.stores import DemoStores, build_stores
from sgt_train.export import export_run
from sgt_train.loop import fit

#: The token budget of a pack. A demo sample takes 44-85 tokens at the tiny sizes (28 px ViT
#: input, 32 px VAE maps: 6 tokens per image, the rest is text), so a pack holds 2 to 4 samples
#: and its boundaries fall inside the mixture's draws of 3 (micro_batch_size) samples.
_EXPECTED_TOKENS, _MAX_TOKENS = 180, 250


# -- shared set-up -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bagel_folder(tmp_path_factory.mktemp("bagel") / "BAGEL-7B-MoT")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> DemoStores:
    return build_stores(tmp_path_factory.mktemp("data"), num_train=8, num_eval=1, seed=0)


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
    """The recipe at CPU scale: fp32, tiny images, a ~200-token budget, real stores."""
    sizes = ("vit_image_size", "vit_min_size", "vae_min_size", "vae_max_size")
    return [
        f"output_dir={out}",
        f"model.model_path={tiny}",
        "model.dtype=float32",
        "precision=fp32",
        *(f"model.{key}={TINY_ADAPTER_SETTINGS[key]}" for key in sizes),
        f"model.expected_num_tokens={_EXPECTED_TOKENS}",
        f"model.max_num_tokens={_MAX_TOKENS}",
        f"data.sources.0.store={stores.scenes}",
        f"data.sources.1.store={stores.vqa}",
        "micro_batch_size=3",  # the mixture's draw: [seg, vqa, seg]
        f"steps={steps}",
        "schedule.warmup_steps=1",
        "optimizer.lr=1e-3",  # the recipe's 1e-4 would hardly move a tiny model in a few steps
        f"zero.stage={stage}",
        "num_workers=0",
        "checkpoint.save_after=0",
        f"checkpoint.every={every}",
        "logging.every=1",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        *extra,
    ]


def _config(out: Path, tiny: Path, stores: DemoStores, **kwargs: Any) -> RunConfig:
    return load_cli_config("bagel-sgt", _overrides(out, tiny, stores, **kwargs))


def _torchrun_fit(out: Path, overrides: Sequence[str]) -> None:
    family_fit.torchrun_fit(__file__, out, "bagel-sgt", overrides)


def test_recipe_trains_in_two_processes_under_zero2_and_zero3(
    tmp_path: Path, tiny: Path, stores: DemoStores
) -> None:
    """Both ranks end with the same weights, every step logs finite CE and MSE, each rank's
    packs respect the token budget and hold varying sample counts, checkpoints are written by
    both ranks, and ZeRO-3 trains what ZeRO-2 trains (same data, same seeds)."""
    losses: dict[int, list[float]] = {}
    packs: dict[int, list[list[list[int]]]] = {}
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

        # packs: [tokens, samples] per micro-batch and rank, filled to the budget
        rank_packs = [r["packs"] for r in results]
        for rank_pack in rank_packs:
            assert len(rank_pack) == 3  # one micro-batch per step (gradient_accumulation 1)
            for tokens, _ in rank_pack:
                assert tokens <= _MAX_TOKENS
            assert sum(tokens >= _EXPECTED_TOKENS for tokens, _ in rank_pack) >= 2
        counts = [n for rank_pack in rank_packs for _, n in rank_pack]
        assert len(set(counts)) > 1, counts  # the budget decides, not a fixed sample count

        run = out / "bagel-sgt"
        rows = family_fit.rows(run)
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows), rows
        for row in rows:  # every pack mixes both tasks: both losses, every step
            for key in ("ce", "mse", "segmentation/mse", "understanding/ce"):
                assert math.isfinite(row[key]), (key, row)
                assert row[key] > 0, (key, row)
        per_step = [rank_packs[0][i][1] + rank_packs[1][i][1] for i in range(3)]
        assert [r["samples"] for r in rows] == np.cumsum(per_step).tolist()
        assert [r["loss"] for r in rows] == results[0]["losses"]
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert names == ["step_00000002", "step_00000003"]
        last = run / "checkpoints/step_00000003"
        state = json.loads((last / "trainer_state.json").read_text())
        assert state["world_size"] == 2
        shards = sorted(p.name for p in (last / "ds").glob("*optim*"))
        assert len(shards) == 2, shards  # one optimizer partition written by each rank
        assert sorted(p.name for p in last.glob("rank_*")) == ["rank_00000.json", "rank_00001.json"]
        losses[stage] = results[0]["losses"]
        packs[stage] = rank_packs
    assert packs[3] == packs[2]  # the same data
    np.testing.assert_allclose(losses[3], losses[2], rtol=1e-5, atol=0)


# -- SIGTERM and resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [2, 3], ids=["zero2", "zero3"])
def test_sigterm_and_resume_are_bit_identical(
    tmp_path: Path, tiny: Path, stores: DemoStores, stage: int
) -> None:
    """The real adapter from the folder (the default builder), packed to the token budget:
    stopped by SIGTERM after step 2, inside a mixture draw, and resumed, a run logs the
    uninterrupted run's losses and ends with its weights and EMA, exactly."""

    def config(out: Path) -> RunConfig:
        return _config(out, tiny, stores, stage=stage, steps=4, every=4)

    full = fit(config(tmp_path / "full"))
    first = fit(config(tmp_path / "split"), hooks=family_fit.sigterm_at(2))
    assert first.preempted
    assert first.last_checkpoint is not None
    assert first.last_checkpoint.name == "step_00000002"
    position = load_rank_state(first.last_checkpoint, 0)["source"]
    assert position["consumed"] > 0  # the resume lands inside a mixture draw
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
    ema = [
        torch.load(r.run_dir / "checkpoints/step_00000004/ema.pt", weights_only=False)["shadow"]
        for r in (full, resumed)
    ]
    assert ema[0].keys() == ema[1].keys()
    for name, value in ema[0].items():
        assert torch.equal(value, ema[1][name]), name
    rows = family_fit.rows(resumed.run_dir)
    assert [r["loss"] for r in rows] == full.losses
    assert all("segmentation/mse" in r and "understanding/ce" in r for r in rows), rows
    steps = np.diff([0] + [r["samples"] for r in rows]).tolist()
    assert len(set(steps)) > 1, steps  # packs of varying sample counts


# -- export ----------------------------------------------------------------------------------------


def _fixed_samples() -> list[Sample]:
    und, seg, *_ = contract_samples(32, seed=3)
    return [und, seg, seg]


def _outputs(model: Any) -> dict[str, Any]:
    settings = GenerationSettings(num_steps=2, height=32, width=32, seed=5)
    return family_fit.outputs(model, _fixed_samples(), settings)


def _safetensors_keys(folder: Path) -> dict[str, set[str]]:
    from safetensors import safe_open

    keys: dict[str, set[str]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            keys[file.name] = set(fh.keys())
    return keys


def test_zero3_run_exports_an_official_folder_with_the_trained_outputs(
    tmp_path: Path, tiny: Path, stores: DemoStores
) -> None:
    """``sgt-train export RUN --out OUT --raw`` after a ZeRO-3 run: ``sgt-models check OUT``
    passes, the folder has the official files and key names, and ``load_adapter(OUT)`` gives
    the trained model's loss, answers and images, exactly."""
    from sgt_train.cli import main

    result = fit(_config(tmp_path, tiny, stores, stage=3, steps=2, every=2))
    trained = result.model
    out = tmp_path / "export"
    assert main(["export", str(result.run_dir), "--out", str(out), "--raw"]) == 0
    for name in ("llm_config.json", "vit_config.json", "config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    keys = _safetensors_keys(out)
    assert keys["ema.safetensors"] == _safetensors_keys(tiny)["ema.safetensors"]
    assert keys["ae.safetensors"] == _safetensors_keys(tiny)["ae.safetensors"]
    assert "BAGEL" in family_fit.check(out)

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


@pytest.mark.parametrize("target", ["generation", "both"])
def test_lora_run_exports_merged_weights_with_the_unmerged_outputs(
    tmp_path: Path, tiny: Path, stores: DemoStores, target: str
) -> None:
    """A LoRA run (ZeRO-2, fp32): the export folds the adapters into the official names, passes
    ``sgt-models check`` and reproduces the trained (unmerged) model within 1e-5; the EMA export
    (the default, shadow weights under LoRA names) also merges and passes the check."""
    extra = ["model.lora_rank=4", "model.lora_alpha=8", f"model.lora_target={target}"]
    result = fit(_config(tmp_path, tiny, stores, stage=2, steps=2, every=2, extra=extra))
    trained = result.model
    lora_b = {n: p for n, p in trained.named_parameters() if ".lora_B." in n}
    assert lora_b
    assert all(p.requires_grad for p in lora_b.values())
    assert any("_moe_gen" in n for n in lora_b)
    assert any("_moe_gen" not in n for n in lora_b) == (target == "both")
    assert all(p.abs().max() > 0 for p in lora_b.values())  # trained away from B = 0
    assert not any(
        p.requires_grad for n, p in trained.named_parameters() if "lora_" not in n
    )  # only the adapters train

    official = _safetensors_keys(tiny)
    raw = export_run(result.run_dir, tmp_path / "raw", ema=False)
    assert _safetensors_keys(raw) == {**official, "model.safetensors": official["ema.safetensors"]}
    family_fit.check(raw)
    loaded = load_adapter(raw)
    assert not any(".lora_" in n for n, _ in loaded.named_parameters())
    assert json.loads((raw / "sgt_adapter.json").read_text())["lora_rank"] is None

    expected, got = _outputs(trained), _outputs(loaded)
    for key in ("total", "ce", "mse"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=0)
    assert expected["answer"] == got["answer"]
    for key in ("t2i", "seg"):  # uint8 images: at most a rounding step apart
        diff = np.abs(expected[key].astype(np.int16) - got[key].astype(np.int16))
        assert diff.max() <= 1, key

    ema = export_run(result.run_dir, tmp_path / "ema")  # EMA 0.9999: close to the start
    family_fit.check(ema)
    ema_model = load_adapter(ema)
    base, raw_state = load_adapter(tiny).state_dict(), loaded.state_dict()
    for name, value in ema_model.state_dict().items():
        if name in ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed"):
            continue
        if torch.equal(raw_state[name], base[name]):  # untouched by LoRA: as loaded
            assert torch.equal(value, base[name]), name
        else:  # merged EMA adapters: between the start and the trained weights
            assert not torch.equal(value, raw_state[name]), name


# -- the worker of the two-process runs ----------------------------------------------------------


def _worker(argv: Sequence[str]) -> int:
    """``sgt-train`` with ``argv[1:]``; each rank writes its losses, its packs (tokens, samples)
    and final weights to ``argv[0]``."""
    from sgt_models.bagel.modeling import BagelAdapter

    collate = BagelAdapter.collate
    packs: list[list[int]] = []

    def recording_collate(self: BagelAdapter, samples: Sequence[Any], **kwargs: Any) -> Any:
        batch = collate(self, samples, **kwargs)
        packs.append([batch.sequence_length, batch.num_samples])
        return batch

    BagelAdapter.collate = recording_collate  # type: ignore[method-assign]
    return family_fit.run_cli_recording(argv, extra=lambda: {"packs": packs})


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1:]))
