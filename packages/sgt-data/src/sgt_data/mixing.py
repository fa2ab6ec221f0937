"""Task mixing: a deterministic, resumable, rank-sharded sampler over mixture sources.

Vocabulary
----------
- A *step* is one global micro-batch: every rank takes one micro-batch of at most
  ``micro_batch_size`` samples, and the ranks' micro-batches of a step are disjoint.
- Each source is read as an endless *stream*: pass (``cycle``) 0 is a seeded permutation of its
  samples, pass 1 another permutation, and so on. A sample's ``cycle`` is the epoch its
  instruction is chosen for, so a sample seen again gets a fresh instruction.
- The *anchor* is the source with the largest share (pattern occurrences in ``interleave`` mode,
  ``ratio`` in ``within_batch`` mode; ties go to the source listed first).

What an epoch is
----------------
An epoch is **exactly one pass over the anchor**: each of its samples once, in that epoch's
permutation. The other sources are drawn alongside in their share and continue their own streams
across epoch boundaries (so a large understanding set is not restarted every time a small
segmentation set is finished). Every epoch has the same number of steps, ``steps_per_epoch``.

- ``interleave``: all ranks draw from the same source at a step (as OmniGen2's
  ``interleave_pattern``), following ``pattern`` from its start at every epoch; a pattern derived
  from ratios lists each source in order, repeated by its integer share (2 : 1 -> ``[a, a, b]``).
  The epoch ends with the anchor's last step.
- ``within_batch``: each step mixes the sources by ratio: per epoch a non-anchor source gets
  ``round(n_anchor * ratio / ratio_anchor)`` samples, all labels are merged evenly over the
  epoch, and the merged sequence is cut into steps.

Every step holds ``world_size * micro_batch_size`` samples, except the anchor's last one or two
steps of an epoch (``interleave``) or the epoch's last one or two (``within_batch``), which share
the remainder as evenly as possible so that no rank's micro-batch is ever empty. Within a step,
the ranks' micro-batch sizes differ by at most one. Nothing is padded or dropped, so the union of
all ranks' micro-batches over an epoch is exactly the epoch.

Use with a DataLoader
---------------------
:class:`MixtureSampler` is a ``batch_sampler``: it runs in the main process and yields lists of
:class:`MixtureKey`; DataLoader workers only materialise samples through
:class:`MixtureDataset`, which is deterministic per key. A DataLoader prefetches, so the sampler
runs ahead of the training loop; :class:`MixtureLoader` counts the batches it has handed out and
its ``state_dict`` is the one to checkpoint. ``torch`` is imported only when a loader is built.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from sgt_data.datasets import SourceDataset, StoreReader, permutation
from sgt_data.errors import SgtDataError
from sgt_data.prompts import stable_hash
from sgt_data.schema import MixtureConfig, Sample

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

__all__ = [
    "MixtureDataset",
    "MixtureError",
    "MixtureKey",
    "MixtureLoader",
    "MixtureSampler",
    "build_datasets",
    "build_loader",
    "derive_pattern",
]

logger = logging.getLogger(__name__)

_MAX_PATTERN_LENGTH = 64
_STREAM_SALT = 0x3A1


class MixtureError(SgtDataError):
    """A mixture that cannot be sampled as asked (too few samples for the ranks, bad state...)."""


class MixtureKey(NamedTuple):
    """One sample of a micro-batch: source position, item index in that source, pass over it."""

    source: int
    item: int
    cycle: int


def derive_pattern(
    names: Sequence[str], ratios: Sequence[float], max_length: int = _MAX_PATTERN_LENGTH
) -> tuple[str, ...]:
    """An interleave pattern from ratios: each name in order, repeated by its integer share.

    ``2 : 1`` gives ``(a, a, b)``; ratios are reduced to the smallest integers (fractions up to a
    denominator of 1000), and scaled down to at most ``max_length`` entries if needed.
    """
    if len(names) != len(ratios) or not names:
        raise MixtureError(
            f"need one ratio per source, got {len(names)} names, {len(ratios)} ratios"
        )
    fracs = [Fraction(r).limit_denominator(1000) for r in ratios]
    denom = math.lcm(*(f.denominator for f in fracs))
    ints = [int(f * denom) for f in fracs]
    if min(ints) <= 0:
        raise MixtureError(f"ratios must be > 0, got {dict(zip(names, ratios, strict=True))}")
    g = math.gcd(*ints)
    counts = [i // g for i in ints]
    if sum(counts) > max_length:
        total = sum(ratios)
        counts = [max(1, round(r / total * max_length)) for r in ratios]
        while sum(counts) > max_length and max(counts) > 1:
            counts[counts.index(max(counts))] -= 1
        logger.info(
            "interleave pattern approximated to counts %s", dict(zip(names, counts, strict=True))
        )
    return tuple(name for name, c in zip(names, counts, strict=True) for _ in range(c))


def _step_sizes(n: int, capacity: int, min_size: int, what: str) -> NDArray[np.int64]:
    """Split ``n`` samples into steps of ``capacity``; the last one or two share the remainder."""
    k = -(-n // capacity)
    sizes = np.full(k, capacity, dtype=np.int64)
    sizes[-1] = n - (k - 1) * capacity
    if sizes[-1] < min_size and k >= 2:
        total = capacity + int(sizes[-1])
        sizes[-2:] = (total - total // 2, total // 2)
    if int(sizes.min()) < min_size:
        raise MixtureError(
            f"{what}: {n} samples cannot give each of {min_size} ranks a non-empty micro-batch "
            "in every step without repeating or dropping samples; use more samples, a "
            "micro_batch_size >= 2, or a sample count divisible by the world size"
        )
    return sizes


class MixtureSampler:
    """Yields this rank's micro-batches (lists of :class:`MixtureKey`) of a task mixture.

    Deterministic in ``seed``; the whole schedule is a pure function of ``(epoch, step)``, so
    ``load_state_dict`` resumes mid-epoch with exactly the same continuation. Iterating yields the
    rest of the current epoch and then moves the cursor to the next epoch.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        names: Sequence[str],
        ratios: Sequence[float],
        mode: Literal["interleave", "within_batch"] = "interleave",
        pattern: Sequence[str] | None = None,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if not (len(sizes) == len(names) == len(ratios)) or not sizes:
            raise MixtureError("sizes, names and ratios need one entry per source")
        if len(set(names)) != len(names):
            raise MixtureError(f"source names must be unique, got {list(names)}")
        if micro_batch_size < 1:
            raise MixtureError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise MixtureError(f"need 0 <= rank < world_size, got rank {rank}, world {world_size}")
        for name, n in zip(names, sizes, strict=True):
            if n < 1:
                raise MixtureError(f"source {name!r} has no samples")
        if mode not in ("interleave", "within_batch"):
            raise MixtureError(f"unknown mixing mode {mode!r}")
        self.sizes = tuple(int(n) for n in sizes)
        self.names = tuple(names)
        self.ratios = tuple(float(r) for r in ratios)
        self.mode = mode
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pattern: tuple[str, ...] | None = None
        if mode == "interleave":
            self.pattern = tuple(pattern) if pattern else derive_pattern(self.names, self.ratios)
            missing = [n for n in self.names if n not in self.pattern]
            unknown = sorted(set(self.pattern) - set(self.names))
            if unknown or missing:
                raise MixtureError(
                    f"pattern {list(self.pattern)} must name every source and nothing else: "
                    f"unknown {unknown}, never drawn {missing}"
                )
            shares = [float(self.pattern.count(n)) for n in self.names]
        elif pattern:
            raise MixtureError("pattern is only meaningful with mode='interleave'")
        else:
            shares = list(self.ratios)
        self.anchor = int(np.argmax(shares))  # first maximum
        self._labels, self._pos, self._starts, self.quota = self._build_epoch_layout()
        self._salts = tuple(stable_hash(name) for name in self.names)
        self._perms: dict[tuple[int, int], NDArray[np.int64]] = {}
        self.epoch = 0
        self.step = 0

    @classmethod
    def from_config(
        cls,
        mixture: MixtureConfig,
        sizes: Sequence[int],
        *,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
    ) -> MixtureSampler:
        """A sampler for ``mixture`` whose sources hold ``sizes`` samples (after caps)."""
        return cls(
            sizes,
            names=[s.name for s in mixture.sources],
            ratios=[s.ratio for s in mixture.sources],
            mode=mixture.mode,
            pattern=mixture.pattern,
            micro_batch_size=micro_batch_size,
            rank=rank,
            world_size=world_size,
            seed=mixture.seed if seed is None else seed,
        )

    # -- the epoch layout (identical for every epoch) -------------------------------------------

    def _build_epoch_layout(
        self,
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], tuple[int, ...]]:
        """Per-sample source labels, position in the source's epoch share, step boundaries."""
        capacity = self.world_size * self.micro_batch_size
        a = self.anchor
        what = f"source {self.names[a]!r} (the epoch's anchor)"
        if self.mode == "interleave":
            assert self.pattern is not None
            ids = np.array([self.names.index(n) for n in self.pattern], dtype=np.int64)
            anchor_sizes = _step_sizes(self.sizes[a], capacity, self.world_size, what)
            occ = np.flatnonzero(ids == a)
            last = len(anchor_sizes) - 1
            n_steps = (last // occ.size) * ids.size + int(occ[last % occ.size]) + 1
            step_src = np.tile(ids, -(-n_steps // ids.size))[:n_steps]
            step_size = np.full(n_steps, capacity, dtype=np.int64)
            step_size[step_src == a] = anchor_sizes
            labels = np.repeat(step_src, step_size)
        else:
            ra = self.ratios[a]
            quota = [
                n if i == a else max(1, round(self.sizes[a] * r / ra))
                for i, (n, r) in enumerate(zip(self.sizes, self.ratios, strict=True))
            ]
            # Even merge: the j-th sample of source i sits at (j + 0.5) / quota_i of the epoch.
            keys = np.concatenate([(np.arange(q) + 0.5) / q for q in quota])
            src = np.concatenate([np.full(q, i, dtype=np.int64) for i, q in enumerate(quota)])
            labels = src[np.lexsort((src, keys))]
            step_size = _step_sizes(labels.size, capacity, self.world_size, "the mixture epoch")
        pos = np.empty(labels.size, dtype=np.int64)
        counts = []
        for i in range(len(self.sizes)):
            where = labels == i
            count = int(where.sum())
            pos[where] = np.arange(count)
            counts.append(count)
        starts = np.concatenate([[0], np.cumsum(step_size)]).astype(np.int64)
        return labels, pos, starts, tuple(counts)

    @property
    def steps_per_epoch(self) -> int:
        """Number of steps (micro-batches per rank) in every epoch."""
        return int(self._starts.size - 1)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _permutation(self, source: int, cycle: int) -> NDArray[np.int64]:
        key = (source, cycle)
        perm = self._perms.get(key)
        if perm is None:
            if len(self._perms) >= 4 * len(self.sizes):
                self._perms.pop(next(iter(self._perms)))
            perm = permutation(
                self.sizes[source], self.seed, self._salts[source], _STREAM_SALT, cycle
            )
            self._perms[key] = perm
        return perm

    def plan(self, epoch: int, step: int) -> list[MixtureKey]:
        """This rank's micro-batch at ``step`` of ``epoch`` (a pure function of both)."""
        if epoch < 0 or not 0 <= step < self.steps_per_epoch:
            raise MixtureError(
                f"no step {step} in epoch {epoch}: epochs have {self.steps_per_epoch} steps"
            )
        lo, hi = int(self._starts[step]), int(self._starts[step + 1])
        m, r, w = hi - lo, self.rank, self.world_size
        a, b = lo + m * r // w, lo + m * (r + 1) // w
        keys: list[MixtureKey] = []
        for label, pos in zip(self._labels[a:b].tolist(), self._pos[a:b].tolist(), strict=True):
            cycle, offset = divmod(epoch * self.quota[label] + pos, self.sizes[label])
            index = int(self._permutation(label, cycle)[offset])
            keys.append(MixtureKey(label, index, cycle))
        return keys

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[list[MixtureKey]]:
        """This rank's micro-batches of ``epoch`` from ``start_step`` on (touches no cursor)."""
        for step in range(start_step, self.steps_per_epoch):
            yield self.plan(epoch, step)

    def __iter__(self) -> Iterator[list[MixtureKey]]:
        return self._iter_from(self.epoch, self.step)

    def _iter_from(self, epoch: int, start: int) -> Iterator[list[MixtureKey]]:
        for step in range(start, self.steps_per_epoch):
            batch = self.plan(epoch, step)
            self.epoch, self.step = (
                (epoch, step + 1) if step + 1 < self.steps_per_epoch else (epoch + 1, 0)
            )
            yield batch

    # -- checkpointing --------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What the schedule depends on besides the position; checked by `load_state_dict`."""
        return {
            "sizes": list(self.sizes),
            "names": list(self.names),
            "ratios": list(self.ratios),
            "mode": self.mode,
            "pattern": None if self.pattern is None else list(self.pattern),
            "micro_batch_size": self.micro_batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        """The cursor (next epoch and step to yield) and the schedule's fingerprint."""
        return {"epoch": self.epoch, "step": self.step, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved cursor; refuses a state saved under a different schedule."""
        saved = state.get("fingerprint", {})
        mine = self.fingerprint()
        differ = sorted(k for k in mine if saved.get(k) != mine[k])
        if differ:
            detail = ", ".join(f"{k}: saved {saved.get(k)!r}, now {mine[k]!r}" for k in differ)
            raise MixtureError(f"mixture state does not match this sampler ({detail})")
        self.set_position(int(state["epoch"]), int(state["step"]))

    def set_position(self, epoch: int, step: int) -> None:
        """Move the cursor: the next batch yielded is ``step`` of ``epoch``."""
        if epoch < 0 or not 0 <= step < self.steps_per_epoch:
            raise MixtureError(
                f"no step {step} in epoch {epoch}: epochs have {self.steps_per_epoch} steps"
            )
        self.epoch, self.step = epoch, step


class MixtureDataset:
    """Map-style dataset over mixture sources, indexed by :class:`MixtureKey` (for DataLoader workers)."""

    def __init__(self, sources: Sequence[SourceDataset]) -> None:
        self.sources = tuple(sources)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: MixtureKey) -> Sample:
        source, item, cycle = key
        return self.sources[source].get(item, cycle)


def build_datasets(
    mixture: MixtureConfig,
    open_store: Callable[[str], StoreReader],
    *,
    seed: int | None = None,
    guard: bool = False,
    include_metadata: bool = False,
) -> list[SourceDataset]:
    """One :class:`SourceDataset` per mixture source; each store path is opened once."""
    readers: dict[str, StoreReader] = {}
    datasets = []
    for source in mixture.sources:
        if source.store not in readers:
            readers[source.store] = open_store(source.store)
        datasets.append(
            SourceDataset(
                source,
                readers[source.store],
                seed=mixture.seed if seed is None else seed,
                guard=guard,
                include_metadata=include_metadata,
            )
        )
    return datasets


def _list_collate(batch: list[Sample]) -> list[Sample]:
    return batch


class MixtureLoader:
    """A DataLoader over a mixture that knows how many batches it has handed out.

    Iterating yields the collated micro-batches of the rest of the current epoch. ``state_dict``
    records the position after the last batch handed out (not what workers prefetched), so a
    restart from it continues with exactly the next batch.
    """

    def __init__(
        self,
        sampler: MixtureSampler,
        dataset: MixtureDataset,
        *,
        num_workers: int = 0,
        collate_fn: Callable[[list[Sample]], Any] | None = None,
        **loader_kwargs: Any,
    ) -> None:
        self.sampler = sampler
        self.dataset = dataset
        self.num_workers = num_workers
        self.collate_fn = collate_fn or _list_collate
        self.loader_kwargs = loader_kwargs
        self.epoch = sampler.epoch
        self.step = sampler.step
        self._loader: DataLoader[Sample] | None = None

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch

    def _dataloader(self) -> DataLoader[Sample]:
        if self._loader is None:
            try:
                from torch.utils.data import DataLoader
            except ImportError as exc:  # torch is optional for sgt-data
                raise ImportError(
                    "MixtureLoader needs torch: pip install 'sgt-data[loader]' (or torch)"
                ) from exc

            self._loader = DataLoader(
                self.dataset,  # type: ignore[arg-type]  # map-style by duck typing
                batch_sampler=self.sampler,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                **self.loader_kwargs,
            )
        return self._loader

    def __iter__(self) -> Iterator[Any]:
        loader = self._dataloader()
        self.sampler.set_position(self.epoch, self.step)
        for batch in loader:
            self.step += 1
            if self.step == self.sampler.steps_per_epoch:
                self.epoch, self.step = self.epoch + 1, 0
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out, and the schedule's fingerprint."""
        return {"epoch": self.epoch, "step": self.step, "fingerprint": self.sampler.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (checked against the schedule's fingerprint)."""
        self.sampler.load_state_dict(state)
        self.epoch, self.step = self.sampler.epoch, self.sampler.step


def build_loader(
    mixture: MixtureConfig,
    open_store: Callable[[str], StoreReader],
    *,
    micro_batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    seed: int | None = None,
    collate_fn: Callable[[list[Sample]], Any] | None = None,
    guard: bool = False,
    include_metadata: bool = False,
    **loader_kwargs: Any,
) -> MixtureLoader:
    """The training loader of one rank: sources opened, sampled by the mixture, sharded by rank.

    ``seed`` defaults to ``mixture.seed``; ``collate_fn`` defaults to returning the list of
    `Sample`s; ``guard=True`` checks every proxy target (see :mod:`sgt_data.guard`);
    ``include_metadata=True`` copies each store's per-sample metadata into the samples; other keyword
    arguments go to ``torch.utils.data.DataLoader`` (e.g. ``multiprocessing_context``,
    ``persistent_workers``, ``prefetch_factor``).
    """
    datasets = build_datasets(
        mixture, open_store, seed=seed, guard=guard, include_metadata=include_metadata
    )
    sampler = MixtureSampler.from_config(
        mixture,
        [len(d) for d in datasets],
        micro_batch_size=micro_batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
    )
    logger.info(
        "mixture of %s: %d steps per epoch, per-epoch samples %s (anchor %s)",
        ", ".join(sampler.names),
        sampler.steps_per_epoch,
        dict(zip(sampler.names, sampler.quota, strict=True)),
        sampler.names[sampler.anchor],
    )
    return MixtureLoader(
        sampler,
        MixtureDataset(datasets),
        num_workers=num_workers,
        collate_fn=collate_fn,
        **loader_kwargs,
    )
