"""Behaviour of the reference model beyond the contract: training, SGT routing, tokenizer, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgt_data import Sample, TaskKind
from sgt_models import LossWeights, ReferenceAdapterConfig
from sgt_models.reference import (
    SPECIAL_TOKENS,
    ReferenceAdapter,
    ReferenceCheckpointError,
    ReferenceConfigError,
    architecture_for,
    build_tokenizer,
)
from sgt_models.testing import contract_samples

NO_DROPOUT = {"text_cond_dropout": 0.0, "uncond_dropout": 0.0}


@pytest.fixture(scope="module")
def model() -> ReferenceAdapter:
    torch.manual_seed(0)
    return ReferenceAdapter(ReferenceAdapterConfig(size="tiny", **NO_DROPOUT))


def _mean_parts(adapter: ReferenceAdapter, batch: object, seeds: range) -> tuple[float, float]:
    ce, mse = 0.0, 0.0
    with torch.no_grad():
        for seed in seeds:
            torch.manual_seed(seed)
            out = adapter.loss(batch)  # type: ignore[arg-type]
            ce += float(out.parts["ce"]) / len(seeds)
            mse += float(out.parts["mse"]) / len(seeds)
    return ce, mse


def test_tiny_model_overfits_a_fixed_batch() -> None:
    """60 AdamW steps on 2 understanding + 2 segmentation samples: ce falls >= 20x, mse >= 3x."""
    torch.manual_seed(0)
    adapter = ReferenceAdapter(ReferenceAdapterConfig(size="tiny", **NO_DROPOUT))
    samples = contract_samples(seed=0)[:2] + contract_samples(seed=1)[:2]
    assert [s.task for s in samples] == [TaskKind.UNDERSTANDING, TaskKind.SEGMENTATION] * 2
    batch = adapter.collate(samples)
    ce0, mse0 = _mean_parts(adapter, batch, range(1000, 1004))
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=5e-3)
    for step in range(60):
        torch.manual_seed(step)
        out = adapter(batch)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
    ce1, mse1 = _mean_parts(adapter, batch, range(1000, 1004))
    assert ce1 < ce0 / 20, (ce0, ce1)
    assert mse1 < mse0 / 3, (mse0, mse1)


def test_segmentation_input_reaches_the_generator_only_through_the_understanding_encoder(
    model: ReferenceAdapter,
) -> None:
    assert model.generator.config.in_channels == model.latent_channels  # no VAE reference input
    seg = [s for s in contract_samples() if s.task is TaskKind.SEGMENTATION]
    other = seg[0].model_copy(update={"image": 255 - seg[0].image})  # type: ignore[operator]
    losses = []
    for samples in (seg, [other]):
        adapter = model
        adapter.zero_grad()
        torch.manual_seed(0)
        out = adapter.loss(adapter.collate(samples), LossWeights(ce=0.0))
        out.total.backward()
        losses.append(float(out.parts["mse"].detach()))
        grads = [p.grad for p in adapter.vision_encoder.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert losses[0] != losses[1], "the generator ignores the input image"
    model.zero_grad()


def test_vae_reference_input_doubles_the_generator_input() -> None:
    torch.manual_seed(0)
    adapter = ReferenceAdapter(ReferenceAdapterConfig(size="tiny", vae_reference_input=True))
    assert adapter.generator.config.in_channels == 2 * adapter.latent_channels
    batch = adapter.collate(contract_samples())
    assert batch.reference_pixels is not None
    # the text-to-image row (no input image) gets an all-zero reference
    t2i = [batch.tasks[i] for i in batch.gen_rows.tolist()].index("text_to_image")
    assert float(batch.reference_pixels[t2i].abs().sum()) == 0.0
    assert float(batch.reference_pixels[1 - t2i].abs().sum()) > 0.0


def test_text_free_condition_is_the_prefix_of_the_row(model: ReferenceAdapter) -> None:
    """Dropping the text (training) equals running the LM on ``<bos> [image]`` alone (CFG)."""
    sample = contract_samples()[1]
    batch = model.collate([sample])
    prefix = int(batch.cond_prefix[0])
    assert int(batch.input_ids[0, prefix - 1]) == model.processor.vision_end_id
    with torch.no_grad():
        full = model._hidden(batch)
        short = batch.to("cpu")
        short.input_ids = batch.input_ids[:, :prefix]
        short.attention_mask = batch.attention_mask[:, :prefix]
        alone = model._hidden(short)
    torch.testing.assert_close(full[:, :prefix], alone, rtol=1e-5, atol=1e-5)


def test_answer_with_kv_cache_equals_greedy_recomputation(model: ReferenceAdapter) -> None:
    sample = contract_samples()[0]
    assert sample.image is not None
    proc = model.processor
    ids, _ = proc.prompt_ids("What is it?", True, proc.answer_id)
    pixels = model.collate([sample]).pixel_values
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(6):
            input_ids = torch.tensor([ids + generated])
            logits = model.llm(inputs_embeds=model._embed(input_ids, pixels)).logits
            token = int(logits[0, -1].argmax())
            if token == proc.eos_id:
                break
            generated.append(token)
    assert model.answer([sample.image], ["What is it?"], max_new_tokens=6) == [
        proc.decode(generated)
    ]


def test_collate_layout_and_labels(model: ReferenceAdapter) -> None:
    samples = contract_samples()
    batch = model.collate(samples)
    proc = model.processor
    n_img = (64 // architecture_for("tiny").vit_patch) ** 2
    assert int((batch.input_ids == proc.image_id).sum()) == 3 * n_img
    assert batch.pixel_values.shape == (3, 3, 64, 64)
    assert batch.gen_rows.tolist() == [1, 3]
    # labels are exactly the answer tokens plus <eos>, only on understanding rows
    answer = [*proc.encode_text("a red cube on a table"), proc.eos_id]
    assert batch.labels[0][batch.labels[0] != -100].tolist() == answer
    assert bool((batch.labels[[1, 3]] == -100).all())
    assert int(batch.cond_prefix[3]) == 1  # text-to-image: no image, the prefix is <bos>


def test_tokenizer_is_deterministic_and_round_trips() -> None:
    a, b = build_tokenizer(512), build_tokenizer(512)
    assert a.to_str() == b.to_str()
    assert [a.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    text = "Segment instances with different colors. Zebra? 42 — ünïcode"
    assert a.decode(a.encode(text).ids) == text
    # corpus words compress (13 tokens for 40 bytes; the scene words take some merges), unseen
    # bytes still encode
    assert len(a.encode("Segment instances with different colors.").ids) <= 13


@pytest.mark.parametrize("vocab_size", [512, 4096])
def test_tokenizer_keeps_each_scene_word_whole(vocab_size: int) -> None:
    # a class word split over several pieces cannot be matched against the image at one position
    from sgt_data.scenes import SCENE_CLASSES, SCENE_COLORS

    tok = build_tokenizer(vocab_size)
    words = [*SCENE_CLASSES, *(f"{c}s" for c in SCENE_CLASSES), *SCENE_COLORS]
    for word in words:
        pieces = tok.encode(f"Is there a {word} in the image?").tokens
        assert f"\u0120{word}" in pieces, (word, pieces)


def test_bfloat16_config_trains() -> None:
    torch.manual_seed(0)
    adapter = ReferenceAdapter(ReferenceAdapterConfig(size="tiny", dtype="bfloat16"))
    assert adapter.llm.lm_head.weight.dtype == torch.bfloat16
    out = adapter.loss(adapter.collate(contract_samples()))
    out.total.backward()
    assert torch.isfinite(out.total)
    assert out.parts["ce"].dtype == torch.float32


def test_small_preset_has_about_100m_parameters() -> None:
    with torch.device("meta"):
        adapter = ReferenceAdapter(ReferenceAdapterConfig(size="small", image_size=256))
    total = sum(p.numel() for p in adapter.parameters())
    assert 80e6 < total < 130e6, total


def test_indivisible_image_size_is_rejected() -> None:
    with pytest.raises(
        ReferenceConfigError, match=r"image_size=60 .* multiple of the vision patch"
    ):
        ReferenceAdapter(ReferenceAdapterConfig(size="tiny", image_size=60))


def test_missing_vae_folder_is_named(tmp_path: object) -> None:
    with pytest.raises(ReferenceCheckpointError, match=r"nowhere.*missing"):
        ReferenceAdapter(
            ReferenceAdapterConfig(latent_source="vae", vae_path=f"{tmp_path}/nowhere")
        )


def test_missing_checkpoint_file_is_named(model: ReferenceAdapter, tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    model.save_pretrained(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ReferenceCheckpointError, match=r"tokenizer\.json is missing"):
        ReferenceAdapter.from_pretrained(folder)


def test_bad_images_are_rejected(model: ReferenceAdapter) -> None:
    gray = np.zeros((64, 64), dtype=np.uint8)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        model.answer([gray], ["What?"])
    with pytest.raises(ValueError, match="empty list"):
        model.collate([])


def test_understanding_sample_without_image_is_text_only(model: ReferenceAdapter) -> None:
    sample = Sample(
        sample_id="x", source="t", task=TaskKind.UNDERSTANDING, instruction="Hi?", answer="yes"
    )
    batch = model.collate([sample, contract_samples()[0]])
    assert batch.has_image.tolist() == [False, True]
    assert batch.pixel_values.shape[0] == 1
    torch.manual_seed(0)
    assert torch.isfinite(model.loss(batch).total)


def test_read_only_images_are_accepted_without_a_warning() -> None:
    """Images read from a store may be read-only; the processor must copy, not alias, them."""
    import warnings

    import numpy as np

    from sgt_models.reference.processor import images_to_tensor

    image = np.full((8, 8, 3), 255, np.uint8)
    image.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = images_to_tensor([image], (8, 8))
    assert tuple(tensor.shape) == (1, 3, 8, 8)
    assert float(tensor.min()) == 1.0
