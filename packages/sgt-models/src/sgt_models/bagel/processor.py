"""Packing ``sgt_data.Sample``s into one BAGEL sequence (upstream's ``PackedDataset`` layout).

Every sample becomes a run of *splits* (upstream's ``sequence_plan`` items)::

    understanding : [vit image] [history turns] question answer(CE)
    proxy task    : [vae reference]* vit image  instruction  noised target(MSE)
    text-to-image :                             instruction  noised target(MSE)

(* only with ``config.vae_reference_input``: upstream's editing layout, the input image also
enters the generator as a clean VAE latent.) A text split is ``<|im_start|> ids <|im_end|>``; its
CE positions are ``<|im_start|> ids`` with labels ``ids <|im_end|>`` (shifted as upstream). An
image split is ``<|vision_start|> tokens <|vision_end|>``, all at one RoPE position. Attention:
text splits are causal, ViT and clean-latent splits are full inside themselves, the noised target
is full inside itself and hidden from every later token; samples never attend to each other.
Condition splits (instruction, ViT input, VAE reference of a generative sample) may be dropped
for classifier-free guidance; the model decides that at loss time (see ``BagelAdapter.loss``).

Everything here runs on the CPU and leaves only Python ints and index tensors for the forward,
so that the forward never has to synchronise with the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Self

import numpy as np
import torch
from numpy.typing import NDArray

from sgt_data import GENERATIVE_TASKS, Sample, TaskKind
from sgt_models._images import image_to_tensor as _image_to_tensor
from sgt_models.bagel.configuration import BagelArchitecture
from sgt_models.config import BagelAdapterConfig

__all__ = [
    "BagelBatch",
    "BagelProcessor",
    "SpecialTokens",
    "image_to_tensor",
    "patchify",
    "prepare_tokenizer",
    "resize_dims",
]

#: The tokens upstream's ``add_special_tokens`` guarantees (bos, eos, image start, image end).
_SPECIAL = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")

#: Condition-dropout kind of a split: none, instruction text, ViT image, VAE reference.
CFG_NONE, CFG_TEXT, CFG_VIT, CFG_VAE = 0, 1, 2, 3


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of ``<|im_start|>`` (bos), ``<|im_end|>`` (eos), ``<|vision_start|>``, ``<|vision_end|>``."""

    bos: int
    eos: int
    vision_start: int
    vision_end: int


def prepare_tokenizer(tokenizer: Any, vocab_size: int) -> tuple[SpecialTokens, int]:
    """Add BAGEL's four special tokens where missing (as upstream) and return their ids.

    Returns the ids and the number of tokens added. A token id outside the LLM's vocabulary (a
    tokenizer that needed new tokens the checkpoint has no embeddings for) raises ``ValueError``.
    """
    present = set(getattr(tokenizer, "all_special_tokens", []))
    vocab = tokenizer.get_vocab()
    missing = [t for t in _SPECIAL if t not in present and t not in vocab]
    added = int(tokenizer.add_tokens(missing)) if missing else 0
    ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in _SPECIAL]
    for token, token_id in zip(_SPECIAL, ids, strict=True):
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"tokenizer id {token_id} of {token!r} is outside the LLM vocabulary ({vocab_size})"
            )
    return SpecialTokens(*ids), added


def resize_dims(
    height: int, width: int, min_size: int, max_size: int, stride: int
) -> tuple[int, int]:
    """Upstream's ``MaxLongEdgeMinShortEdgeResize`` target ``(h, w)``: the long side at most
    ``max_size``, the short side at least ``min_size`` (the cap wins), both multiples of ``stride``.
    """

    def fit(value: float) -> int:
        return max(stride, int(round(value / stride) * stride))

    scale = min(max_size / max(width, height), 1.0)
    scale = max(scale, min_size / min(width, height))
    new_w, new_h = fit(round(width * scale)), fit(round(height * scale))
    if max(new_w, new_h) > max_size:
        scale = max_size / max(new_w, new_h)
        new_w, new_h = fit(round(new_w * scale)), fit(round(new_h * scale))
    return new_h, new_w


def image_to_tensor(
    image: NDArray[np.uint8], size: tuple[int, int], *, nearest: bool = False
) -> torch.Tensor:
    """An HxWx3 uint8 image -> ``(3, h, w)`` float32 in [-1, 1] at ``size`` (bicubic, as
    upstream's transforms; ``nearest`` keeps rendered palette maps exact)."""
    return _image_to_tensor(image, size, nearest=nearest, smooth="bicubic")


