"""SGT's routing and gradient flow on OmniGen2: what reaches the MLLM and what reaches the DiT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sgt_data import Sample, TaskKind
from sgt_models import FreezePolicy, LossWeights, OmniGen2AdapterConfig
from sgt_models.omnigen2 import OmniGen2Adapter
from sgt_models.omnigen2.testing import write_tiny_omnigen2_folder
from sgt_models.testing import contract_samples

_CONTRACT = contract_samples(64)
_RNG = np.random.default_rng(7)


def _image(h: int = 64, w: int = 64) -> Any:
    return _RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _seg(i: int, h: int = 64, w: int = 64) -> Sample:
    return Sample(
        sample_id=f"t:seg-{i}",
        source="t",
        task=TaskKind.SEGMENTATION,
        instruction="Segment instances with different colors.",
        image=_image(h, w),
        target_image=_image(h, w),
    )


def _edit() -> Sample:
    return Sample(
        sample_id="t:edit-0",
        source="t",
        task=TaskKind.TEXT_TO_IMAGE,
        instruction="Draw a cat.",
        image=_image(),
        target_image=_image(),
    )


_VQA = _CONTRACT[0]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_omnigen2_folder(tmp_path_factory.mktemp("omnigen2") / "pipeline")


def _adapter(folder: Path, **kwargs: Any) -> OmniGen2Adapter:
    config = OmniGen2AdapterConfig(model_path=str(folder), max_output_pixels=64 * 64, **kwargs)
    return OmniGen2Adapter.from_config(config)


def _mllm_snapshot(adapter: OmniGen2Adapter) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter.mllm.state_dict().items()}


def _sgd_step(adapter: OmniGen2Adapter, samples: list[Sample], seed: int = 0) -> Any:
    optimizer = torch.optim.SGD([p for p in adapter.parameters() if p.requires_grad], lr=0.5)
    torch.manual_seed(seed)
    out = adapter.loss(adapter.collate(samples), LossWeights())
    out.total.backward()
    optimizer.step()
    return out


def _changed(before: dict[str, torch.Tensor], adapter: OmniGen2Adapter) -> list[str]:
    after = adapter.mllm.state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_generation_loss_trains_the_mllm_in_the_sgt_setting(tiny_folder: Path) -> None:
    adapter = _adapter(tiny_folder)
    before = _mllm_snapshot(adapter)
    out = _sgd_step(adapter, [_seg(0), _seg(1)])
    assert out.token_counts["ce"] == 0
    assert out.token_counts["mse"] > 0
    changed = _changed(before, adapter)
    assert any(k.startswith("model.language_model.layers.") for k in changed)
    assert any(k.startswith("model.visual.blocks.") for k in changed), "the image path trains"
    assert any(k.startswith("model.visual.merger.") for k in changed)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"detach_mllm": True},
        {"freeze": FreezePolicy(vision_encoder=True, connector=True, llm=True)},
    ],
    ids=["detach_mllm", "freeze_policy"],
)
def test_upstream_switches_keep_the_mllm_fixed(tiny_folder: Path, kwargs: Any) -> None:
    adapter = _adapter(tiny_folder, **kwargs)
    before = _mllm_snapshot(adapter)
    transformer_before = {k: v.clone() for k, v in adapter.transformer.state_dict().items()}
    _sgd_step(adapter, [_seg(0), _seg(1)])
    assert _changed(before, adapter) == []
    after = adapter.transformer.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in transformer_before.items())


def test_detached_mllm_still_gets_zero_gradients(tiny_folder: Path) -> None:
    # ZeRO-3: every trainable parameter needs a gradient in every micro-batch
    adapter = _adapter(tiny_folder, detach_mllm=True)
    torch.manual_seed(0)
    adapter.loss(adapter.collate([_seg(0)])).total.backward()
    for name, p in adapter.mllm.named_parameters():
        assert p.grad is not None, name
        assert not p.grad.any(), name


class _Recorder:
    """Records the reference latents and conditioning the DiT receives."""

    def __init__(self, adapter: OmniGen2Adapter) -> None:
        self.references: list[list[list[torch.Tensor]]] = []
        self.encoded: list[tuple[int, ...]] = []
        adapter.transformer.register_forward_pre_hook(self._dit, with_kwargs=True)
        original = adapter.vae.encode

        def encode(x: torch.Tensor, *args: Any, **kw: Any) -> Any:
            self.encoded.append(tuple(x.shape))
            return original(x, *args, **kw)

        adapter.vae.encode = encode

    def _dit(self, module: Any, args: Any, kwargs: Any) -> None:
        refs = args[5] if len(args) > 5 else kwargs.get("ref_image_hidden_states")
        self.references.append([list(r) for r in refs])


def test_a_segmentation_image_reaches_the_dit_only_through_the_mllm(tiny_folder: Path) -> None:
    adapter = _adapter(tiny_folder)
    batch = adapter.collate([_seg(0), _seg(1, 48, 80)])
    assert batch.pixel_values.shape[0] > 0
    assert batch.image_grid_thw.shape[0] == 2
    assert batch.references == [[], []]
    recorder = _Recorder(adapter)
    torch.manual_seed(0)
    adapter.loss(batch)
    assert recorder.references == [[[], []]], "the DiT got a reference latent"
    # the VAE encoded the two targets (64x64 and 48x80) and nothing else
    assert sorted(recorder.encoded) == [(1, 3, 48, 80), (1, 3, 64, 64)]
    # the image does condition the DiT (through the MLLM's hidden states)
    other = _seg(0)
    other = other.model_copy(update={"image": 255 - other.image})  # type: ignore[operator]
    torch.manual_seed(0)
    first = adapter.loss(adapter.collate([_seg(0)])).parts["mse"]
    torch.manual_seed(0)
    assert not torch.equal(first, adapter.loss(adapter.collate([other])).parts["mse"])


def test_an_editing_image_reaches_the_dit_as_a_reference_latent(tiny_folder: Path) -> None:
    adapter = _adapter(tiny_folder)
    batch = adapter.collate([_edit(), _seg(0)])
    assert [len(r) for r in batch.references] == [1, 0]
    assert batch.image_grid_thw.shape[0] == 1, (
        "upstream: the edit instruction reaches the MLLM as text"
    )
    recorder = _Recorder(adapter)
    torch.manual_seed(0)
    adapter.loss(batch)
    (call,) = recorder.references
    assert [len(r) for r in call] == [1, 0]
    assert tuple(call[0][0].shape) == (4, 8, 8)


def test_vae_reference_input_forces_the_latent_for_proxies(tiny_folder: Path) -> None:
    adapter = _adapter(tiny_folder, vae_reference_input=True)
    batch = adapter.collate([_seg(0)])
    assert [len(r) for r in batch.references] == [1]
    assert batch.image_grid_thw.shape[0] == 1, "and still through the MLLM"


@pytest.mark.parametrize(
    "samples",
    [
        [_seg(0), _seg(1)],
        [_VQA, _CONTRACT[2]],
        [_CONTRACT[3]],
        [_edit()],
        [_seg(0), _VQA, _edit(), _CONTRACT[3]],
    ],
    ids=["seg", "vqa", "t2i", "edit", "mixed"],
)
def test_every_trainable_parameter_gets_a_gradient(
    tiny_folder: Path, samples: list[Sample]
) -> None:
    adapter = _adapter(tiny_folder)
    torch.manual_seed(0)
    out = adapter.loss(adapter.collate(samples))
    out.total.backward()
    missing = [n for n, p in adapter.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(not p.requires_grad for p in adapter.vae.parameters())


def test_interleaved_and_mixed_micro_batches_train(tiny_folder: Path) -> None:
    adapter = _adapter(tiny_folder)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
    seg, seg2, vqa = [_seg(0), _seg(1)], [_seg(2), _seg(3)], [_VQA, _CONTRACT[2]]
    for step, micro_batches in enumerate([[seg, seg2, vqa], [seg + vqa[:1], vqa + seg2[:1]]]):
        optimizer.zero_grad()
        for k, samples in enumerate(micro_batches):
            torch.manual_seed(100 * step + k)
            out = adapter.loss(adapter.collate(samples))
            assert torch.isfinite(out.total)
            (out.total / len(micro_batches)).backward()
        optimizer.step()
    for group, params in adapter.parameter_groups().items():
        if group != "vae":
            assert all(p.grad is not None for p in params), group


def test_gradient_checkpointing_gives_the_same_gradients(tiny_folder: Path) -> None:
    plain, checkpointed = _adapter(tiny_folder), _adapter(tiny_folder, gradient_checkpointing=True)
    samples = [_seg(0), _VQA, _edit()]
    for adapter in (plain, checkpointed):
        torch.manual_seed(0)
        adapter.loss(adapter.collate(samples)).total.backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        if p.grad is not None:
            assert q.grad is not None, name
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)


def test_generate_routes_and_guidance_interval(tiny_folder: Path) -> None:
    from sgt_models import GenerationSettings

    adapter = _adapter(tiny_folder)
    image = [_CONTRACT[1].image]
    settings = GenerationSettings(num_steps=3, seed=2)
    proxy = adapter.generate(["Segment."], image, settings)[0]  # type: ignore[arg-type]
    edit = adapter.generate(["Segment."], image, settings, edit=True)[0]  # type: ignore[arg-type]
    assert proxy.shape == edit.shape == (64, 64, 3)
    assert not np.array_equal(proxy, edit)
    # guidance switched off by an interval no step falls in equals scales of 1
    outside = adapter.generate(["Draw."], None, settings, cfg_range=(2.0, 3.0))[0]
    unguided = GenerationSettings(num_steps=3, seed=2, cfg_text_scale=1.0, cfg_image_scale=1.0)
    assert np.array_equal(outside, adapter.generate(["Draw."], None, unguided)[0])
    assert not np.array_equal(outside, adapter.generate(["Draw."], None, settings)[0])
