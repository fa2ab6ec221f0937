"""Tokenisation, image transforms and collation of OmniGen2 batches.

The MLLM's inputs are built like upstream's: the Qwen2.5-VL chat template written out by this
module (no ``AutoProcessor``, which needs torchvision), images through ``Qwen2VLImageProcessor``
(PIL backend) and the tokenizer of the ``processor/`` folder. Rows::

    generation:    <|im_start|>system\\n{generation prompt}<|im_end|>\\n
                   <|im_start|>user\\n[<|vision_start|><|image_pad|>*n<|vision_end|>]{instruction}<|im_end|>\\n
    understanding: <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
                   <|im_start|>user\\n[image]{question}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>

The cross-entropy covers ``{answer}<|im_end|>`` only. Which route an input image takes is decided
here, per task: for the generative proxy tasks (segmentation, edge, depth, reconstruction) the image
enters the MLLM only (SGT's design; ``vae_reference_input`` adds it as a VAE reference latent too);
an editing sample (text-to-image with an input image) keeps upstream's route: MLLM text only, the
image as a reference latent of the DiT.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Self

import numpy as np
import torch
from numpy.typing import NDArray

from sgt_data import GENERATIVE_TASKS, Sample, TaskKind
from sgt_models._images import image_to_tensor as _image_to_tensor
from sgt_models.omnigen2.configuration import (
    GENERATION_SYSTEM_PROMPT,
    UNDERSTANDING_SYSTEM_PROMPT,
)

__all__ = [
    "OmniGen2Batch",
    "OmniGen2Processor",
    "image_to_tensor",
    "target_size",
]

#: Pixel sizes of DiT inputs are multiples of this (VAE factor 8 times patch size 2).
SIZE_UNIT = 16


def target_size(height: int, width: int, max_pixels: int, max_side: int = 2048) -> tuple[int, int]:
    """Upstream's output size: scaled down to ``max_pixels`` and ``max_side``, multiple of 16."""
    scale = min(1.0, math.sqrt(max_pixels / (height * width)), max_side / max(height, width))
    h = max(SIZE_UNIT, int(height * scale) // SIZE_UNIT * SIZE_UNIT)
    w = max(SIZE_UNIT, int(width * scale) // SIZE_UNIT * SIZE_UNIT)
    return h, w


def image_to_tensor(
    image: NDArray[np.uint8], size: tuple[int, int], *, nearest: bool = False
) -> torch.Tensor:
    """An HxWx3 uint8 image -> ``(3, h, w)`` float32 in [-1, 1] at ``size`` (bilinear)."""
    return _image_to_tensor(image, size, nearest=nearest, smooth="bilinear")


def _move(value: Any, device: torch.device | str, dtype: torch.dtype | None) -> Any:
    if isinstance(value, torch.Tensor):
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device=device)
    if isinstance(value, list):
        return [_move(v, device, dtype) for v in value]
    return value


@dataclass
class OmniGen2Batch:
    """A collated OmniGen2 batch (implements ``sgt_models.ModelBatch``).

    One MLLM row per sample, right-padded. ``pixel_values``/``image_grid_thw`` hold the images the
    MLLM sees, in row order; ``position_ids`` are Qwen2.5-VL's 3-D (mrope) positions, computed at
    collate time on the CPU. ``gen_rows`` indexes the generative rows; ``targets`` (pixels, one
    ``(3, H, W)`` per generative row) and ``references`` (a list of ``(3, h, w)`` per generative
    row, empty when the DiT gets no reference latent) are aligned with it. The ``*_lengths`` and
    counts are plain ints taken at collate time, so that the loss never reads them back from a
    device.
    """

    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long
    labels: torch.Tensor  # (B, L) long, -100 where no loss
    position_ids: torch.Tensor  # (3, B, L) long
    pixel_values: torch.Tensor  # (patches, C * T * P * P) float
    image_grid_thw: torch.Tensor  # (images, 3) long
    gen_rows: torch.Tensor  # (G,) long
    targets: list[torch.Tensor]
    references: list[list[torch.Tensor]]
    task_names: tuple[str, ...]
    row_lengths: tuple[int, ...]
    answer_token_counts: tuple[int, ...]
    latent_factor: int

    @property
    def num_samples(self) -> int:
        """Number of rows."""
        return int(self.input_ids.shape[0])

    @property
    def tasks(self) -> Sequence[str]:
        """Task kind of each row."""
        return self.task_names

    @property
    def gen_row_list(self) -> list[int]:
        """``gen_rows`` as Python ints (collate-time data; no device read)."""
        return [i for i, t in enumerate(self.task_names) if TaskKind(t) in GENERATIVE_TASKS]

    @property
    def latent_token_counts(self) -> list[int]:
        """DiT tokens of each generative row's target (latent patches of 2x2)."""
        unit = self.latent_factor * 2
        return [(int(t.shape[1]) // unit) * (int(t.shape[2]) // unit) for t in self.targets]

    @property
    def latent_element_counts(self) -> list[int]:
        """Latent elements per channel of each generative row's target (height x width)."""
        f = self.latent_factor
        return [(int(t.shape[1]) // f) * (int(t.shape[2]) // f) for t in self.targets]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Self:
        """Move tensors (also inside lists) to ``device``; floating ones also to ``dtype``."""
        changes = {f.name: _move(getattr(self, f.name), device, dtype) for f in fields(self)}
        return replace(self, **changes)


class OmniGen2Processor:
    """Builds MLLM rows and DiT inputs from ``sgt_data.Sample``s."""

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any,
        *,
        rope_index: Any,
        image_token_id: int,
        latent_factor: int,
        max_text_tokens: int,
        max_output_pixels: int,
        max_input_pixels: int,
        vae_reference_input: bool,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self._rope_index = rope_index
        self.image_token_id = image_token_id
        self.latent_factor = latent_factor
        self.max_text_tokens = max_text_tokens
        self.max_output_pixels = max_output_pixels
        self.max_input_pixels = max_input_pixels
        self.vae_reference_input = vae_reference_input
        self.merge_size = int(getattr(image_processor, "merge_size", 2))
        self.im_end_id = self._token_id("<|im_end|>")
        self.pad_id = self._token_id("<|endoftext|>")

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the OmniGen2 tokenizer lacks the special token {token!r}")
        return int(token_id)

    # -- text ----------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _clip(self, text: str) -> str:
        """``text`` cut to ``max_text_tokens`` tokens (upstream truncates its prompts too)."""
        ids = self._encode(text)
        if len(ids) <= self.max_text_tokens:
            return text
        return str(self.tokenizer.decode(ids[: self.max_text_tokens]))

    def vision_text(self, num_tokens: int) -> str:
        """The placeholder run of one image of ``num_tokens`` merged tokens."""
        return "<|vision_start|>" + "<|image_pad|>" * num_tokens + "<|vision_end|>"

    def generation_prompt(self, instruction: str, vision: str = "") -> str:
        """Upstream's generation chat template (system prompt, user turn, no assistant turn)."""
        return (
            f"<|im_start|>system\n{GENERATION_SYSTEM_PROMPT}<|im_end|>\n"
            f"<|im_start|>user\n{vision}{self._clip(instruction)}<|im_end|>\n"
        )

    def understanding_prompt(
        self, question: str, vision: str = "", history: Sequence[Any] = ()
    ) -> str:
        """Qwen2.5-VL's chat template up to the assistant's answer."""
        text = f"<|im_start|>system\n{UNDERSTANDING_SYSTEM_PROMPT}<|im_end|>\n"
        for i, turn in enumerate(history):
            # the image belongs to the first user turn of a conversation
            prefix = vision if i == 0 and turn.role == "user" else ""
            text += f"<|im_start|>{turn.role}\n{prefix}{turn.text}<|im_end|>\n"
        if history and history[0].role == "user":
            vision = ""
        return text + (
            f"<|im_start|>user\n{vision}{self._clip(question)}<|im_end|>\n<|im_start|>assistant\n"
        )

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens dropped."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # -- images --------------------------------------------------------------------------------

    def mllm_images(
        self, images: Sequence[NDArray[np.uint8]]
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """``pixel_values``, ``image_grid_thw`` and the merged token count of each image."""
        if not images:
            return torch.zeros(0, 1176), torch.zeros(0, 3, dtype=torch.long), []
        out = self.image_processor(images=list(images), return_tensors="pt")
        grid = out["image_grid_thw"].long()
        counts = [int(n) // self.merge_size**2 for n in grid.prod(dim=1).tolist()]
        return out["pixel_values"].float(), grid, counts

    def output_pixels(self, image: NDArray[np.uint8], *, nearest: bool) -> torch.Tensor:
        """A target or reference image at its DiT size, in [-1, 1]."""
        size = target_size(int(image.shape[0]), int(image.shape[1]), self.max_output_pixels)
        return image_to_tensor(image, size, nearest=nearest)

    def reference_pixels(self, image: NDArray[np.uint8]) -> torch.Tensor:
        """An input image as a DiT reference (capped at ``max_input_pixels``), in [-1, 1]."""
        size = target_size(int(image.shape[0]), int(image.shape[1]), self.max_input_pixels)
        return image_to_tensor(image, size)

    # -- rows ----------------------------------------------------------------------------------

    def pad_rows(
        self, rows: Sequence[Sequence[int]], image_grid_thw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and 3-D ``position_ids`` of rows."""
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
        mm_types = (input_ids == self.image_token_id).long()
        if image_grid_thw.shape[0]:
            position_ids, _ = self._rope_index(
                input_ids, mm_types, image_grid_thw=image_grid_thw, attention_mask=mask
            )
        else:
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[None].repeat(3, 1, 1)
        return input_ids, mask, position_ids.long()

    def collate(self, samples: Sequence[Sample]) -> OmniGen2Batch:
        """Tokenise, resize and pad ``samples`` into one batch (on the CPU)."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        mllm_images: list[NDArray[np.uint8]] = []
        for sample in samples:
            if sample.image is not None and self._image_to_mllm(sample):
                mllm_images.append(sample.image)
        pixel_values, grid, counts = self.mllm_images(mllm_images)
        next_image = iter(counts)

        rows: list[list[int]] = []
        labels: list[list[int]] = []
        answers: list[int] = []
        targets: list[torch.Tensor] = []
        references: list[list[torch.Tensor]] = []
        gen_rows: list[int] = []
        for i, sample in enumerate(samples):
            vision = ""
            if sample.image is not None and self._image_to_mllm(sample):
                vision = self.vision_text(next(next_image))
            if sample.task in GENERATIVE_TASKS:
                if sample.target_image is None:
                    raise ValueError(f"sample {sample.sample_id!r}: no target image")
                ids = self._encode(self.generation_prompt(sample.instruction, vision))
                rows.append(ids)
                labels.append([-100] * len(ids))
                answers.append(0)
                gen_rows.append(i)
                proxy = sample.task is not TaskKind.TEXT_TO_IMAGE
                targets.append(self.output_pixels(sample.target_image, nearest=proxy))
                refs = []
                if sample.image is not None and self._image_to_reference(sample):
                    refs.append(self.reference_pixels(sample.image))
                references.append(refs)
            elif sample.task is TaskKind.UNDERSTANDING:
                if sample.answer is None:
                    raise ValueError(f"sample {sample.sample_id!r}: no answer")
                prompt = self._encode(
                    self.understanding_prompt(sample.instruction, vision, sample.history)
                )
                answer = [*self._encode(sample.answer)[: self.max_text_tokens], self.im_end_id]
                rows.append(prompt + answer)
                labels.append([-100] * len(prompt) + answer)
                answers.append(len(answer))
            else:  # pragma: no cover - TaskKind is closed
                raise ValueError(f"sample {sample.sample_id!r}: unsupported task {sample.task}")
        input_ids, mask, position_ids = self.pad_rows(rows, grid)
        labels_t = torch.full_like(input_ids, -100)
        for i, row in enumerate(labels):
            labels_t[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return OmniGen2Batch(
            input_ids=input_ids,
            attention_mask=mask,
            labels=labels_t,
            position_ids=position_ids,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            gen_rows=torch.tensor(gen_rows, dtype=torch.long),
            targets=targets,
            references=references,
            task_names=tuple(s.task.value for s in samples),
            row_lengths=tuple(len(r) for r in rows),
            answer_token_counts=tuple(answers),
            latent_factor=self.latent_factor,
        )

    def _is_edit(self, sample: Sample) -> bool:
        return sample.task is TaskKind.TEXT_TO_IMAGE and sample.image is not None

    def _image_to_mllm(self, sample: Sample) -> bool:
        # upstream feeds editing instructions to the MLLM as text only
        return not self._is_edit(sample)

    def _image_to_reference(self, sample: Sample) -> bool:
        if self._is_edit(sample):
            return True
        return sample.task in GENERATIVE_TASKS and self.vae_reference_input
