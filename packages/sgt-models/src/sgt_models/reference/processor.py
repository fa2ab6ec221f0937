"""Tokenizer, image transforms and collation of the reference model.

The tokenizer is a byte-level BPE trained deterministically (same merges on every machine and
process) on a fixed built-in corpus, so that no hub access is needed; it is saved with the model.

Sequence layout (one row per sample, right-padded)::

    understanding: <bos> [<vision_start> <image>*N <vision_end>] prompt <answer> answer <eos>
    generative:    <bos> [<vision_start> <image>*N <vision_end>] instruction <generate>

The ``<image>`` placeholders are replaced by the vision encoder's (connected) embeddings. The loss
of understanding rows is the cross-entropy of ``answer <eos>``; generative rows condition the
generator on the LM's last hidden states of the whole row. Because the LM is causal, the prefix
``<bos> [image]`` of a row is exactly the row with its text removed, which is what classifier-free
guidance and condition dropout use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Self

import numpy as np
import torch
from numpy.typing import NDArray
from tokenizers import Tokenizer

from sgt_data import GENERATIVE_TASKS, Sample, TaskKind
from sgt_models._images import image_to_tensor

__all__ = [
    "SPECIAL_TOKENS",
    "ReferenceBatch",
    "ReferenceProcessor",
    "build_tokenizer",
    "images_to_tensor",
]

#: Special tokens, in id order (ids 0..8).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|image|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|answer|>",
    "<|generate|>",
    "<|user|>",
)

_CORPUS: tuple[str, ...] = (
    "Segment instances with different colors.",
    "Segment the image semantically, one colour per class.",
    "Draw the panoptic segmentation of this image.",
    "Draw the edges of the image.",
    "Predict the depth map of the image.",
    "Reconstruct the image.",
    "Generate an image of a red cube on the left of a blue sphere.",
    "What is in the image? How many objects are there? Which object is closer to the camera?",
    "Is there a person in the image? Yes. No. There are two cats and one dog.",
    "What colour is the car? The car is red, green, blue, yellow, white, black, orange or purple.",
    "Where is the cup? The cup is on the table, under the chair, next to the window.",
    "Answer with a single word or phrase. Answer the question using a short answer.",
    "a photo of a bench, a cat, a dog, a horse, a sheep, a cow, a bird, a bus, a train, a truck",
    "a person riding a bicycle on the street near a building with trees and a sky",
    "left right top bottom above below behind in front of larger smaller",
    "zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
    "A B C D (A) (B) (C) (D) option choice true false",
)

#: How many times the scene world's vocabulary is repeated in the tokenizer's training text: often
#: enough that BPE merges every class and colour name (with its leading space, as it appears inside
#: a question) into one token. Split into 2-6 byte pieces, some shared between classes ("a", "on"),
#: the class word of "Is there a hexagon in the image?" cannot be matched against the image by
#: attending to one position (docs/dev/sgt-mini-findings.md, fourth session).
_WORLD_WEIGHT = 5


def _world_corpus() -> tuple[str, ...]:
    """Sentences with the scene world's class names (singular and plural) and colour names."""
    from sgt_data.scenes import SCENE_CLASSES, SCENE_COLORS

    classes = ", ".join(f"a {name}" for name in SCENE_CLASSES)
    plurals = " ".join(f"{name}s" for name in SCENE_CLASSES)
    colours = " ".join(SCENE_COLORS)
    return (f"Is there {classes}; how many {plurals}? What color is the {colours}.",)


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on the built-in corpus (deterministic).

    The corpus holds generic instruction text and the scene world's vocabulary, so that each class
    and colour name inside a sentence is one token.
    """
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator(
        list(_CORPUS) * 4 + list(_world_corpus()) * _WORLD_WEIGHT, trainer
    )
    if tokenizer.get_vocab_size() > vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} > {vocab_size} tokens")
    return tokenizer


def images_to_tensor(
    images: Sequence[NDArray[np.uint8]], size: tuple[int, int], *, nearest: bool = False
) -> torch.Tensor:
    """HxWx3 uint8 images -> ``(B, 3, h, w)`` float32 in [-1, 1], resized to ``size`` if needed.

    ``nearest`` keeps the colours of rendered maps (segmentation palettes) intact.
    """
    if not images:
        return torch.zeros(0, 3, *size)
    return torch.stack([image_to_tensor(image, size, nearest=nearest) for image in images])


@dataclass
class ReferenceBatch:
    """A collated batch of the reference model (implements ``sgt_models.ModelBatch``).

    ``pixel_values`` holds the understanding images of the rows whose ``has_image`` is set, in row
    order. ``gen_rows`` indexes the generative rows; ``target_pixels`` and ``reference_pixels`` are
    aligned with it (``reference_pixels`` is zero where a row has no input image, and is only filled
    when the adapter feeds the input image to the generator as a reference).
    """

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long, right-padded
    labels: torch.Tensor  # (B, L) long, -100 where no loss
    cond_prefix: torch.Tensor  # (B,) long: length of "<bos> [image]" (the text-free condition)
    has_image: torch.Tensor  # (B,) bool
    pixel_values: torch.Tensor  # (B_img, 3, S, S) float
    gen_rows: torch.Tensor  # (B_gen,) long
    target_pixels: torch.Tensor  # (B_gen, 3, S, S) float
    reference_pixels: torch.Tensor | None  # (B_gen, 3, S, S) float or None
    task_names: tuple[str, ...]

    @property
    def num_samples(self) -> int:
        """Number of rows."""
        return int(self.input_ids.shape[0])

    @property
    def tasks(self) -> Sequence[str]:
        """Task kind of each row."""
        return self.task_names

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Self:
        """Move tensors to ``device``; floating tensors also to ``dtype`` if given."""
        changes: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                if dtype is not None and value.is_floating_point():
                    changes[f.name] = value.to(device=device, dtype=dtype)
                else:
                    changes[f.name] = value.to(device=device)
        return replace(self, **changes)  # type: ignore[arg-type]


class ReferenceProcessor:
    """Tokenises and transforms ``Sample``s into ``ReferenceBatch``es."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        image_size: int,
        num_image_tokens: int,
        max_text_tokens: int,
        reference_input: bool,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.max_text_tokens = max_text_tokens
        self.reference_input = reference_input
        ids = [self._token_id(t) for t in SPECIAL_TOKENS]
        (
            self.pad_id,
            self.bos_id,
            self.eos_id,
            self.image_id,
            self.vision_start_id,
            self.vision_end_id,
            self.answer_id,
            self.generate_id,
            self.user_id,
        ) = ids

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer lacks the special token {token!r}")
        return int(token_id)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens), truncated to ``max_text_tokens``."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return list(ids)[: self.max_text_tokens]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens dropped."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def prompt_ids(self, text: str, has_image: bool, end_token: int) -> tuple[list[int], int]:
        """Ids of ``<bos> [image] text <end>`` and the length of its ``<bos> [image]`` prefix."""
        prefix = [self.bos_id]
        if has_image:
            prefix += [self.vision_start_id, *[self.image_id] * self.num_image_tokens]
            prefix.append(self.vision_end_id)
        return [*prefix, *self.encode_text(text), end_token], len(prefix)

    def _prompt_text(self, sample: Sample) -> str:
        turns = [f"{turn.role}: {turn.text}\n" for turn in sample.history]
        return "".join(turns) + sample.instruction

    def collate(self, samples: Sequence[Sample]) -> ReferenceBatch:
        """Tokenise, resize and pad ``samples`` into one batch."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        size = (self.image_size, self.image_size)
        rows: list[list[int]] = []
        label_rows: list[list[int]] = []
        prefixes: list[int] = []
        und_images: list[NDArray[np.uint8]] = []
        gen_rows: list[int] = []
        targets: list[NDArray[np.uint8]] = []
        references: list[torch.Tensor] = []
        for i, sample in enumerate(samples):
            has_image = sample.image is not None
            if sample.image is not None:
                und_images.append(sample.image)
            if sample.task in GENERATIVE_TASKS:
                if sample.target_image is None:
                    raise ValueError(f"sample {sample.sample_id!r}: no target image")
                ids, prefix = self.prompt_ids(
                    self._prompt_text(sample), has_image, self.generate_id
                )
                labels = [-100] * len(ids)
                gen_rows.append(i)
                targets.append(sample.target_image)
                if self.reference_input:
                    if sample.image is None:
                        references.append(torch.zeros(1, 3, *size))
                    else:
                        references.append(images_to_tensor([sample.image], size))
            elif sample.task is TaskKind.UNDERSTANDING:
                if sample.answer is None:
                    raise ValueError(f"sample {sample.sample_id!r}: no answer")
                ids, prefix = self.prompt_ids(self._prompt_text(sample), has_image, self.answer_id)
                answer = [*self.encode_text(sample.answer), self.eos_id]
                labels = [-100] * len(ids) + answer
                ids = ids + answer
            else:  # pragma: no cover - TaskKind is closed
                raise ValueError(f"sample {sample.sample_id!r}: unsupported task {sample.task}")
            rows.append(ids)
            label_rows.append(labels)
            prefixes.append(prefix)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        labels_t = torch.full((len(rows), length), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (ids, labels) in enumerate(zip(rows, label_rows, strict=True)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels_t[i, : len(labels)] = torch.tensor(labels)
            mask[i, : len(ids)] = 1
        empty = torch.zeros(0, 3, *size)
        return ReferenceBatch(
            input_ids=input_ids,
            attention_mask=mask,
            labels=labels_t,
            cond_prefix=torch.tensor(prefixes, dtype=torch.long),
            has_image=torch.tensor([s.image is not None for s in samples]),
            pixel_values=images_to_tensor(und_images, size) if und_images else empty,
            gen_rows=torch.tensor(gen_rows, dtype=torch.long),
            target_pixels=images_to_tensor(targets, size, nearest=True) if targets else empty,
            reference_pixels=(torch.cat(references) if references else empty.clone())
            if self.reference_input
            else None,
            task_names=tuple(s.task.value for s in samples),
        )
