"""Options of the reference model: the spatial_condition path (shapes, dropout, CFG, where the image
flows) and the convolutional vision stem."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sgt_data import TaskKind
from sgt_models import GenerationSettings, LossWeights, ReferenceAdapterConfig
from sgt_models.reference import ReferenceAdapter, ReferenceConfigError, configuration
from sgt_models.reference.modeling import ConvStem
from sgt_models.testing import contract_samples

NO_DROPOUT = {"text_cond_dropout": 0.0, "uncond_dropout": 0.0}


def _spatial(**overrides: Any) -> ReferenceAdapter:
    torch.manual_seed(0)
    config = ReferenceAdapterConfig(size="tiny", spatial_condition=True, **overrides)
    return ReferenceAdapter(config)


@pytest.fixture(scope="module")
def model() -> ReferenceAdapter:
    return _spatial(**NO_DROPOUT)


class _GeneratorInputs:
    """Records the generator's latent input ``(B, 2C, h, w)`` of every forward."""

    def __init__(self, adapter: ReferenceAdapter) -> None:
        self.inputs: list[torch.Tensor] = []
        self.channels = adapter.latent_channels
        self._handle = adapter.generator.register_forward_pre_hook(self._record)

    def _record(self, _module: object, args: tuple[Any, ...]) -> None:
        self.inputs.append(args[0].detach().clone())

    def references(self) -> list[torch.Tensor]:
        return [x[:, self.channels :] for x in self.inputs]

    def close(self) -> None:
        self._handle.remove()


def _seg_and_t2i() -> tuple[Any, Any]:
    samples = contract_samples()
    seg = next(s for s in samples if s.task is TaskKind.SEGMENTATION)
    t2i = next(s for s in samples if s.task is TaskKind.TEXT_TO_IMAGE)
    return seg, t2i


def test_reference_channels_and_shapes(model: ReferenceAdapter) -> None:
    assert model.generator.config.in_channels == 2 * model.latent_channels
    assert model.spatial_projection is not None
    grid = model.config.image_size // model.arch.vit_patch
    assert model.token_grid == grid
    assert model.spatial_upscale * model.latent_factor == model.arch.vit_patch
    hidden = torch.randn(3, 2 + grid * grid + 5, model.arch.lm_hidden)
    latent = model.config.image_size // model.latent_factor
    on = torch.tensor([True, False, True])
    with torch.no_grad():
        ref = model.spatial_reference(hidden, on, (latent, latent))
        resized = model.spatial_reference(hidden, on, (8, 12))
    assert ref.shape == (3, model.latent_channels, latent, latent)
    assert float(ref[1].abs().sum()) == 0.0
    assert float(ref[0].abs().sum()) > 0.0
    # another latent size (generation at another resolution) is a nearest resize of the map
    assert resized.shape[-2:] == (8, 12)
    images = model.generate(
        ["Segment the image."],
        images=[np.zeros((64, 64, 3), np.uint8)],
        settings=GenerationSettings(num_steps=2, seed=0),
    )
    assert images[0].shape == (64, 64, 3)
    assert images[0].dtype == np.uint8


def test_reference_is_the_projection_of_the_lm_states_at_the_image_tokens(
    model: ReferenceAdapter,
) -> None:
    """Token (r, c) of the image grid lands on latent block (r, c): a direct recomputation."""
    seg, t2i = _seg_and_t2i()
    batch = model.collate([seg, t2i])
    recorder = _GeneratorInputs(model)
    try:
        with torch.no_grad():
            torch.manual_seed(0)
            model.loss(batch)
            hidden = model._hidden(batch)
    finally:
        recorder.close()
    (reference,) = recorder.references()
    seg_row = [batch.tasks[i] for i in batch.gen_rows.tolist()].index("segmentation")
    row = int(batch.gen_rows[seg_row])
    grid, up, channels = model.token_grid, model.spatial_upscale, model.latent_channels
    assert model.spatial_projection is not None
    start = int((batch.input_ids[row] == model.processor.image_id).nonzero()[0])
    assert start == 2
    tokens = hidden[row, start : start + grid * grid]
    values = model.spatial_projection(tokens)  # (grid*grid, C*up*up)
    expected = torch.zeros(channels, grid * up, grid * up)
    for k in range(grid * grid):
        r, c = divmod(k, grid)
        block = values[k].reshape(channels, up, up)
        expected[:, r * up : (r + 1) * up, c * up : (c + 1) * up] = block
    torch.testing.assert_close(reference[seg_row], expected, rtol=1e-5, atol=1e-5)
    # the text-to-image row has no image: its reference is zero
    assert float(reference[1 - seg_row].abs().sum()) == 0.0