def patchify(image: torch.Tensor, patch: int) -> torch.Tensor:
    """``(C, H, W)`` -> ``(H/p * W/p, p * p * C)``, patches row-major, pixels ``(row, col, chan)``."""
    c, h, w = image.shape
    x = image.reshape(c, h // patch, patch, w // patch, patch)
    return torch.einsum("chpwq->hwpqc", x).reshape(-1, patch * patch * c)


def flattened_position_ids(rows: int, cols: int, side: int) -> torch.Tensor:
    """NaViT position ids ``row * side + col`` of a ``rows x cols`` patch grid (extrapolating)."""
    return (torch.arange(rows)[:, None] * side + torch.arange(cols)[None]).flatten()


@dataclass(frozen=True)
class _Split:
    """One item of a sample's sequence plan (sizes resolved, pixels not yet resized)."""

    kind: Literal["text", "vit", "vae"]
    ids: tuple[int, ...] = ()
    loss: bool = False
    cfg: int = CFG_NONE
    image: NDArray[np.uint8] | None = None
    size: tuple[int, int] = (0, 0)  # resized (h, w) in pixels
    nearest: bool = False

    def num_tokens(self, vit_patch: int, latent_down: int) -> int:
        if self.kind == "text":
            return len(self.ids) + 2
        unit = vit_patch if self.kind == "vit" else latent_down
        return (self.size[0] // unit) * (self.size[1] // unit) + 2


@dataclass
class BagelBatch:
    """One packed BAGEL sequence (implements ``sgt_models.ModelBatch``).

    Index tensors address the packed sequence of ``sequence_length`` tokens. Python ints and
    tuples (lengths, counts, shapes) are what the forward needs on the host, so it never reads a
    device tensor back. ``noise_seeds`` (one per sample, or ``None``) makes ``loss`` draw each
    sample's timesteps, noise and condition dropout from its own generator instead of the global
    RNG, so that a sample's loss does not depend on what it is packed with (tests).
    """

    sequence_length: int
    sample_lens: tuple[int, ...]
    task_names: tuple[str, ...]
    text_ids: torch.Tensor  # (N_text,) long
    text_indexes: torch.Tensor  # (N_text,) long
    position_ids: torch.Tensor  # (L,) long
    split_ids: torch.Tensor  # (L,) long, global split number of each token
    split_full: torch.Tensor  # (L,) bool: token of a full or noise split
    split_noise: torch.Tensor  # (L,) bool: token of a noised target split
    split_cfg: torch.Tensor  # (S,) long: CFG_* kind of each split
    split_lens: torch.Tensor  # (S,) long
    split_first: torch.Tensor  # (S,) long: first split of the split's sample
    split_sample: tuple[int, ...]  # sample of each split
    und_indexes: torch.Tensor  # (N_und,) long: text and ViT tokens
    gen_indexes: torch.Tensor  # (N_vae,) long: every VAE latent token
    vit_patches: torch.Tensor  # (N_vit, 3 p p) float
    vit_position_ids: torch.Tensor  # (N_vit,) long
    vit_token_indexes: torch.Tensor  # (N_vit,) long
    vit_seqlens: tuple[int, ...]
    vae_images: tuple[torch.Tensor, ...]  # (3, H, W) float in [-1, 1], sequence order
    vae_latent_hw: tuple[tuple[int, int], ...]  # latent-token grid of each VAE image
    vae_is_target: tuple[bool, ...]  # whether each VAE image is a noised target
    latent_position_ids: torch.Tensor  # (N_vae,) long
    vae_token_target: torch.Tensor  # (N_vae,) long: target ordinal, -1 for clean latents
    target_sample: tuple[int, ...]  # sample of each target image
    mse_rows: torch.Tensor  # (N_mse,) long: rows of the VAE token list that carry MSE
    mse_indexes: torch.Tensor  # (N_mse,) long: their sequence positions
    mse_target: torch.Tensor  # (N_mse,) long: target ordinal of each MSE token
    mse_sample: torch.Tensor  # (N_mse,) long
    ce_indexes: torch.Tensor  # (N_ce,) long: positions whose hidden state predicts a label
    ce_labels: torch.Tensor  # (N_ce,) long
    ce_sample: torch.Tensor  # (N_ce,) long
    num_ce_tokens: int
    num_mse_tokens: int
    ce_tokens_per_sample: tuple[int, ...]
    mse_tokens_per_sample: tuple[int, ...]
    noise_seeds: tuple[int, ...] | None = None

    @property
    def num_samples(self) -> int:
        """Number of packed samples."""
        return len(self.sample_lens)

    @property
    def tasks(self) -> Sequence[str]:
        """Task kind of each sample."""
        return self.task_names

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Self:
        """Move tensors to ``device``; floating tensors also to ``dtype`` if given."""

        def move(value: torch.Tensor) -> torch.Tensor:
            if dtype is not None and value.is_floating_point():
                return value.to(device=device, dtype=dtype)
            return value.to(device=device)

        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = move(value)
            elif isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
                changes[f.name] = tuple(move(v) for v in value)
        return replace(self, **changes)


class BagelProcessor:
    """Plans, measures and packs samples for a BAGEL architecture and adapter config."""

    def __init__(
        self,
        tokenizer: Any,
        tokens: SpecialTokens,
        arch: BagelArchitecture,
        config: BagelAdapterConfig,
    ) -> None:
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.arch = arch
        self.config = config

    # -- text and images -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens added)."""
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, special tokens dropped."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def vit_size(self, image: NDArray[np.uint8]) -> tuple[int, int]:
        """Pixel size the ViT sees an image at (stride 14, long side <= ``vit_image_size``)."""
        cfg = self.config
        return resize_dims(
            image.shape[0],
            image.shape[1],
            min(cfg.vit_min_size, cfg.vit_image_size),
            cfg.vit_image_size,
            self.arch.vit_patch_size,
        )

    def vae_size(self, image: NDArray[np.uint8]) -> tuple[int, int]:
        """Pixel size the VAE sees an image at (stride 16, ``vae_min_size``..``vae_max_size``)."""
        cfg = self.config
        return resize_dims(
            image.shape[0],
            image.shape[1],
            cfg.vae_min_size,
            cfg.vae_max_size,
            self.arch.latent_downsample,
        )

    def check_latent_grid(self, size: tuple[int, int], what: str) -> None:
        """Raise ``ValueError`` if an image's latent grid exceeds ``max_latent_size``."""
        down, side = self.arch.latent_downsample, self.arch.max_latent_size
        if size[0] // down > side or size[1] // down > side:
            raise ValueError(
                f"{what}: a {size[0]}x{size[1]} image needs a {size[0] // down}x{size[1] // down} "
                f"latent grid, more than max_latent_size={side} allows (at most {side * down} px)"
            )

    def check_vit_grid(self, size: tuple[int, int], what: str) -> None:
        """Raise ``ValueError`` if an image has more patches per side than the ViT positions."""
        p, side = self.arch.vit_patch_size, self.arch.vit_max_num_patch_per_side
        if size[0] // p > side or size[1] // p > side:
            raise ValueError(f"{what}: {size[0]}x{size[1]} exceeds the ViT's {side * p} px grid")

    # -- planning ---------------------------------------------------------------------------------

    def vit_split(self, image: NDArray[np.uint8], cfg: int, what: str) -> _Split:
        """A ViT image split."""
        size = self.vit_size(image)
        self.check_vit_grid(size, what)
        return _Split("vit", image=image, size=size, cfg=cfg)

    def vae_split(
        self, image: NDArray[np.uint8], *, target: bool, cfg: int, what: str, nearest: bool = False
    ) -> _Split:
        """A VAE latent split (a clean condition or the noised target)."""
        size = self.vae_size(image)
        self.check_latent_grid(size, what)
        return _Split("vae", image=image, size=size, loss=target, cfg=cfg, nearest=nearest)

    def plan(self, sample: Sample) -> list[_Split]:
        """The sequence plan of one sample."""
        what = f"sample {sample.sample_id!r}"
        splits: list[_Split] = []
        if sample.task is TaskKind.UNDERSTANDING:
            if sample.answer is None:
                raise ValueError(f"{what}: an understanding sample needs an answer")
            if sample.image is not None:
                splits.append(self.vit_split(sample.image, CFG_NONE, what))
            for turn in sample.history:
                ids = tuple(self.encode(turn.text))
                splits.append(_Split("text", ids=ids, loss=turn.role == "assistant"))
            splits.append(_Split("text", ids=tuple(self.encode(sample.instruction))))
            splits.append(_Split("text", ids=tuple(self.encode(sample.answer)), loss=True))
            return splits
        if sample.task not in GENERATIVE_TASKS:  # pragma: no cover - TaskKind is closed
            raise ValueError(f"{what}: unsupported task {sample.task}")
        if sample.target_image is None:
            raise ValueError(f"{what}: a {sample.task.value} sample needs a target image")
        if sample.image is not None:
            if self.config.vae_reference_input:
                splits.append(self.vae_split(sample.image, target=False, cfg=CFG_VAE, what=what))
            splits.append(self.vit_split(sample.image, CFG_VIT, what))
        splits.append(_Split("text", ids=tuple(self.encode(sample.instruction)), cfg=CFG_TEXT))
        splits.append(
            self.vae_split(sample.target_image, target=True, cfg=CFG_NONE, what=what, nearest=True)
        )
        return splits

    def estimate_num_tokens(self, sample: Sample) -> int:
        """Exactly how many packed tokens ``sample`` takes (for packing under a token budget)."""
        p, down = self.arch.vit_patch_size, self.arch.latent_downsample
        return sum(s.num_tokens(p, down) for s in self.plan(sample))

    # -- packing ----------------------------------------------------------------------------------

    def collate(
        self, samples: Sequence[Sample], noise_seeds: Sequence[int] | None = None
    ) -> BagelBatch:
        """Pack ``samples`` into one sequence; ``ValueError`` if empty or over ``max_num_tokens``."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        plans = [self.plan(s) for s in samples]
        return self.pack(plans, tuple(s.task.value for s in samples), noise_seeds)

    def pack(
        self,
        plans: Sequence[Sequence[_Split]],
        tasks: Sequence[str],
        noise_seeds: Sequence[int] | None = None,
    ) -> BagelBatch:
        """Pack sequence plans (one per sample) into a ``BagelBatch``."""
        if not plans:
            raise ValueError("cannot collate an empty list of samples")
        if noise_seeds is not None and len(noise_seeds) != len(plans):
            raise ValueError(f"got {len(noise_seeds)} noise seeds for {len(plans)} samples")
        p, down = self.arch.vit_patch_size, self.arch.latent_downsample
        total = sum(s.num_tokens(p, down) for plan in plans for s in plan)
        if total > self.config.max_num_tokens:
            raise ValueError(
                f"{len(plans)} samples pack into {total} tokens, more than "
                f"max_num_tokens={self.config.max_num_tokens}; pack fewer samples per step"
            )
        tk = self.tokens
        text_ids: list[int] = []
        text_idx: list[int] = []
        positions: list[int] = []
        split_ids: list[int] = []
        split_full: list[bool] = []
        split_noise: list[bool] = []
        split_cfg: list[int] = []
        split_lens: list[int] = []
        split_first: list[int] = []
        split_sample: list[int] = []
        vit_patches: list[torch.Tensor] = []
        vit_pos: list[torch.Tensor] = []
        vit_idx: list[int] = []
        vit_seqlens: list[int] = []
        vae_images: list[torch.Tensor] = []
        vae_hw: list[tuple[int, int]] = []
        vae_is_target: list[bool] = []
        latent_pos: list[torch.Tensor] = []
        vae_idx: list[int] = []
        vae_target: list[int] = []
        target_sample: list[int] = []
        mse_rows: list[int] = []
        mse_target: list[int] = []
        mse_sample: list[int] = []
        ce_idx: list[int] = []
        ce_labels: list[int] = []
        ce_sample: list[int] = []
        sample_lens: list[int] = []
        ce_per: list[int] = []
        mse_per: list[int] = []
        curr = 0
        for si, plan in enumerate(plans):
            start, rope, first = curr, 0, len(split_lens)
            n_ce = n_mse = 0
            for split in plan:
                sid = len(split_lens)
                begin = curr
                if split.kind == "text":
                    ids = [tk.bos, *split.ids, tk.eos]
                    text_ids += ids
                    text_idx += range(curr, curr + len(ids))
                    if split.loss:
                        ce_idx += range(curr, curr + len(ids) - 1)
                        ce_labels += [*split.ids, tk.eos]
                        ce_sample += [si] * (len(ids) - 1)
                        n_ce += len(ids) - 1
                    positions += range(rope, rope + len(ids))
                    rope += len(ids)
                    curr += len(ids)
                    full = noise = False
                else:
                    assert split.image is not None
                    pixels = image_to_tensor(split.image, split.size, nearest=split.nearest)
                    text_ids.append(tk.vision_start)
                    text_idx.append(curr)
                    curr += 1
                    if split.kind == "vit":
                        rows, cols = split.size[0] // p, split.size[1] // p
                        vit_patches.append(patchify(pixels, p))
                        vit_pos.append(
                            flattened_position_ids(rows, cols, self.arch.vit_max_num_patch_per_side)
                        )
                        vit_idx += range(curr, curr + rows * cols)
                        vit_seqlens.append(rows * cols)
                    else:
                        rows, cols = split.size[0] // down, split.size[1] // down
                        base = len(vae_idx)
                        vae_images.append(pixels)
                        vae_hw.append((rows, cols))
                        vae_is_target.append(split.loss)
                        latent_pos.append(
                            flattened_position_ids(rows, cols, self.arch.max_latent_size)
                        )
                        vae_idx += range(curr, curr + rows * cols)
                        if split.loss:
                            ordinal = len(target_sample)
                            target_sample.append(si)
                            vae_target += [ordinal] * (rows * cols)
                            mse_rows += range(base, base + rows * cols)
                            mse_target += [ordinal] * (rows * cols)
                            mse_sample += [si] * (rows * cols)
                            n_mse += rows * cols
                        else:
                            vae_target += [-1] * (rows * cols)
                    curr += rows * cols
                    text_ids.append(tk.vision_end)
                    text_idx.append(curr)
                    curr += 1
                    positions += [rope] * (curr - begin)
                    noise = split.kind == "vae" and split.loss
                    full = True
                    if not noise:  # upstream does not advance RoPE past a noised target
                        rope += 1
                n = curr - begin
                split_ids += [sid] * n
                split_full += [full] * n
                split_noise += [noise] * n
                split_cfg.append(split.cfg)
                split_lens.append(n)
                split_first.append(first)
                split_sample.append(si)
            sample_lens.append(curr - start)
            ce_per.append(n_ce)
            mse_per.append(n_mse)

        def longs(values: Sequence[int]) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.long)

        gen = set(vae_idx)
        und = [i for i in range(curr) if i not in gen]
        mse_positions = [vae_idx[r] for r in mse_rows]
        patch_dim = 3 * p * p
        return BagelBatch(
            sequence_length=curr,
            sample_lens=tuple(sample_lens),
            task_names=tuple(tasks),
            text_ids=longs(text_ids),
            text_indexes=longs(text_idx),
            position_ids=longs(positions),
            split_ids=longs(split_ids),
            split_full=torch.tensor(split_full, dtype=torch.bool),
            split_noise=torch.tensor(split_noise, dtype=torch.bool),
            split_cfg=longs(split_cfg),
            split_lens=longs(split_lens),
            split_first=longs(split_first),
            split_sample=tuple(split_sample),
            und_indexes=longs(und),
            gen_indexes=longs(vae_idx),
            vit_patches=torch.cat(vit_patches) if vit_patches else torch.zeros(0, patch_dim),
            vit_position_ids=torch.cat(vit_pos) if vit_pos else longs([]),
            vit_token_indexes=longs(vit_idx),
            vit_seqlens=tuple(vit_seqlens),
            vae_images=tuple(vae_images),
            vae_latent_hw=tuple(vae_hw),
            vae_is_target=tuple(vae_is_target),
            latent_position_ids=torch.cat(latent_pos) if latent_pos else longs([]),
            vae_token_target=longs(vae_target),
            target_sample=tuple(target_sample),
            mse_rows=longs(mse_rows),
            mse_indexes=longs(mse_positions),
            mse_target=longs(mse_target),
            mse_sample=longs(mse_sample),
            ce_indexes=longs(ce_idx),
            ce_labels=longs(ce_labels),
            ce_sample=longs(ce_sample),
            num_ce_tokens=len(ce_idx),
            num_mse_tokens=len(mse_rows),
            ce_tokens_per_sample=tuple(ce_per),
            mse_tokens_per_sample=tuple(mse_per),
            noise_seeds=tuple(int(s) for s in noise_seeds) if noise_seeds is not None else None,
        )


def attention_mask(
    split_ids: torch.Tensor, split_full: torch.Tensor, hidden: torch.Tensor
) -> torch.Tensor:
    """Bool ``(n, n)`` mask (True = attend) of one sample's tokens.

    A query sees earlier tokens (causal) and, in a full/noise split, its whole split; no query
    outside a split sees a token of a ``hidden`` split (a noised target, or a dropped condition).
    """
    n = split_ids.shape[0]
    i = torch.arange(n, device=split_ids.device)
    causal = i[:, None] >= i[None, :]
    same = split_ids[:, None] == split_ids[None, :]
    allowed = causal | (same & split_full[:, None])
    return allowed & ~(hidden[None, :] & ~same)


def ceil_to(value: int, unit: int) -> int:
    """``value`` rounded up to a multiple of ``unit``."""
    return int(math.ceil(value / unit) * unit)
