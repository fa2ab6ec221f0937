"""Per-source datasets: what each task's Sample holds, caps, guard, and bad stored samples."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from sgt_data.datasets import (
    MemoryRecord,
    MemoryStore,
    NoMatchError,
    SampleFormatError,
    SourceDataset,
    StoreReader,
)
from sgt_data.errors import SgtDataError, TargetGuardError
from sgt_data.prompts import choose_instruction, instruction_set
from sgt_data.schema import MixtureSource, TaskKind, Turn

TaskKey = tuple[TaskKind, str | None]
SEG: TaskKey = (TaskKind.SEGMENTATION, "instance")
SEM: TaskKey = (TaskKind.SEGMENTATION, "semantic")
EDGE: TaskKey = (TaskKind.EDGE, None)


def _photo(rng: np.random.Generator, h: int = 24, w: int = 32) -> NDArray[np.uint8]:
    ramp = np.linspace(0, 200, w, dtype=np.float64)[None, :, None]
    noise = rng.normal(0, 25, (h, w, 3))
    return np.clip(ramp + noise + 30, 0, 255).astype(np.uint8)


def _instance_map(rng: np.random.Generator, h: int = 24, w: int = 32) -> NDArray[np.uint8]:
    palette = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    labels = np.zeros((h, w), dtype=np.int64)
    labels[: h // 2, : w // 2] = 1
    labels[h // 2 :, w // 3 :] = 2
    labels[2:6, 20:28] = 3
    palette[0] = 0
    return palette[labels]


def _store(n: int = 40, name: str = "mem") -> MemoryStore:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        image = _photo(rng)
        targets = {SEG: _instance_map(rng)}
        if i % 2 == 0:
            targets[SEM] = _instance_map(rng)
        if i % 4 == 0:
            targets[EDGE] = np.zeros_like(image)
        conversation: tuple[Turn, ...] = ()
        if i % 3 == 0:
            conversation = (
                Turn(role="user", text=f"<image>What is shown in {i}?"),
                Turn(role="assistant", text=f"Item {i}."),
            )
        if i % 9 == 0:
            conversation += (
                Turn(role="user", text=f"And its colour in {i}?"),
                Turn(role="assistant", text="Grey."),
            )
        metadata: dict[str, str | int | float | bool] = {"width": 32, "height": 24}
        if i % 5 == 0:
            metadata["caption"] = f"a grey ramp number {i}"
        records.append(
            MemoryRecord(
                sample_id=f"{name}:{i}",
                image=image,
                targets=targets,
                conversation=conversation,
                metadata=metadata,
            )
        )
    return MemoryStore(name, records)


def _source(task: TaskKind, variant: str | None = None, **kw: object) -> MixtureSource:
    return MixtureSource.model_validate(
        {"name": "src", "store": "/stores/mem", "task": task, "task_variant": variant, **kw}
    )


def test_memory_store_satisfies_the_protocol() -> None:
    store = _store(4)
    assert isinstance(store, StoreReader)
    assert store.manifest.num_samples == 4
    with pytest.raises(KeyError, match="sample 1 has no edge target"):
        store.read_target(1, TaskKind.EDGE)


def test_segmentation_sample_holds_image_instruction_and_rendered_target() -> None:
    store = _store()
    ds = SourceDataset(
        _source(TaskKind.SEGMENTATION, "semantic"), store, seed=5, include_metadata=True
    )
    assert ds.indices.tolist() == list(range(0, 40, 2))
    sample = ds.get(3, epoch=2)
    index = 6
    assert sample.sample_id == "mem:6"
    assert sample.source == "src"
    assert (sample.task, sample.task_variant) == (TaskKind.SEGMENTATION, "semantic")
    assert np.array_equal(sample.image, store.read_image(index))
    assert np.array_equal(sample.target_image, store.read_target(index, *SEM))
    assert sample.instruction in instruction_set(TaskKind.SEGMENTATION, "semantic")
    assert sample.instruction == choose_instruction(
        TaskKind.SEGMENTATION, "semantic", seed=5, sample_id="mem:6", epoch=2
    )
    assert sample.metadata["store_index"] == index
    assert sample.metadata["width"] == 32
    lean = SourceDataset(_source(TaskKind.SEGMENTATION, "semantic"), store, seed=5)
    assert lean.get(3, epoch=2).metadata == {"store_index": index}
    epochs = {ds.get(3, epoch=e).instruction for e in range(6)}
    assert len(epochs) >= 4


def test_understanding_sample_is_last_question_with_earlier_turns_as_history() -> None:
    store = _store()
    ds = SourceDataset(_source(TaskKind.UNDERSTANDING), store)
    assert ds.indices.tolist() == list(range(0, 40, 3))
    single = ds.get(1, 0)  # index 3: one question
    assert single.instruction == "<image>What is shown in 3?"
    assert single.answer == "Item 3."
    assert single.history == ()
    assert single.target_image is None
    assert np.array_equal(single.image, store.read_image(3))
    multi = ds.get(3, 0)  # index 9: two rounds
    assert multi.instruction == "And its colour in 9?"
    assert multi.answer == "Grey."
    assert [t.text for t in multi.history] == ["<image>What is shown in 9?", "Item 9."]


def test_text_to_image_uses_caption_and_image_as_target() -> None:
    store = _store()
    ds = SourceDataset(_source(TaskKind.TEXT_TO_IMAGE), store)
    sample = ds.get(2, 0)  # index 10
    assert sample.instruction == "a grey ramp number 10"
    assert sample.image is None
    assert np.array_equal(sample.target_image, store.read_image(10))


def test_reconstruction_targets_the_input_and_uses_every_image() -> None:
    store = _store(6)
    ds = SourceDataset(_source(TaskKind.RECONSTRUCTION), store, guard=True)
    assert len(ds) == 6
    sample = ds.get(4, 0)
    assert np.array_equal(sample.target_image, sample.image)
    assert sample.target_image is not sample.image
    assert sample.instruction in instruction_set(TaskKind.RECONSTRUCTION)


def test_cap_is_a_deterministic_nested_subset_per_seed() -> None:
    store = _store(40)
    full = SourceDataset(_source(TaskKind.SEGMENTATION, "instance"), store, seed=1)
    assert len(full) == 40

    def subset(cap: int, seed: int) -> list[int]:
        ds = SourceDataset(
            _source(TaskKind.SEGMENTATION, "instance", max_samples=cap), store, seed=seed
        )
        assert len(ds) == cap
        indices: list[int] = ds.indices.tolist()
        assert indices == sorted(set(indices))
        return indices

    assert subset(10, 1) == subset(10, 1)
    assert subset(10, 1) != subset(10, 2)
    assert set(subset(5, 1)) < set(subset(10, 1)) < set(subset(30, 1))
    assert len(SourceDataset(_source(TaskKind.SEGMENTATION, max_samples=100), store)) == 40
    # The subset is spread over the store, not its first items.
    assert max(subset(10, 1)) > 20


def _typed_store(n: int = 30) -> MemoryStore:
    """Understanding records tagged like a scene-world VQA store (question_type, a flag, a count)."""
    rng = np.random.default_rng(1)
    kinds = ("existence", "counting", "color")
    records = [
        MemoryRecord(
            sample_id=f"q:{i}",
            image=_photo(rng),
            conversation=(
                Turn(role="user", text=f"<image>Question {i}?"),
                Turn(role="assistant", text="Yes."),
            ),
            metadata={"question_type": kinds[i % 3], "hard": i % 2 == 0, "count": i % 4},
        )
        for i in range(n)
    ]
    return MemoryStore("vqa-mem", records)


def test_where_keeps_exactly_the_samples_whose_metadata_matches() -> None:
    store = _typed_store(30)

    def kept(where: dict[str, object], **kw: object) -> list[int]:
        ds = SourceDataset(_source(TaskKind.UNDERSTANDING, where=where, **kw), store, seed=3)
        return ds.indices.tolist()

    assert kept({"question_type": ["existence", "counting"]}) == [
        i for i in range(30) if i % 3 != 2
    ]
    # A scalar means a one-value list; every field must match.
    assert kept({"question_type": "color", "hard": True}) == [
        i for i in range(30) if i % 3 == 2 and i % 2 == 0
    ]
    # Types are matched exactly: 1 selects the count 1, not True; True selects only booleans.
    assert kept({"count": 1}) == [i for i in range(30) if i % 4 == 1]
    assert kept({"hard": True}) == [i for i in range(30) if i % 2 == 0]
    # The cap draws from the filtered samples, and stays a nested subset of them.
    small = kept({"question_type": ["existence"]}, max_samples=4)
    large = kept({"question_type": ["existence"]}, max_samples=8)
    assert len(small) == 4
    assert set(small) < set(large) <= set(range(0, 30, 3))
    # Samples are the store's own: the filtered dataset returns the matching records.
    ds = SourceDataset(
        _source(TaskKind.UNDERSTANDING, where={"question_type": ["counting"]}),
        store,
        include_metadata=True,
    )
    assert {ds[i].metadata["question_type"] for i in range(len(ds))} == {"counting"}


def test_where_that_matches_nothing_names_the_source_and_what_the_store_holds() -> None:
    store = _typed_store(9)
    with pytest.raises(NoMatchError) as info:
        SourceDataset(
            _source(TaskKind.UNDERSTANDING, where={"question_type": ["existance"]}), store
        )
    message = str(info.value)
    assert "\n" not in message
    for named in ("'src'", "'vqa-mem'", "/stores/mem", "existance"):
        assert named in message
    for held in ("'color'", "'counting'", "'existence'"):
        assert held in message
    with pytest.raises(SgtDataError, match=r"question_kind: absent"):
        SourceDataset(_source(TaskKind.UNDERSTANDING, where={"question_kind": ["x"]}), store)


@pytest.mark.parametrize(
    ("where", "message"),
    [({}, "at least one metadata field"), ({"question_type": []}, "list no values")],
)
def test_where_without_values_is_rejected_by_the_schema(
    where: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _source(TaskKind.UNDERSTANDING, where=where)


def test_source_without_samples_of_its_task_is_refused_by_name() -> None:
    store = _store(4)
    with pytest.raises(SgtDataError, match=r"'src'.*'mem'.*no depth samples"):
        SourceDataset(_source(TaskKind.DEPTH), store)


def test_guard_in_the_dataset_catches_a_store_whose_target_is_the_input() -> None:
    rng = np.random.default_rng(3)
    good = [MemoryRecord(f"ok:{i}", _photo(rng), {SEG: _instance_map(rng)}) for i in range(3)]
    photo = _photo(rng)
    bad = MemoryRecord("bad:7", photo, {SEG: photo.copy()})
    store = MemoryStore("swapped", [*good, bad])
    ds = SourceDataset(_source(TaskKind.SEGMENTATION, "instance"), store, guard=True)
    for i in range(3):
        ds.get(i, 0)
    with pytest.raises(TargetGuardError, match=r"'bad:7' from source 'src'"):
        ds.get(3, 0)
    unguarded = SourceDataset(_source(TaskKind.SEGMENTATION, "instance"), store)
    assert np.array_equal(unguarded.get(3, 0).target_image, photo)


def test_malformed_conversations_and_captions_are_named() -> None:
    rng = np.random.default_rng(4)
    img = _photo(rng)
    store = MemoryStore(
        "broken",
        [
            MemoryRecord("b:0", img, conversation=(Turn(role="user", text="Q?"),)),
            MemoryRecord(
                "b:1",
                img,
                conversation=(Turn(role="assistant", text="A"), Turn(role="user", text="Q?")),
            ),
            MemoryRecord("b:2", img, metadata={"caption": "  "}),
        ],
    )
    ds = SourceDataset(_source(TaskKind.UNDERSTANDING), store)
    with pytest.raises(SampleFormatError, match=r"'b:0' \(index 0\) of store 'broken'.*1 turns"):
        ds.get(0, 0)
    with pytest.raises(SampleFormatError, match=r"'b:1'.*turn 0 is from 'assistant'"):
        ds.get(1, 0)
    t2i = SourceDataset(_source(TaskKind.TEXT_TO_IMAGE), store)
    with pytest.raises(SampleFormatError, match=r"'b:2'.*caption"):
        t2i.get(0, 0)
    with pytest.raises(IndexError, match="'src'"):
        t2i.get(1, 0)
