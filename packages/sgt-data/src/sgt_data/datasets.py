"""Per-source training datasets: one (store, task, variant) turned into model-agnostic `Sample`s.

A :class:`SourceDataset` reads from anything that satisfies the :class:`StoreReader` protocol
(``sgt_data.store.SampleStore`` on disk, or an in-memory reader in tests). What a sample holds
depends on the task:

- segmentation, edge, depth: the input image, an instruction from the task's prompt set (chosen
  per ``(seed, sample_id, epoch)``) and the rendered target map;
- reconstruction: the input image, a reconstruction instruction, and the input image as target;
- understanding: the image, the conversation's last user question as instruction, the last
  assistant reply as answer, and every earlier turn as history (for a single-turn conversation:
  the first question and its answer, no history);
- text-to-image: the caption (metadata key ``"caption"``) as instruction and the image as target.

``where`` keeps only the samples whose per-sample metadata matches (e.g. the question types of a
VQA store: ``{"question_type": ["existence", "counting"]}``); it reads each candidate's metadata
once, when the dataset is built. ``max_samples`` then keeps a fixed random subset of the eligible
samples, chosen by the seed and the source name; subsets are nested (the 2k subset lies inside
the 100k subset of the same seed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from sgt_data.errors import SgtDataError
from sgt_data.guard import check_target_arrays
from sgt_data.prompts import choose_instruction, stable_hash
from sgt_data.schema import (
    MixtureSource,
    Sample,
    StoreManifest,
    TaskKind,
    Turn,
)

__all__ = [
    "MemoryRecord",
    "MemoryStore",
    "NoMatchError",
    "SampleFormatError",
    "SourceDataset",
    "StoreReader",
    "permutation",
]

logger = logging.getLogger(__name__)

_CAP_STREAM = 0x5C0DE  # distinguishes the cap subset's random stream from the mixing streams


@runtime_checkable
class StoreReader(Protocol):
    """Read access to one sample store (implemented by ``sgt_data.store.SampleStore``)."""

    @property
    def name(self) -> str:
        """The manifest name of the store."""
        ...

    @property
    def manifest(self) -> StoreManifest:
        """The store's manifest."""
        ...

    def __len__(self) -> int:
        """Number of samples; indices run 0..n-1."""
        ...

    def sample_id(self, index: int) -> str:
        """Globally unique id of a sample, e.g. ``"coco-val:139"``."""
        ...

    def tasks(self, index: int) -> frozenset[tuple[TaskKind, str | None]]:
        """The (task, variant) pairs available for a sample."""
        ...

    def indices_with(self, task: TaskKind, variant: str | None = None) -> NDArray[np.int64]:
        """Sorted int64 indices of the samples having that task (and variant)."""
        ...

    def read_image(self, index: int) -> NDArray[np.uint8]:
        """The HxWx3 uint8 RGB input image."""
        ...

    def read_target(
        self, index: int, task: TaskKind, variant: str | None = None
    ) -> NDArray[np.uint8]:
        """The HxWx3 uint8 rendered target; KeyError naming index and task if absent."""
        ...

    def read_conversation(self, index: int) -> tuple[Turn, ...]:
        """The VQA turns (user/assistant alternating), or ``()``."""
        ...

    def read_metadata(self, index: int) -> dict[str, str | int | float | bool]:
        """Per-sample metadata (source ids, sizes, caption, ...)."""
        ...


class SampleFormatError(SgtDataError):
    """A stored sample cannot form a training sample (bad conversation, missing caption, ...)."""


class NoMatchError(SgtDataError):
    """A source's ``where`` filter matches none of the store's samples of its task."""


def permutation(n: int, *key: int) -> NDArray[np.int64]:
    """A permutation of ``range(n)`` determined by integer ``key``, stable across NumPy versions.

    Built from PCG64's raw output (bit generators are stream-stable, unlike Generator methods).
    """
    bits = np.random.PCG64(np.random.SeedSequence(list(key))).random_raw(n)
    return np.argsort(bits, kind="stable").astype(np.int64)


@dataclass(frozen=True)
class MemoryRecord:
    """One sample of a :class:`MemoryStore`."""

    sample_id: str
    image: NDArray[np.uint8]
    targets: Mapping[tuple[TaskKind, str | None], NDArray[np.uint8]] = field(default_factory=dict)
    conversation: tuple[Turn, ...] = ()
    metadata: Mapping[str, str | int | float | bool] = field(default_factory=dict)