def test_dropped_condition_zeroes_the_reference() -> None:
    seg, _ = _seg_and_t2i()
    for overrides, zero in (
        ({"uncond_dropout": 1.0, "text_cond_dropout": 0.0}, True),  # every condition dropped
        ({"uncond_dropout": 0.0, "text_cond_dropout": 1.0}, False),  # text dropped, image kept
    ):
        adapter = _spatial(**overrides).train()
        recorder = _GeneratorInputs(adapter)
        try:
            torch.manual_seed(0)
            adapter.loss(adapter.collate([seg, seg]))
        finally:
            recorder.close()
        (reference,) = recorder.references()
        assert (float(reference.abs().sum()) == 0.0) is zero, overrides


def test_cfg_unconditional_branch_has_a_zero_reference(model: ReferenceAdapter) -> None:
    seg, _ = _seg_and_t2i()
    recorder = _GeneratorInputs(model)
    try:
        model.generate(
            ["Segment the image."],
            images=[seg.image],
            settings=GenerationSettings(
                num_steps=1, seed=0, cfg_text_scale=4.0, cfg_image_scale=2.0
            ),
        )
    finally:
        recorder.close()
    (reference,) = recorder.references()
    full, null, image_only = reference.chunk(3)
    assert float(full.abs().sum()) > 0.0
    assert float(null.abs().sum()) == 0.0
    torch.testing.assert_close(image_only, full)


def test_image_reaches_the_generator_only_through_the_encoder_and_lm(
    model: ReferenceAdapter,
) -> None:
    """With the LM's output replaced by a constant, two different images give the same input."""
    seg, _ = _seg_and_t2i()
    other = seg.model_copy(update={"image": 255 - seg.image})

    def constant(_module: object, _args: object, out: Any) -> Any:
        out.last_hidden_state = torch.ones_like(out.last_hidden_state)
        return out

    seen = []
    handle = model.llm.model.register_forward_hook(constant)
    try:
        for sample in (seg, other):
            recorder = _GeneratorInputs(model)
            try:
                with torch.no_grad():
                    torch.manual_seed(0)
                    model.loss(model.collate([sample]))
            finally:
                recorder.close()
            seen.append(recorder.inputs[0])
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)
    # without the hook the two images give different inputs, and the mse alone trains the encoder
    model.zero_grad()
    torch.manual_seed(0)
    out = model.loss(model.collate([seg]), LossWeights(ce=0.0))
    out.total.backward()
    grads = [p.grad for p in model.vision_encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert model.spatial_projection is not None
    assert model.spatial_projection.weight.grad is not None
    assert float(model.spatial_projection.weight.grad.abs().sum()) > 0
    model.zero_grad()


def test_every_parameter_gets_a_gradient_without_generative_rows(model: ReferenceAdapter) -> None:
    und = [s for s in contract_samples() if s.task is TaskKind.UNDERSTANDING]
    model.zero_grad()
    torch.manual_seed(0)
    model.loss(model.collate(und)).total.backward()
    assert model.spatial_projection is not None
    grad = model.spatial_projection.weight.grad
    assert grad is not None
    assert float(grad.abs().sum()) == 0.0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert any(p is model.spatial_projection.weight for p in model.parameter_groups()["generator"])
    model.zero_grad()


def test_save_and_load_round_trip(model: ReferenceAdapter, tmp_path: Any) -> None:
    model.save_pretrained(tmp_path)
    loaded = ReferenceAdapter.from_pretrained(tmp_path)
    assert loaded.config.spatial_condition
    seg, _ = _seg_and_t2i()
    settings = GenerationSettings(num_steps=2, seed=3)
    a = model.generate(["Segment the image."], images=[seg.image], settings=settings)
    b = loaded.generate(["Segment the image."], images=[seg.image], settings=settings)
    np.testing.assert_array_equal(a[0], b[0])


def test_spatial_and_vae_reference_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="spatial_condition and vae_reference_input"):
        ReferenceAdapterConfig(spatial_condition=True, vae_reference_input=True)


