"""The reference model's ``question_film`` option: prompt-conditioned image tokens on understanding
rows only, identity at initialisation, gradients on every path, and a checkpoint round trip."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sgt_data import TaskKind
from sgt_models import ReferenceAdapterConfig
from sgt_models.reference import ReferenceAdapter
from sgt_models.testing import contract_samples

NO_DROPOUT = {"text_cond_dropout": 0.0, "uncond_dropout": 0.0}


def _model(film: bool) -> ReferenceAdapter:
    torch.manual_seed(0)
    return ReferenceAdapter(ReferenceAdapterConfig(size="tiny", question_film=film, **NO_DROPOUT))


def _perturb(model: ReferenceAdapter) -> None:
    assert model.question_film is not None
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.question_film.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)


def _image_rows(model: ReferenceAdapter, prompts: list[str], end: int) -> torch.Tensor:
    """LM input embeddings of one image under several prompts, rows ending in ``end``."""
    proc = model.processor
    rows = [proc.prompt_ids(text, True, end)[0] for text in prompts]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), proc.pad_id)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    image = torch.from_numpy(np.random.default_rng(0).random((1, 3, 64, 64), np.float32)) * 2 - 1
    with torch.no_grad():
        embeds = model._embed(ids, image.repeat(len(rows), 1, 1, 1))
    start = 2  # <bos> <vision_start>
    return embeds[:, start : start + proc.num_image_tokens]


def test_film_is_the_identity_at_initialisation() -> None:
    plain, film = _model(False), _model(True)
    batch = plain.collate(contract_samples())
    torch.manual_seed(3)
    a = plain.loss(batch)
    torch.manual_seed(3)
    b = film.loss(batch)
    assert float(a.total.detach()) == float(b.total.detach())
    assert film.question_film is not None
    connector = {id(p) for p in film.parameter_groups()["connector"]}
    assert all(id(p) in connector for p in film.question_film.parameters())


def test_understanding_image_tokens_depend_on_the_question_generative_ones_do_not() -> None:
    model = _model(True)
    _perturb(model)
    proc = model.processor
    prompts = ["Is there a circle in the image?", "Is there a star in the image?"]
    und = _image_rows(model, prompts, proc.answer_id)
    assert float((und[0] - und[1]).abs().max()) > 1e-3
    # a generative row's <bos> [image] prefix stays free of its instruction (CFG, dropout)
    gen = _image_rows(
        model, ["Segment the image.", "Draw the edges of the image."], proc.generate_id
    )
    torch.testing.assert_close(gen[0], gen[1], rtol=0, atol=0)
    plain = _image_rows(_model(False), ["Segment the image."], proc.generate_id)
    torch.testing.assert_close(gen[0], plain[0], rtol=0, atol=0)


def _film_grads(model: ReferenceAdapter, samples: list[Any]) -> list[torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    model.loss(model.collate(samples)).total.backward()
    assert model.question_film is not None
    return [p.grad for p in model.question_film.parameters()]


def test_film_gets_a_gradient_in_every_micro_batch() -> None:
    model = _model(True)
    _perturb(model)
    samples = contract_samples()
    und = [s for s in samples if s.task is TaskKind.UNDERSTANDING and s.image is not None]
    gen = [s for s in samples if s.task in (TaskKind.SEGMENTATION,)]
    t2i = [s for s in samples if s.task is TaskKind.TEXT_TO_IMAGE]
    assert und
    assert gen
    assert t2i
    grads = _film_grads(model, und)
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    # image rows without a question, and rows without images: zero gradients, not missing ones
    for batch in (gen, t2i):
        grads = _film_grads(model, batch)
        assert all(g is not None and float(g.abs().sum()) == 0.0 for g in grads)


def test_film_round_trips(tmp_path: Any) -> None:
    model = _model(True)
    _perturb(model)
    model.save_pretrained(tmp_path)
    loaded = ReferenceAdapter.from_pretrained(tmp_path)
    assert loaded.config.question_film
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    question = "Is there a circle in the image?"
    assert model.answer([image], [question], 4) == loaded.answer([image], [question], 4)
    a = _image_rows(model, [question], model.processor.answer_id)
    b = _image_rows(loaded, [question], loaded.processor.answer_id)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