class MemoryStore:
    """A :class:`StoreReader` over records held in memory (tests, demos, small synthetic sets).

    A record is an understanding sample if it has a conversation, and a text-to-image sample if
    its metadata holds a ``"caption"``.
    """

    def __init__(self, name: str, records: Sequence[MemoryRecord]) -> None:
        self._name = name
        self._records = tuple(records)
        self._tasks: list[frozenset[tuple[TaskKind, str | None]]] = []
        for record in self._records:
            tasks = set(record.targets)
            if record.conversation:
                tasks.add((TaskKind.UNDERSTANDING, None))
            if "caption" in record.metadata:
                tasks.add((TaskKind.TEXT_TO_IMAGE, None))
            self._tasks.append(frozenset(tasks))
        counts: dict[TaskKind, int] = {}
        for available in self._tasks:
            for task in {t for t, _ in available}:
                counts[task] = counts.get(task, 0) + 1
        self._manifest = StoreManifest(
            created_by="sgt-data MemoryStore",
            name=name,
            sources=(),
            num_samples=len(self._records),
            task_counts=counts,
            renderers=(),
            palette_seed=0,
        )

    @property
    def name(self) -> str:
        """The store's name."""
        return self._name

    @property
    def manifest(self) -> StoreManifest:
        """A manifest describing the records (no sources, renderers or checksums)."""
        return self._manifest

    def __len__(self) -> int:
        return len(self._records)

    def sample_id(self, index: int) -> str:
        """The record's id."""
        return self._records[index].sample_id

    def tasks(self, index: int) -> frozenset[tuple[TaskKind, str | None]]:
        """The (task, variant) pairs the record supports."""
        return self._tasks[index]

    def indices_with(self, task: TaskKind, variant: str | None = None) -> NDArray[np.int64]:
        """Sorted indices of records having that task and variant."""
        key = (task, variant)
        return np.array([i for i, t in enumerate(self._tasks) if key in t], dtype=np.int64)

    def read_image(self, index: int) -> NDArray[np.uint8]:
        """The record's input image."""
        return self._records[index].image

    def read_target(
        self, index: int, task: TaskKind, variant: str | None = None
    ) -> NDArray[np.uint8]:
        """The record's target for ``(task, variant)``; KeyError if it has none."""
        try:
            return self._records[index].targets[(task, variant)]
        except KeyError:
            raise KeyError(
                f"store {self._name!r}: sample {index} has no {task.value} target "
                f"(variant {variant!r})"
            ) from None

    def read_conversation(self, index: int) -> tuple[Turn, ...]:
        """The record's conversation, or ``()``."""
        return self._records[index].conversation

    def read_metadata(self, index: int) -> dict[str, str | int | float | bool]:
        """A copy of the record's metadata."""
        return dict(self._records[index].metadata)


