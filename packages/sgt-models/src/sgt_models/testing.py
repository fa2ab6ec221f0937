"""The contract-test suite every adapter runs (collected by pytest; this module does not import it).

Use it by subclassing in a test module and providing a fixture ``adapter_factory``::

    class TestMyAdapter(AdapterContract):
        @pytest.fixture
        def adapter_factory(self) -> AdapterFactory:
            return lambda freeze=None: build_my_adapter(seed=0, freeze=freeze)

The factory returns a freshly initialised adapter (same weights every call) with ``config.freeze``
set to ``freeze`` when one is given. The suite drives it with ``contract_samples``: a mixed batch of
understanding, segmentation and text-to-image samples at ``image_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from sgt_data import Sample, TaskKind
from sgt_models.config import FreezePolicy
from sgt_models.protocol import (
    PARAMETER_GROUPS,
    GenerationSettings,
    LossOutput,
    LossWeights,
    ModelBatch,
    UnifiedModelAdapter,
)

__all__ = ["AdapterContract", "AdapterFactory", "contract_samples"]

#: Builds a fresh adapter (deterministic weights), optionally with a freeze policy.
AdapterFactory = Callable[[FreezePolicy | None], Any]

_TRAINABLE_GROUPS = ("vision_encoder", "connector", "llm", "generator")


def contract_samples(image_size: int = 64, seed: int = 0) -> list[Sample]:
    """Understanding, segmentation and text-to-image samples with random images (deterministic)."""
    rng = np.random.default_rng(seed)

    def image() -> np.ndarray[Any, np.dtype[np.uint8]]:
        return rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)

    def palette_map() -> np.ndarray[Any, np.dtype[np.uint8]]:
        colours = rng.integers(0, 256, (4, 3), dtype=np.uint8)
        labels = rng.integers(0, 4, (image_size // 8, image_size // 8))
        blocks: np.ndarray[Any, np.dtype[np.uint8]] = colours[
            np.kron(labels, np.ones((8, 8), dtype=np.int64))
        ]
        return blocks

    return [
        Sample(
            sample_id="contract:und-0",
            source="contract",
            task=TaskKind.UNDERSTANDING,
            instruction="What is in the image?",
            image=image(),
            answer="a red cube on a table",
        ),
        Sample(
            sample_id="contract:seg-0",
            source="contract",
            task=TaskKind.SEGMENTATION,
            task_variant="instance",
            instruction="Segment instances with different colors.",
            image=image(),
            target_image=palette_map(),
        ),
        Sample(
            sample_id="contract:und-1",
            source="contract",
            task=TaskKind.UNDERSTANDING,
            instruction="How many objects are there?",
            image=image(),
            answer="two",
        ),
        Sample(
            sample_id="contract:t2i-0",
            source="contract",
            task=TaskKind.TEXT_TO_IMAGE,
            instruction="Generate an image of a blue sphere.",
            target_image=image(),
        ),
    ]


def _seeded_loss(
    adapter: Any, batch: Any, seed: int, weights: LossWeights | None = None
) -> LossOutput:
    torch.manual_seed(seed)
    out: LossOutput = adapter.loss(batch, weights if weights is not None else LossWeights())
    return out


class AdapterContract:
    """What every adapter guarantees; subclass it and provide the ``adapter_factory`` fixture."""

    image_size: ClassVar[int] = 64

    def _samples(self) -> list[Sample]:
        return contract_samples(self.image_size)

    def test_satisfies_the_protocol(self, adapter_factory: AdapterFactory) -> None:
        adapter = adapter_factory(None)
        assert isinstance(adapter, torch.nn.Module)
        assert isinstance(adapter, UnifiedModelAdapter)
        assert adapter.config.kind == adapter.kind

    def test_collate_reports_rows_and_tasks(self, adapter_factory: AdapterFactory) -> None:
        adapter = adapter_factory(None)
        samples = self._samples()
        batch = adapter.collate(samples)
        assert isinstance(batch, ModelBatch)
        assert batch.num_samples == len(samples)
        assert list(batch.tasks) == [s.task.value for s in samples]

    def test_mixed_loss_has_finite_named_parts_and_token_counts(
        self, adapter_factory: AdapterFactory
    ) -> None:
        adapter = adapter_factory(None)
        out = _seeded_loss(adapter, adapter.collate(self._samples()), 0)
        assert set(out.parts) == {"ce", "mse"}
        for name in ("ce", "mse"):
            value = float(out.parts[name].detach())
            assert math.isfinite(value), (name, value)
            assert value > 0, (name, value)
            assert out.token_counts[name] > 0, name
        assert torch.isfinite(out.total)
        assert out.total.requires_grad
        assert set(out.per_task) == {"understanding", "segmentation", "text_to_image"}
        assert "ce" in out.per_task["understanding"]
        assert "mse" in out.per_task["segmentation"]

    def test_total_is_the_weighted_sum_of_parts(self, adapter_factory: AdapterFactory) -> None:
        adapter = adapter_factory(None)
        batch = adapter.collate(self._samples())
        weights = LossWeights(ce=1.5, mse=0.25)
        out = _seeded_loss(adapter, batch, 3, weights)
        expected = 1.5 * out.parts["ce"] + 0.25 * out.parts["mse"]
        torch.testing.assert_close(out.total, expected, rtol=1e-6, atol=1e-6)

    def test_forward_without_weights_equals_loss(self, adapter_factory: AdapterFactory) -> None:
        adapter = adapter_factory(None)
        batch = adapter.collate(self._samples())
        torch.manual_seed(5)
        via_forward = adapter(batch)
        via_loss = _seeded_loss(adapter, batch, 5)
        assert torch.equal(via_forward.total, via_loss.total)

    def test_fixed_seed_gives_identical_loss(self, adapter_factory: AdapterFactory) -> None:
        adapter = adapter_factory(None)
        batch = adapter.collate(self._samples())
        first, again = _seeded_loss(adapter, batch, 11), _seeded_loss(adapter, batch, 11)
        assert torch.equal(first.total, again.total)
        assert torch.equal(first.parts["mse"], again.parts["mse"])
        # a trainer resumes by restoring the global RNG state: the loss must come out the same
        state = torch.get_rng_state()
        resumed = adapter.loss(batch)
        torch.set_rng_state(state)
        assert torch.equal(adapter.loss(batch).total, resumed.total)
        other = _seeded_loss(adapter, batch, 12)
        assert not torch.equal(first.parts["mse"], other.parts["mse"])
        rebuilt = adapter_factory(None)
        assert torch.equal(
            _seeded_loss(rebuilt, rebuilt.collate(self._samples()), 11).total, first.total
        )

    def test_single_kind_batches(self, adapter_factory: AdapterFactory) -> None:
        adapter = adapter_factory(None)
        for understanding in (True, False):
            samples = [
                s for s in self._samples() if (s.task is TaskKind.UNDERSTANDING) == understanding
            ]
            out = _seeded_loss(adapter, adapter.collate(samples), 0)
            present, absent = ("ce", "mse") if understanding else ("mse", "ce")
            assert out.token_counts[present] > 0
            assert float(out.parts[present].detach()) > 0
            assert out.token_counts[absent] == 0
            assert float(out.parts[absent].detach()) == 0.0
            out.total.backward()  # type: ignore[no-untyped-call]
            assert math.isfinite(float(out.total.detach()))

    def test_backward_reaches_every_trainable_group(self, adapter_factory: AdapterFactory) -> None:
        adapter = adapter_factory(None)
        out = _seeded_loss(adapter, adapter.collate(self._samples()), 0)
        out.total.backward()  # type: ignore[no-untyped-call]
        for name, params in adapter.parameter_groups().items():
            trainable = [p for p in params if p.requires_grad]
            if name == "vae":
                assert not trainable, "the VAE must always be frozen"
                continue
            assert trainable, f"group {name} has no trainable parameters"
            assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in trainable), name

    def test_parameter_groups_partition_the_parameters(
        self, adapter_factory: AdapterFactory
    ) -> None:
        adapter = adapter_factory(None)
        groups = adapter.parameter_groups()
        assert set(groups) <= set(PARAMETER_GROUPS)
        seen: set[int] = set()
        for params in groups.values():
            ids = {id(p) for p in params}
            assert not ids & seen, "a parameter belongs to two groups"
            seen |= ids
        assert seen == {id(p) for p in adapter.parameters()}

    def test_freezing_a_group_keeps_it_bit_identical(self, adapter_factory: AdapterFactory) -> None:
        for group in _TRAINABLE_GROUPS:
            self._check_frozen(adapter_factory, group)

    def _check_frozen(self, adapter_factory: AdapterFactory, group: str) -> None:
        adapter = adapter_factory(FreezePolicy(**{group: True}))
        groups = adapter.parameter_groups()
        before = {name: [p.detach().clone() for p in ps] for name, ps in groups.items()}
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2, weight_decay=0.1)
        _seeded_loss(adapter, adapter.collate(self._samples()), 0).total.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        for name, params in groups.items():
            unchanged = all(torch.equal(a, p) for a, p in zip(before[name], params, strict=True))
            if name in (group, "vae"):
                assert unchanged, f"frozen group {name} changed"
            elif params:
                assert not unchanged, f"trainable group {name} did not change"

    def test_batch_to_moves_and_casts_floats_only(self, adapter_factory: AdapterFactory) -> None:
        adapter = adapter_factory(None)
        batch = adapter.collate(self._samples()).to("cpu", torch.float64)
        for value in vars(batch).values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert value.dtype == torch.float64
            elif isinstance(value, torch.Tensor):
                assert value.dtype in (torch.int64, torch.bool)

    def test_answer_returns_one_string_per_question(self, adapter_factory: AdapterFactory) -> None:
        adapter = adapter_factory(None)
        images = [s.image for s in self._samples()[:2] if s.image is not None]
        answers = adapter.answer(images, ["What is it?", "Where?"], max_new_tokens=4)
        assert len(answers) == 2
        assert all(isinstance(a, str) for a in answers)
        error = ""
        try:
            adapter.answer(images, ["What is it?"])
        except ValueError as exc:
            error = str(exc)
        assert "2 images for 1 questions" in error, "a length mismatch must raise ValueError"

    def test_generate_returns_images_of_the_requested_size(
        self, adapter_factory: AdapterFactory
    ) -> None:
        adapter = adapter_factory(None)
        samples = self._samples()
        cases = [(None, None, None), (40, 56, [samples[0].image, samples[1].image])]
        for height, width, images in cases:
            settings = GenerationSettings(height=height, width=width, num_steps=2, seed=1)
            out = adapter.generate(["Draw a cat.", "Segment."], images, settings)
            assert len(out) == 2
            for array in out:
                assert isinstance(array, np.ndarray)
                assert array.dtype == np.uint8
                assert array.shape == (height or self.image_size, width or self.image_size, 3)

    def test_generate_is_seeded(self, adapter_factory: AdapterFactory) -> None:
        adapter = adapter_factory(None)
        a = adapter.generate(["Draw."], None, GenerationSettings(num_steps=2, seed=1))[0]
        b = adapter.generate(["Draw."], None, GenerationSettings(num_steps=2, seed=1))[0]
        c = adapter.generate(["Draw."], None, GenerationSettings(num_steps=2, seed=2))[0]
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)

    def test_save_then_load_reproduces_outputs(
        self, adapter_factory: AdapterFactory, tmp_path: Path
    ) -> None:
        adapter = adapter_factory(None)
        samples = self._samples()
        # one optimiser step so that the saved weights differ from a fresh initialisation
        optimizer = torch.optim.SGD(adapter.parameters(), lr=0.1)
        _seeded_loss(adapter, adapter.collate(samples), 0).total.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        adapter.save_pretrained(tmp_path)
        saved = [tmp_path / n for n in ("sgt_adapter.json", "config.json")]
        assert any('"kind"' in f.read_text() for f in saved if f.is_file()), (
            "save_pretrained must write the adapter config (with its kind) to sgt_adapter.json "
            "or config.json"
        )
        assert list(tmp_path.rglob("*.safetensors")), "weights are saved as safetensors"
        from sgt_models.registry import load_adapter

        with torch.random.fork_rng(devices=[]):
            assert isinstance(load_adapter(tmp_path), type(adapter)), "load_adapter dispatches"
        state = torch.get_rng_state()
        loaded = type(adapter).from_pretrained(tmp_path)
        assert torch.equal(torch.get_rng_state(), state), "loading consumed the global RNG"
        assert loaded.config == adapter.config
        mine, theirs = adapter.state_dict(), loaded.state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
        batch = adapter.collate(samples)
        assert torch.equal(
            _seeded_loss(adapter, batch, 4).total,
            _seeded_loss(loaded, loaded.collate(samples), 4).total,
        )
        image = [samples[0].image]
        assert adapter.answer(image, ["What?"], 6) == loaded.answer(image, ["What?"], 6)
        settings = GenerationSettings(num_steps=2)
        assert np.array_equal(
            adapter.generate(["Segment."], image, settings)[0],
            loaded.generate(["Segment."], image, settings)[0],
        )
