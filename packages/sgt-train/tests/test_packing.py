"""Token-budget packing: packs respect the budget, keep the mixture's order and resume exactly."""

from __future__ import annotations

import itertools

import pytest

from sgt_data import MixtureConfig, Sample
from sgt_train.packing import PackingError, TokenBudgetStream
from sgt_train_toy import ToySource


def _mixture() -> MixtureConfig:
    return MixtureConfig.model_validate(
        {
            "sources": [
                {"name": "seg", "store": "unused", "task": "segmentation", "ratio": 2.0},
                {"name": "vqa", "store": "unused", "task": "understanding", "ratio": 1.0},
            ],
            "mode": "interleave",
            "pattern": ["seg", "seg", "vqa"],
        }
    )


def _tokens(sample: Sample) -> int:
    # deterministic, varied sizes: 100..1000 tokens
    return 100 + (int(sample.sample_id.split(":")[1]) * 397) % 901


def _ids(packs: list[list[Sample]]) -> list[list[str]]:
    return [[s.sample_id for s in pack] for pack in packs]


def test_packs_fill_the_budget_in_mixture_order() -> None:
    stream = TokenBudgetStream(ToySource(_mixture(), 3), _tokens, 2000, 2600)
    packs = list(itertools.islice(iter(stream), 30))
    flat = [s.sample_id for pack in packs for s in pack]
    reference = ToySource(_mixture(), 3)
    expected = [s.sample_id for batch in itertools.islice(iter(reference), 200) for s in batch]
    assert flat == expected[: len(flat)], "packing must keep the mixture's order, dropping nothing"
    for pack in packs:
        total = sum(_tokens(s) for s in pack)
        assert total <= 2600
        # a pack ends short of the expected tokens only when the next sample did not fit
        if total < 2000:
            nxt = expected[len([s for p in packs[: packs.index(pack) + 1] for s in p])]
            assert total + _tokens(Sample.model_construct(sample_id=nxt)) > 2600
    assert len({len(p) for p in packs}) > 1, "pack sizes follow the tokens, not a fixed count"


@pytest.mark.parametrize("stop_after", [1, 4, 7])
def test_resume_continues_with_the_same_packs(stop_after: int) -> None:
    full = _ids(
        list(
            itertools.islice(
                iter(TokenBudgetStream(ToySource(_mixture(), 3), _tokens, 2000, 2600)), 12
            )
        )
    )
    first = TokenBudgetStream(ToySource(_mixture(), 3), _tokens, 2000, 2600)
    head = _ids(list(itertools.islice(iter(first), stop_after)))
    state = first.state_dict()
    resumed = TokenBudgetStream(ToySource(_mixture(), 3), _tokens, 2000, 2600)
    resumed.load_state_dict(state)
    tail = _ids(list(itertools.islice(iter(resumed), 12 - stop_after)))
    assert head + tail == full


def test_a_sample_over_the_whole_budget_is_named() -> None:
    stream = TokenBudgetStream(ToySource(_mixture(), 3), _tokens, 100, 150)
    with pytest.raises(
        PackingError,
        match=r"sample 'toy:\d+' \(toy\) needs \d+ tokens, more than max_num_tokens \(150\)",
    ):
        list(itertools.islice(iter(stream), 5))
    with pytest.raises(PackingError, match="expected_num_tokens"):
        TokenBudgetStream(ToySource(_mixture(), 3), _tokens, 3000, 2000)