class SourceDataset:
    """The samples of one mixture source: one store, one task and variant, optionally capped.

    ``dataset.get(i, epoch)`` returns the ``i``-th sample (``0 <= i < len(dataset)``) with the
    instruction of that epoch. With ``guard=True`` every segmentation, edge and depth sample is
    checked by :func:`sgt_data.guard.check_target_arrays` before it is returned.
    ``Sample.metadata`` holds ``store_index``, plus the store's per-sample metadata when
    ``include_metadata=True`` (off by default: it costs a store read per sample).
    """

    def __init__(
        self,
        source: MixtureSource,
        reader: StoreReader,
        *,
        seed: int = 0,
        guard: bool = False,
        include_metadata: bool = False,
    ) -> None:
        self.source = source
        self.reader = reader
        self.seed = seed
        self.guard = guard
        self.include_metadata = include_metadata
        self.task = source.task
        #: Segmentation without a variant means instance segmentation (the recipe's SA-1B maps).
        self.variant = (
            "instance"
            if source.task is TaskKind.SEGMENTATION and source.task_variant is None
            else source.task_variant
        )
        self.indices = self._eligible_indices()

    @property
    def name(self) -> str:
        """The mixture source's name (what `Sample.source` carries)."""
        return self.source.name

    def _eligible_indices(self) -> NDArray[np.int64]:
        task, variant = self.task, self.variant
        found = np.asarray(self.reader.indices_with(task, variant), dtype=np.int64)
        if task is TaskKind.RECONSTRUCTION and found.size == 0:
            # The target is the input image: every stored image is a reconstruction sample.
            found = np.arange(len(self.reader), dtype=np.int64)
        if found.size == 0:
            raise SgtDataError(
                f"source {self.source.name!r}: store {self.reader.name!r} at "
                f"{self.source.store!r} holds no {task.value} samples (variant {variant!r})"
            )
        if self.source.where is not None:
            found = self._matching(found)
        cap = self.source.max_samples
        if cap is not None and cap < found.size:
            order = permutation(found.size, self.seed, stable_hash(self.source.name), _CAP_STREAM)
            found = np.sort(found[order[:cap]])
        elif cap is not None:
            logger.info(
                "source %s: max_samples=%d >= the %d available; using all",
                self.source.name,
                cap,
                found.size,
            )
        return found

    def _matching(self, found: NDArray[np.int64]) -> NDArray[np.int64]:
        """The indices among ``found`` whose metadata satisfies ``source.where`` (one metadata
        read per candidate, once per dataset); none matching is an error naming what the store
        holds for each field."""
        where = self.source.where or {}
        # Match on (type, value) so that 1 does not select True, nor "1" select 1.
        wanted = {k: {(type(v), v) for v in values} for k, values in where.items()}
        seen: dict[str, set[str]] = {k: set() for k in where}
        keep = np.zeros(found.size, dtype=bool)
        for j, index in enumerate(found.tolist()):
            meta = self.reader.read_metadata(index)
            ok = True
            for key, allowed in wanted.items():
                value = meta.get(key)
                if value is None:
                    ok = False
                    continue
                if len(seen[key]) < 50:
                    seen[key].add(repr(value))
                if (type(value), value) not in allowed:
                    ok = False
            keep[j] = ok
        if not keep.any():
            held = "; ".join(
                f"{k}: {', '.join(sorted(v)) if v else 'absent'}" for k, v in seen.items()
            )
            raise NoMatchError(
                f"source {self.source.name!r}: no {self.task.value} sample of store "
                f"{self.reader.name!r} at {self.source.store!r} matches where="
                f"{ {k: list(v) for k, v in where.items()} }; the store holds {held}"
            )
        logger.info(
            "source %s: where=%s keeps %d of %d samples",
            self.source.name,
            where,
            int(keep.sum()),
            found.size,
        )
        return found[keep]

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i: int) -> Sample:
        return self.get(i, 0)

    def get(self, i: int, epoch: int) -> Sample:
        """The ``i``-th sample of this source, with its instruction for ``epoch``."""
        if not 0 <= i < self.indices.size:
            raise IndexError(f"source {self.source.name!r}: index {i} out of range {len(self)}")
        index = int(self.indices[i])
        task, variant = self.task, self.variant
        sample_id = self.reader.sample_id(index)
        metadata: dict[str, str | int | float | bool] = {}
        if self.include_metadata or task is TaskKind.TEXT_TO_IMAGE:
            metadata.update(self.reader.read_metadata(index))
        metadata["store_index"] = index
        image: NDArray[np.uint8] | None = None
        target: NDArray[np.uint8] | None = None
        answer: str | None = None
        history: tuple[Turn, ...] = ()
        if task is TaskKind.UNDERSTANDING:
            history, instruction, answer = self._split_conversation(index, sample_id)
            image = self.reader.read_image(index)
        elif task is TaskKind.TEXT_TO_IMAGE:
            caption = metadata.get("caption")
            if not isinstance(caption, str) or not caption.strip():
                raise SampleFormatError(
                    f"sample {sample_id!r} (index {index}) of store {self.reader.name!r} at "
                    f"{self.source.store!r}: text_to_image needs a non-empty 'caption' metadata"
                )
            instruction = caption
            target = self.reader.read_image(index)
        else:
            image = self.reader.read_image(index)
            if task is TaskKind.RECONSTRUCTION:
                target = image.copy()
            else:
                target = self.reader.read_target(index, task, variant)
                if self.guard:
                    check_target_arrays(
                        image, target, task=task, sample_id=sample_id, source=self.source.name
                    )
            instruction = choose_instruction(
                task, variant, seed=self.seed, sample_id=sample_id, epoch=epoch
            )
        return Sample(
            sample_id=sample_id,
            source=self.source.name,
            task=task,
            task_variant=variant,
            instruction=instruction,
            image=image,
            target_image=target,
            answer=answer,
            history=history,
            metadata=metadata,
        )

    def _split_conversation(self, index: int, sample_id: str) -> tuple[tuple[Turn, ...], str, str]:
        turns = self.reader.read_conversation(index)
        where = (
            f"sample {sample_id!r} (index {index}) of store {self.reader.name!r} at "
            f"{self.source.store!r}"
        )
        if len(turns) < 2 or len(turns) % 2:
            raise SampleFormatError(
                f"{where}: a conversation needs user/assistant pairs, got {len(turns)} turns"
            )
        for k, turn in enumerate(turns):
            expected = "user" if k % 2 == 0 else "assistant"
            if turn.role != expected:
                raise SampleFormatError(
                    f"{where}: turn {k} is from {turn.role!r}, expected {expected!r}"
                )
        return tuple(turns[:-2]), turns[-2].text, turns[-1].text