def test_token_grid_must_divide_the_latent_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = configuration.architecture_for("tiny")
    odd = dataclasses.replace(tiny, vit_patch=4, pixel_patch=8)
    monkeypatch.setitem(configuration._PRESETS, "tiny", odd)
    with pytest.raises(ReferenceConfigError, match="spatial_condition needs the vision patch"):
        ReferenceAdapter(ReferenceAdapterConfig(size="tiny", spatial_condition=True))


def test_default_keeps_the_caption_only_path() -> None:
    torch.manual_seed(0)
    adapter = ReferenceAdapter(ReferenceAdapterConfig(size="tiny"))
    assert adapter.spatial_projection is None
    assert adapter.generator.config.in_channels == adapter.latent_channels
    with pytest.raises(ValueError, match="spatial_condition=True"):
        adapter.spatial_reference(torch.zeros(1, 4, 64), torch.ones(1, dtype=torch.bool), (4, 4))


# -- vision_stem="conv" ---------------------------------------------------------------------------


def test_conv_stem_replaces_the_patch_embedding_with_the_same_token_grid() -> None:
    torch.manual_seed(0)
    adapter = ReferenceAdapter(ReferenceAdapterConfig(size="tiny", vision_stem="conv"))
    stem = adapter.vision_encoder.embeddings.patch_embedding
    assert isinstance(stem, ConvStem)
    grid = adapter.config.image_size // adapter.arch.vit_patch
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        tokens = stem(pixels)
        features = adapter.vision_encoder(pixel_values=pixels).last_hidden_state
    assert tokens.shape == (2, adapter.arch.vit_hidden, grid, grid)
    assert features.shape == (2, grid * grid, adapter.arch.vit_hidden)
    # the stem is translation-equivariant on the token grid: a shift by one patch moves the
    # features by one token (at least 2 tokens, the receptive radius, from the borders and the seam)
    patch = adapter.arch.vit_patch
    shifted = torch.roll(pixels, shifts=patch, dims=3)
    with torch.no_grad():
        moved = stem(shifted)
    torch.testing.assert_close(moved[..., 3:6], tokens[..., 2:5], rtol=1e-5, atol=1e-5)


def test_conv_stem_trains_and_round_trips(tmp_path: Any) -> None:
    torch.manual_seed(0)
    adapter = ReferenceAdapter(ReferenceAdapterConfig(size="tiny", vision_stem="conv"))
    und = [s for s in contract_samples() if s.task is TaskKind.UNDERSTANDING]
    adapter.zero_grad()
    torch.manual_seed(0)
    adapter.loss(adapter.collate(und)).total.backward()
    stem = adapter.vision_encoder.embeddings.patch_embedding
    grads = [p.grad for p in stem.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    adapter.save_pretrained(tmp_path)
    loaded = ReferenceAdapter.from_pretrained(tmp_path)
    image = und[0].image
    assert image is not None
    a = adapter.answer([image], ["What is in the image?"], max_new_tokens=4)
    b = loaded.answer([image], ["What is in the image?"], max_new_tokens=4)
    assert a == b


def test_conv_stem_needs_a_power_of_two_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = configuration.architecture_for("tiny")
    monkeypatch.setitem(configuration._PRESETS, "tiny", dataclasses.replace(tiny, vit_patch=12))
    with pytest.raises(ReferenceConfigError, match="must be a power of 2"):
        ReferenceAdapter(ReferenceAdapterConfig(size="tiny", image_size=48, vision_stem="conv"))
