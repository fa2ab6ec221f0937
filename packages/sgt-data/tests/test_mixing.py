"""The mixing sampler and loader: ratios, epochs, sharding, resume, forked workers.

Ratio tolerance: over a stream of >= 10,000 samples the share of each source is within 0.01 of
its target share (both modes). An epoch ends with the anchor's last step, so per epoch a
non-anchor source can miss at most one pattern cycle (interleave) or one rounding (within batch).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from numpy.typing import NDArray

from sgt_data.datasets import MemoryRecord, MemoryStore
from sgt_data.mixing import (
    MixtureError,
    MixtureKey,
    MixtureSampler,
    build_loader,
    derive_pattern,
)
from sgt_data.schema import MixtureConfig, Sample, TaskKind, Turn

Mode = str


def _samplers(
    sizes: tuple[int, ...],
    ratios: tuple[float, ...],
    mode: Mode,
    world_size: int,
    micro_batch_size: int = 4,
    seed: int = 1,
    pattern: tuple[str, ...] | None = None,
) -> list[MixtureSampler]:
    names = [f"s{i}" for i in range(len(sizes))]
    return [
        MixtureSampler(
            sizes,
            names=names,
            ratios=ratios,
            mode=mode,  # type: ignore[arg-type]
            pattern=pattern,
            micro_batch_size=micro_batch_size,
            rank=rank,
            world_size=world_size,
            seed=seed,
        )
        for rank in range(world_size)
    ]


def _epoch(samplers: list[MixtureSampler], epoch: int) -> list[list[list[MixtureKey]]]:
    """steps x ranks x keys of one epoch."""
    return [[s.plan(epoch, step) for s in samplers] for step in range(samplers[0].steps_per_epoch)]


def test_derive_pattern_from_ratios() -> None:
    assert derive_pattern(["seg", "vqa"], [2, 1]) == ("seg", "seg", "vqa")
    assert derive_pattern(["seg", "vqa"], [0.5, 0.25]) == ("seg", "seg", "vqa")
    assert derive_pattern(["a", "b"], [1, 5]) == ("a", "b", "b", "b", "b", "b")
    assert derive_pattern(["a", "b", "c"], [3, 2, 1]) == ("a", "a", "a", "b", "b", "c")
    long = derive_pattern(["a", "b"], [1, 997])
    assert len(long) <= 64
    assert long.count("a") == 1


@pytest.mark.parametrize("mode", ["interleave", "within_batch"])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_all_ranks_together_cover_exactly_one_epoch(mode: Mode, world_size: int) -> None:
    sizes = (103, 57)  # neither divides world_size * micro_batch_size
    samplers = _samplers(sizes, (2, 1), mode, world_size)
    epoch = _epoch(samplers, 0)
    keys = [k for step in epoch for batch in step for k in batch]
    anchor = sorted(k.item for k in keys if k.source == 0)
    assert anchor == list(range(sizes[0]))  # the anchor: every sample once
    assert all(k.cycle == 0 for k in keys if k.source == 0)
    other = [k.item for k in keys if k.source == 1]
    assert len(other) == samplers[0].quota[1] <= sizes[1]
    assert len(set(other)) == len(other)  # no repeats of the other source either
    for step in epoch:
        sizes_here = [len(batch) for batch in step]
        assert min(sizes_here) >= 1
        assert max(sizes_here) <= 4
        assert max(sizes_here) - min(sizes_here) <= 1
        if mode == "interleave":
            assert len({k.source for batch in step for k in batch}) == 1


@pytest.mark.parametrize("mode", ["interleave", "within_batch"])
@pytest.mark.parametrize("world_size", [1, 3])
def test_each_source_stream_is_a_sequence_of_full_passes(mode: Mode, world_size: int) -> None:
    """Across epochs, a non-anchor source is drawn pass after pass: no repeats, no gaps."""
    sizes = (40, 23)
    samplers = _samplers(sizes, (2, 1), mode, world_size, micro_batch_size=2)
    stream = [
        k
        for epoch in range(6)
        for step in _epoch(samplers, epoch)
        for batch in step
        for k in batch
        if k.source == 1
    ]
    assert len(stream) >= 3 * sizes[1]
    for cycle in range(len(stream) // sizes[1]):
        block = stream[cycle * sizes[1] : (cycle + 1) * sizes[1]]
        assert sorted(k.item for k in block) == list(range(sizes[1]))
        assert {k.cycle for k in block} == {cycle}
    orders = [[k.item for k in stream[c * sizes[1] : (c + 1) * sizes[1]]] for c in range(2)]
    assert orders[0] != orders[1]  # every pass is reshuffled


@pytest.mark.parametrize("mode", ["interleave", "within_batch"])
def test_ratios_hold_over_long_streams(mode: Mode) -> None:
    ratios = (2.0, 1.0, 0.5)
    samplers = _samplers((1000, 5000, 777), ratios, mode, world_size=2)
    counts: Counter[int] = Counter()
    for epoch in range(8):
        for step in _epoch(samplers, epoch):
            counts.update(k.source for batch in step for k in batch)
    total = sum(counts.values())
    assert total >= 10_000
    for source, ratio in enumerate(ratios):
        assert abs(counts[source] / total - ratio / sum(ratios)) <= 0.01, (counts, source)


def test_interleave_follows_the_pattern_and_within_batch_mixes_every_batch() -> None:
    (inter,) = _samplers((60, 500), (2, 1), "interleave", 1)
    sources = [inter.plan(0, s)[0].source for s in range(inter.steps_per_epoch)]
    assert sources[:9] == [0, 0, 1] * 3
    assert sources[-1] == 0  # the epoch ends with the anchor's last step
    explicit = _samplers((60, 500), (2, 1), "interleave", 1, pattern=("s1", "s0", "s0", "s0"))[0]
    sources = [explicit.plan(0, s)[0].source for s in range(8)]
    assert sources == [1, 0, 0, 0, 1, 0, 0, 0]
    (mixed,) = _samplers((600, 500), (2, 1), "within_batch", 1, micro_batch_size=6)
    for step in range(mixed.steps_per_epoch):
        batch = mixed.plan(0, step)
        if len(batch) == 6:
            assert Counter(k.source for k in batch) == Counter({0: 4, 1: 2})


def test_schedule_is_deterministic_in_the_seed() -> None:
    a = _epoch(_samplers((50, 30), (2, 1), "within_batch", 2, seed=3), 1)
    b = _epoch(_samplers((50, 30), (2, 1), "within_batch", 2, seed=3), 1)
    c = _epoch(_samplers((50, 30), (2, 1), "within_batch", 2, seed=4), 1)
    assert a == b
    assert a != c
    assert _epoch(_samplers((50, 30), (2, 1), "within_batch", 2, seed=3), 0) != a


@pytest.mark.parametrize("mode", ["interleave", "within_batch"])
@pytest.mark.parametrize("stop", [0, 7, 29])
def test_resume_mid_epoch_gives_the_exact_continuation(mode: Mode, stop: int) -> None:
    (original,) = _samplers((90, 40), (2, 1), mode, 1, micro_batch_size=3)
    first = iter(original)
    for _ in range(stop):
        next(first)
    state = original.state_dict()
    rest = list(first) + list(original)  # the rest of epoch 0, then all of epoch 1
    assert (original.epoch, original.step) == (2, 0)
    (resumed,) = _samplers((90, 40), (2, 1), mode, 1, micro_batch_size=3)
    resumed.load_state_dict(state)
    assert list(resumed) + list(resumed) == rest


def test_state_from_another_schedule_is_refused() -> None:
    (one,) = _samplers((90, 40), (2, 1), "interleave", 1)
    two = _samplers((90, 40), (2, 1), "interleave", 2)[0]
    with pytest.raises(MixtureError, match=r"world_size: saved 1, now 2"):
        two.load_state_dict(one.state_dict())
    with pytest.raises(MixtureError, match="no step"):
        one.set_position(0, one.steps_per_epoch)


def test_too_few_samples_for_the_ranks_is_refused_by_name() -> None:
    with pytest.raises(MixtureError, match=r"'s0'.*3 samples.*4 ranks"):
        _samplers((3, 10), (2, 1), "interleave", 4)
    with pytest.raises(MixtureError, match="divisible by the world size"):
        _samplers((7, 10), (2, 1), "interleave", 2, micro_batch_size=1)
    _samplers((8, 10), (2, 1), "interleave", 2, micro_batch_size=1)  # divisible: fine
    with pytest.raises(MixtureError, match=r"never drawn \['s1'\]"):
        _samplers((8, 10), (2, 1), "interleave", 1, pattern=("s0",))


# -- the loader over real datasets ---------------------------------------------------------------


def _image(rng: np.random.Generator) -> NDArray[np.uint8]:
    return rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)


def _stores() -> dict[str, MemoryStore]:
    rng = np.random.default_rng(0)
    seg = [
        MemoryRecord(
            f"sam:{i}",
            _image(rng),
            {(TaskKind.SEGMENTATION, "instance"): np.full((8, 8, 3), i % 7 * 30, np.uint8)},
        )
        for i in range(37)
    ]
    vqa = [
        MemoryRecord(
            f"vqa:{i}",
            _image(rng),
            conversation=(
                Turn(role="user", text=f"<image>Q{i}?"),
                Turn(role="assistant", text=f"A{i}."),
            ),
        )
        for i in range(23)
    ]
    return {"/stores/sam": MemoryStore("sam", seg), "/stores/vqa": MemoryStore("vqa", vqa)}


MIXTURE = MixtureConfig.model_validate(
    {
        "sources": [
            {"name": "seg", "store": "/stores/sam", "task": "segmentation", "ratio": 2.0},
            {"name": "vqa", "store": "/stores/vqa", "task": "understanding", "ratio": 1.0},
            {
                "name": "recon",
                "store": "/stores/sam",
                "task": "reconstruction",
                "ratio": 0.5,
                "max_samples": 10,
            },
        ],
        "mode": "within_batch",
        "seed": 11,
    }
)


def _digest(batch: list[Sample]) -> list[tuple[str, str, str, bytes]]:
    return [
        (
            s.sample_id,
            s.source,
            s.instruction,
            b"" if s.target_image is None else s.target_image.tobytes(),
        )
        for s in batch
    ]


def _run(loader_batches: object) -> list[list[tuple[str, str, str, bytes]]]:
    return [_digest(b) for b in loader_batches]  # type: ignore[attr-defined]


def test_build_loader_opens_each_store_once_and_yields_samples() -> None:
    stores = _stores()
    opened: list[str] = []

    def open_store(path: str) -> MemoryStore:
        opened.append(path)
        return stores[path]

    loader = build_loader(MIXTURE, open_store, micro_batch_size=4)
    assert sorted(opened) == ["/stores/sam", "/stores/vqa"]
    batches = list(loader)
    assert len(batches) == len(loader) == loader.sampler.steps_per_epoch
    samples = [s for b in batches for s in b]
    by_source = Counter(s.source for s in samples)
    assert by_source == Counter({"seg": 37, "vqa": 18, "recon": 9})
    assert len({s.sample_id for s in samples if s.source == "seg"}) == 37
    recon = [s for s in samples if s.source == "recon"]
    assert all(np.array_equal(s.image, s.target_image) for s in recon)
    assert (loader.state_dict()["epoch"], loader.state_dict()["step"]) == (1, 0)


def test_loader_resume_mid_epoch_gives_the_same_samples() -> None:
    stores = _stores()
    full = build_loader(MIXTURE, stores.__getitem__, micro_batch_size=3, rank=1, world_size=2)
    reference = _run(list(full) + list(full))
    interrupted = build_loader(
        MIXTURE, stores.__getitem__, micro_batch_size=3, rank=1, world_size=2
    )
    head = []
    for batch in interrupted:
        head.append(_digest(batch))
        if len(head) == 5:
            break
    state = interrupted.state_dict()
    assert (state["epoch"], state["step"]) == (0, 5)
    resumed = build_loader(MIXTURE, stores.__getitem__, micro_batch_size=3, rank=1, world_size=2)
    resumed.load_state_dict(state)
    tail = _run(list(resumed) + list(resumed))
    assert head + tail == reference


@pytest.mark.parametrize("persistent", [False, True])
def test_forked_two_worker_loader_matches_the_in_process_loader(persistent: bool) -> None:
    stores = _stores()
    plain = build_loader(MIXTURE, stores.__getitem__, micro_batch_size=4, seed=5)
    expected = _run(list(plain) + list(plain))
    forked = build_loader(
        MIXTURE,
        stores.__getitem__,
        micro_batch_size=4,
        seed=5,
        num_workers=2,
        multiprocessing_context="fork",
        persistent_workers=persistent,
    )
    got = []
    for batch in forked:  # stop early: workers have prefetched beyond this point
        got.append(_digest(batch))
        if len(got) == 4:
            break
    state = forked.state_dict()
    assert (state["epoch"], state["step"]) == (0, 4)
    got += _run(list(forked))  # continues from the consumed position, not the prefetched one
    got += _run(list(forked))
    assert got == expected
