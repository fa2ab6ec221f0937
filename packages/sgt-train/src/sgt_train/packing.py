"""Micro-batches filled to a token budget instead of a fixed sample count (BAGEL's packing).

A packed model (one whose adapter has ``estimate_num_tokens``) trains on one sequence per
micro-batch holding as many samples as fit: samples are taken in the mixture's order until the
pack reaches ``expected_num_tokens``; a sample that would push it past ``max_num_tokens`` starts
the next pack. ``micro_batch_size`` is then only the number of samples the mixture draws at a
time (its mixing granularity), not the size of a micro-batch.

The position is exact across resumes: it is the mixture's position before the draw the next
sample comes from, plus how many samples of that draw were already packed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sgt_data import Sample

__all__ = ["PackingError", "TokenBudgetStream"]


class PackingError(ValueError):
    """A sample that cannot be packed (longer than the whole budget)."""


class TokenBudgetStream:
    """Packs the samples of an inner micro-batch stream into micro-batches of a token budget."""

    def __init__(
        self,
        inner: Any,
        estimate: Callable[[Sample], int],
        expected_num_tokens: int,
        max_num_tokens: int,
    ) -> None:
        if not 0 < expected_num_tokens <= max_num_tokens:
            raise PackingError(
                f"token budget: expected_num_tokens ({expected_num_tokens}) must be > 0 and at "
                f"most max_num_tokens ({max_num_tokens})"
            )
        self.inner = inner
        self.estimate = estimate
        self.expected = expected_num_tokens
        self.maximum = max_num_tokens
        self._draw_state: dict[str, Any] = dict(inner.state_dict())
        self._consumed = 0
        self._pending: list[Sample] = []
        self._iterator: Iterator[Any] | None = None

    def _next_sample(self) -> Sample:
        if self._iterator is None:
            self._iterator = iter(self.inner)
            if self._consumed:  # resumed inside a draw: draw it again, skip what was packed
                self._pending = list(next(self._iterator))
                if self._consumed > len(self._pending):
                    raise PackingError(
                        f"packing state: {self._consumed} samples consumed of a draw of "
                        f"{len(self._pending)}"
                    )
        if self._consumed >= len(self._pending):
            self._draw_state = dict(self.inner.state_dict())
            self._pending = list(next(self._iterator))
            self._consumed = 0
            if not self._pending:
                raise PackingError("the mixture yielded an empty micro-batch")
        return self._pending[self._consumed]

    def __iter__(self) -> Iterator[list[Sample]]:
        while True:
            pack: list[Sample] = []
            tokens = 0
            while tokens < self.expected:
                sample = self._next_sample()
                n = int(self.estimate(sample))
                if n > self.maximum:
                    raise PackingError(
                        f"sample {sample.sample_id!r} ({sample.source}) needs {n} tokens, more "
                        f"than max_num_tokens ({self.maximum}): lower its image sizes or raise "
                        "max_num_tokens"
                    )
                if pack and tokens + n > self.maximum:
                    break
                pack.append(sample)
                tokens += n
                self._consumed += 1
            yield pack

    def state_dict(self) -> dict[str, Any]:
        """The position after the last pack handed out."""
        if self._consumed >= len(self._pending):  # the last draw is used up
            return {"inner": dict(self.inner.state_dict()), "consumed": 0}
        return {"inner": dict(self._draw_state), "consumed": self._consumed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved position (before iterating)."""
        self.inner.load_state_dict(state["inner"])
        self._draw_state = dict(state["inner"])
        self._consumed = int(state["consumed"])
        self._pending = []
        self._iterator = None
