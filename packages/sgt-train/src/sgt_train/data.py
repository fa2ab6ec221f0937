"""The run's sample stream: the ``sgt_data`` mixture loader of this rank, endless and resumable."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sgt_data import Sample
from sgt_train.config import RunConfig

__all__ = ["MixtureStream", "build_source"]


class MixtureStream:
    """Epoch after epoch of an ``sgt_data.mixing.MixtureLoader``; its state is the loader's.

    Yields lists of samples, or adapter batches when the loader collates in its workers. Fetching
    a batch leaves the global torch RNG (the model's noise stream) untouched.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        import torch

        end = object()
        while True:
            epoch = iter(self.loader)
            yielded = False
            while True:
                # A DataLoader draws its workers' base seed from the global torch RNG whenever an
                # epoch's iterator starts, i.e. at a different point of the model's noise stream
                # in a resumed run than in an uninterrupted one: keep the data side off that RNG.
                with torch.random.fork_rng(devices=[]):
                    batch = next(epoch, end)
                if batch is end:
                    break
                yielded = True
                yield batch
            if not yielded:
                raise RuntimeError("the mixture loader yielded no batch in a whole epoch")

    def state_dict(self) -> dict[str, Any]:
        """The loader's position after the last batch handed out."""
        state: dict[str, Any] = self.loader.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved position."""
        self.loader.load_state_dict(dict(state))


def build_source(
    config: RunConfig,
    rank: int,
    world_size: int,
    collate: Callable[[Sequence[Sample]], Any] | None = None,
) -> MixtureStream:
    """The mixture of ``config.data`` for ``rank`` of ``world_size``, one micro-batch per item.

    With ``num_workers > 0`` the workers also run ``collate`` (the adapter's), so the training
    loop receives ready batches.
    """
    from sgt_data.mixing import build_loader
    from sgt_data.store import SampleStore

    loader = build_loader(
        config.data,
        SampleStore.open,
        micro_batch_size=config.micro_batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=config.num_workers,
        collate_fn=collate if config.num_workers > 0 else None,
        guard=config.check_targets,
    )
    return MixtureStream(loader)
