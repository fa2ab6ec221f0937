"""The BAGEL adapter: BAGEL-7B-MoT trained and sampled the SGT way.

Module names equal the official ``ema.safetensors`` key names, so ``state_dict()`` is the
official layout (plus ``vae.*``: the FLUX autoencoder as a diffusers ``AutoencoderKL``, written
to ``ae.safetensors`` under FLUX's names). See ``processor.py`` for the packed sequence layout and
``_checkpoint.py`` for loading and saving.

Training (``loss``) follows upstream ``Bagel.forward``: one packed forward gives the CE of answer
tokens and the flow-matching MSE of noised target latents. Time convention ``noise_at_one``:
``t = shift(sigmoid(N(0, 1)))`` once per target image, ``x_t = (1 - t) x0 + t eps``, the model
regresses ``eps - x0``; condition latents enter at ``t = 0``. Each part is normalised by its token
count summed over ranks (``all_reduce`` of the count when ``torch.distributed`` is initialised; the
part is then multiplied by the world size, as upstream does, so that DeepSpeed's gradient mean is
the gradient of the global token mean). Randomness in ``loss`` (timesteps, noise, condition
dropout, in that order) comes from the default generator of the batch's device (the global RNG on
a CPU), so restoring the RNG state reproduces a step; ``generate`` uses its own generator.

No host synchronisation in ``loss``: lengths, counts and shapes come from the collated batch as
Python ints; ``per_task`` holds detached device tensors (read back when the trainer logs).

Differences from upstream, on purpose: VAE latents are the posterior mean (upstream samples);
condition dropout happens at loss time by hiding the dropped split from every other token (and,
for a dropped instruction, shifting the later RoPE positions as if it were absent), which equals
upstream's removal at packing time.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional

from sgt_models.bagel._layers import (
    AttentionPlan,
    KVCache,
    MLPConnector,
    NavitVisionModel,
    PackedQwen2ForCausalLM,
    PositionEmbedding,
    Routing,
    TimestepEmbedder,
)
from sgt_models.bagel.configuration import BagelArchitecture, BagelCheckpointError
from sgt_models.bagel.processor import (
    CFG_TEXT,
    BagelBatch,
    BagelProcessor,
    SpecialTokens,
    attention_mask,
    ceil_to,
    flattened_position_ids,
    image_to_tensor,
    patchify,
    prepare_tokenizer,
)
from sgt_models.config import BagelAdapterConfig
from sgt_models.flow import TimeConvention, inference_timesteps, sample_training_timesteps
from sgt_models.protocol import GenerationSettings, LossOutput, LossWeights

__all__ = ["BagelAdapter", "BagelCheckpointError"]

logger = logging.getLogger(__name__)

_CONVENTION: TimeConvention = "noise_at_one"
_BACKEND_LOGGED: set[str] = set()


def _log_backend_once(name: str, why: str) -> None:
    if name not in _BACKEND_LOGGED:
        _BACKEND_LOGGED.add(name)
        logger.info("BAGEL attention: %s (%s)", name, why)


def _per_task(
    sample_ce: torch.Tensor, sample_mse: torch.Tensor, batch: BagelBatch
) -> dict[str, dict[str, float | torch.Tensor]]:
    """Per-task CE / MSE (token means) as detached device tensors: no host read-back here."""
    out: dict[str, dict[str, float | torch.Tensor]] = {}
    for task in sorted(set(batch.task_names)):
        rows = [i for i, name in enumerate(batch.task_names) if name == task]
        index = torch.tensor(rows, device=sample_ce.device)
        entry: dict[str, float | torch.Tensor] = {"samples": float(len(rows))}
        ce_tokens = sum(batch.ce_tokens_per_sample[i] for i in rows)
        if ce_tokens:
            entry["ce"] = sample_ce.index_select(0, index).sum() / ce_tokens
        mse_tokens = sum(batch.mse_tokens_per_sample[i] for i in rows)
        if mse_tokens:
            entry["mse"] = sample_mse.index_select(0, index).sum() / mse_tokens
        out[task] = entry
    return out


def _count_scale(count: int, device: torch.device) -> torch.Tensor | float:
    """``world / global_count`` (one ``all_reduce``) or ``1 / count`` outside distributed runs."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        total = torch.tensor(float(count), device=device)
        dist.all_reduce(total)
        return dist.get_world_size() / total.clamp_min(1.0)
    return 1.0 / max(count, 1)


@dataclass
class _Context:
    """A prefilled inference context: per-layer keys/values, its length and next RoPE position."""

    cache: KVCache | None
    length: int
    next_position: int


class BagelAdapter(nn.Module):
    """BAGEL-7B-MoT as an SGT adapter; implements ``sgt_models.UnifiedModelAdapter``.

    Load with ``BagelAdapter.from_pretrained(folder)`` (an official BAGEL folder or one SGT
    saved) or ``sgt_models.build_adapter(BagelAdapterConfig(model_path=...))``.
    """

    kind: ClassVar[str] = "bagel"

    def __init__(
        self,
        config: BagelAdapterConfig,
        arch: BagelArchitecture,
        tokenizer: Any,
        *,
        passthrough: Mapping[str, bytes] | None = None,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.config = config
        self.arch = arch
        h = arch.hidden_size
        self.language_model = PackedQwen2ForCausalLM(arch)
        self.vit_model = NavitVisionModel(arch)
        self.connector = MLPConnector(arch.vit_hidden_size, h, arch.connector_act)
        self.vit_pos_embed = PositionEmbedding(arch.vit_max_num_patch_per_side, h)
        self.time_embedder = TimestepEmbedder(h)
        self.vae2llm = nn.Linear(arch.latent_channels, h)
        self.llm2vae = nn.Linear(h, arch.latent_channels)
        self.latent_pos_embed = PositionEmbedding(arch.max_latent_size, h)
        vae: Any = AutoencoderKL(**arch.vae.diffusers_kwargs())  # type: ignore[no-untyped-call]
        self.vae: Any = vae
        self.language_model.model.gradient_checkpointing = config.gradient_checkpointing
        self.tokenizer = tokenizer
        if tokenizer is not None:
            tokens, added = prepare_tokenizer(tokenizer, arch.vocab_size)
            if added:
                logger.info("added %d BAGEL special tokens to the tokenizer", added)
        else:  # a shape-only model (``sgt-models check``): no text in or out
            tokens = SpecialTokens(0, 1, 2, 3)
        self.tokens = tokens
        self.processor = BagelProcessor(tokenizer, tokens, arch, config)
        self.passthrough: dict[str, bytes] = dict(passthrough or {})
        self.vae.eval()

    # -- persistence --------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        *,
        config: BagelAdapterConfig | None = None,
    ) -> Self:
        """Load an official BAGEL folder or one ``save_pretrained`` wrote (RNG state untouched)."""
        from sgt_models.bagel._checkpoint import load_bagel

        return load_bagel(cls, Path(path), device=device, dtype=dtype, config=config)

    def save_pretrained(self, path: str | Path) -> None:
        """Write an official-layout BAGEL folder plus ``sgt_adapter.json`` (see ``_checkpoint``)."""
        from sgt_models.bagel._checkpoint import save_bagel

        save_bagel(self, Path(path))

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` without the VAE: exactly the tensors of an official ``ema.safetensors``."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("vae.")}

    def merge_lora(self) -> Self:
        """Fold LoRA adapters into their base weights (official names again); returns ``self``."""
        from sgt_models.bagel._lora import merge_lora

        merge_lora(self)
        return self

    # -- structure ----------------------------------------------------------------------------

    @staticmethod
    def group_of(name: str) -> str:
        """Parameter group of a parameter name (``PARAMETER_GROUPS``)."""
        if name.startswith("vit_model."):
            return "vision_encoder"
        if name.startswith("connector."):
            return "connector"
        if name.startswith("vae."):
            return "vae"
        if name.startswith(("time_embedder.", "vae2llm.", "llm2vae.", "latent_pos_embed.")):
            return "generator"
        if "_moe_gen" in name:
            return "generator"
        return "llm"

    def parameter_groups(self) -> Mapping[str, list[torch.nn.Parameter]]:
        """Parameters by group: vision_encoder, connector, llm (understanding expert, embeddings,
        lm_head), generator (``*_moe_gen`` expert, time embedder, vae2llm/llm2vae), vae."""
        groups: dict[str, list[torch.nn.Parameter]] = {
            g: [] for g in ("vision_encoder", "connector", "llm", "generator", "vae")
        }
        for name, p in self.named_parameters():
            groups[self.group_of(name)].append(p)
        return groups

    def apply_freeze_policy(self) -> None:
        """Set ``requires_grad`` from ``config.freeze`` (and LoRA); the VAE is always frozen."""
        frozen = self.config.freeze.frozen_groups()
        lora = self.config.lora_rank is not None
        for name, p in self.named_parameters():
            trainable = not frozen[self.group_of(name)]
            if lora:  # only the adapters train; the base weights stay as loaded
                trainable = trainable and "lora_" in name
            p.requires_grad_(trainable)
        self.vae.eval()

    def train(self, mode: bool = True) -> Self:
        """Switch train/eval mode; the VAE always stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    @property
    def _device(self) -> torch.device:
        device: torch.device = self.vae2llm.bias.device
        return device

    @property
    def _dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.vae2llm.bias.dtype
        return dtype

    # -- data ---------------------------------------------------------------------------------

    def collate(
        self, samples: Sequence[Any], noise_seeds: Sequence[int] | None = None
    ) -> BagelBatch:
        """Pack ``sgt_data.Sample``s into one ``BagelBatch`` (on the CPU)."""
        return self.processor.collate(samples, noise_seeds=noise_seeds)

    def estimate_num_tokens(self, sample: Any) -> int:
        """Packed tokens ``sample`` takes (for the trainer's ``expected/max_num_tokens`` packing)."""
        return self.processor.estimate_num_tokens(sample)

    # -- building blocks ----------------------------------------------------------------------

    def _attention_backend(self, device: torch.device) -> str:
        choice = self.config.attention_backend
        if choice == "sdpa":
            return "sdpa"
        if choice == "flex":
            _log_backend_once("flex", "attention_backend='flex'")
            return "flex"
        if device.type == "cuda":
            try:
                import torch.nn.attention.flex_attention  # noqa: F401
            except ImportError:
                _log_backend_once("sdpa", "FlexAttention is not available in this torch")
                return "sdpa"
            _log_backend_once("flex", "CUDA device with FlexAttention")
            return "flex"
        _log_backend_once("sdpa", f"{device.type} device")
        return "sdpa"

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled FLUX latents ``(B, 16, H/8, W/8)`` of ``(B, 3, H, W)`` pixels in [-1, 1]."""
        cfg = self.arch.vae
        vae_dtype = self.vae.decoder.conv_in.weight.dtype
        dist = self.vae.encode(pixels.to(vae_dtype)).latent_dist
        latents: torch.Tensor = (dist.mode() - cfg.shift_factor) * cfg.scale_factor
        return latents

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] of scaled latents (inverse of ``encode_latents``)."""
        cfg = self.arch.vae
        vae_dtype = self.vae.decoder.conv_in.weight.dtype
        z = latents / cfg.scale_factor + cfg.shift_factor
        pixels: torch.Tensor = self.vae.decode(z.to(vae_dtype)).sample
        return pixels.float()

    def _latent_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """``(16, 2h, 2w)`` -> ``(h * w, 64)`` latent tokens (2x2 patches, ``(row, col, chan)``)."""
        return patchify(latents, self.arch.latent_patch_size)

    def _latent_image(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Inverse of ``_latent_tokens``: ``(h * w, 64)`` -> ``(16, 2h, 2w)``."""
        p, z = self.arch.latent_patch_size, self.arch.vae.z_channels
        h, w = hw
        x = tokens.reshape(h, w, p, p, z)
        return torch.einsum("hwpqc->chpwq", x).reshape(z, h * p, w * p)

    def _clean_tokens(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Latent tokens of images ``(3, H, W)``, concatenated; same-size images encode together."""
        if not images:
            return torch.zeros(0, self.arch.latent_channels, device=self._device, dtype=self._dtype)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(i)
        latents: list[torch.Tensor | None] = [None] * len(images)
        for members in groups.values():
            encoded = self.encode_latents(torch.stack([images[i] for i in members]))
            for j, i in enumerate(members):
                latents[i] = encoded[j]
        tokens = [self._latent_tokens(lat) for lat in latents if lat is not None]
        return torch.cat(tokens).to(self._dtype)

    def _vit_embeddings(
        self, patches: torch.Tensor, position_ids: torch.Tensor, seqlens: Sequence[int]
    ) -> torch.Tensor:
        feats = self.vit_model(patches.to(self._dtype), position_ids, seqlens)
        out: torch.Tensor = self.connector(feats) + self.vit_pos_embed(position_ids).to(feats.dtype)
        return out

    def _latent_embeddings(
        self, x: torch.Tensor, t: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = (
            self.vae2llm(x.to(self._dtype))
            + self.time_embedder(t)
            + self.latent_pos_embed(position_ids).to(self._dtype)
        )
        return out

    def _idle_vision_zero(self) -> torch.Tensor:
        """ZeRO-3: the ViT and connector on one constant patch, times zero (no ViT image here)."""
        dim = 3 * self.arch.vit_patch_size**2
        patch = torch.zeros(1, dim, device=self._device, dtype=self._dtype)
        pos = torch.zeros(1, dtype=torch.long, device=self._device)
        return (self._vit_embeddings(patch, pos, (1,)).float() * 0.0).sum()

    # -- loss ---------------------------------------------------------------------------------

    def forward(self, batch: BagelBatch, weights: LossWeights | None = None) -> LossOutput:
        """Same as ``loss`` (so that a DeepSpeed engine can be called with the batch alone)."""
        return self.loss(batch, weights)

    def _draw(
        self, batch: BagelBatch, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-target times, per-MSE-token noise and per-split dropout draws (in that order)."""
        cfg = self.config
        n_targets, n_splits = len(batch.target_sample), len(batch.split_sample)
        width = self.arch.latent_channels
        mse_per_target = [
            h * w
            for (h, w), target in zip(batch.vae_latent_hw, batch.vae_is_target, strict=True)
            if target
        ]

        def times(n: int, generator: torch.Generator | None, tokens: list[int]) -> torch.Tensor:
            if not cfg.flow.dynamic_shift:
                return sample_training_timesteps(
                    n, cfg.flow, _CONVENTION, generator=generator, device=device
                )
            parts = [
                sample_training_timesteps(
                    1, cfg.flow, _CONVENTION, num_tokens=k, generator=generator, device=device
                )
                for k in tokens
            ]
            return torch.cat(parts) if parts else torch.zeros(0, device=device)

        if batch.noise_seeds is None:
            t = times(n_targets, None, mse_per_target)
            noise = torch.randn(batch.num_mse_tokens, width, device=device)
            u = torch.rand(n_splits, device=device)
            return t, noise, u
        t_parts, noise_parts, u_parts = [], [], []
        for s, seed in enumerate(batch.noise_seeds):
            g = torch.Generator(device=device).manual_seed(seed)
            mine = [j for j, owner in enumerate(batch.target_sample) if owner == s]
            t_parts.append(times(len(mine), g, [mse_per_target[j] for j in mine]))
            n_tok = sum(mse_per_target[j] for j in mine)
            noise_parts.append(torch.randn(n_tok, width, device=device, generator=g))
            n_mine = sum(1 for owner in batch.split_sample if owner == s)
            u_parts.append(torch.rand(n_mine, device=device, generator=g))
        return torch.cat(t_parts), torch.cat(noise_parts), torch.cat(u_parts)

    def _training_plan(
        self, batch: BagelBatch, hidden: torch.Tensor, device: torch.device
    ) -> AttentionPlan:
        """Per-sample masks (SDPA) or one FlexAttention block mask over the pack."""
        if self._attention_backend(device) == "flex":
            from torch.nn.attention.flex_attention import create_block_mask

            bounds = torch.tensor([0, *np.cumsum(batch.sample_lens).tolist()], device=device)
            length = batch.sequence_length
            doc = torch.bucketize(torch.arange(length, device=device), bounds[1:], right=True)
            split, full = batch.split_ids, batch.split_full

            def mask_mod(b: Any, h: Any, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
                same = split[q] == split[k]
                seen = (q >= k) | (same & full[q])
                return seen & ~(hidden[k] & ~same) & (doc[q] == doc[k])

            block = create_block_mask(
                mask_mod, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device
            )
            return AttentionPlan(spans=[], block_mask=block)
        spans: list[tuple[int, int, int, int, torch.Tensor | None]] = []
        start = 0
        for n in batch.sample_lens:
            end = start + n
            mask = attention_mask(
                batch.split_ids[start:end], batch.split_full[start:end], hidden[start:end]
            )
            spans.append((start, end, start, end, mask))
            start = end
        return AttentionPlan(spans=spans)

    def loss(self, batch: BagelBatch, weights: LossWeights | None = None) -> LossOutput:
        """CE of answer tokens plus flow-matching MSE of noised target latents, one forward."""
        weights = weights if weights is not None else LossWeights()
        cfg = self.config
        device, dtype = self._device, self._dtype
        batch = batch.to(device)
        grad = torch.is_grad_enabled()
        idle = torch.zeros((), device=device)

        # randomness first, in a fixed order: times, noise, condition dropout
        t_img, noise, u = self._draw(batch, device)
        drop_p = torch.tensor(
            [0.0, cfg.text_cond_dropout, cfg.vit_cond_dropout, cfg.vae_cond_dropout], device=device
        )
        dropped = (u < drop_p[batch.split_cfg]) & self.training
        hidden_tok = batch.split_noise | dropped[batch.split_ids]
        # a dropped instruction shifts later RoPE positions back, as if it had not been packed
        text_drop = (dropped & (batch.split_cfg == CFG_TEXT)).long() * batch.split_lens
        before = text_drop.cumsum(0) - text_drop
        offset = (before - before[batch.split_first])[batch.split_ids]
        position_ids = batch.position_ids - offset

        # the packed input sequence
        h = self.arch.hidden_size
        seq = torch.zeros(batch.sequence_length, h, device=device, dtype=dtype)
        seq = seq.index_copy(
            0, batch.text_indexes, self.language_model.model.embed_tokens(batch.text_ids)
        )
        if batch.vit_seqlens:
            vit = self._vit_embeddings(batch.vit_patches, batch.vit_position_ids, batch.vit_seqlens)
            seq = seq.index_copy(0, batch.vit_token_indexes, vit.to(dtype))
        elif grad:
            idle = idle + self._idle_vision_zero()
        x0 = self._clean_tokens(batch.vae_images)
        t_tok = torch.zeros(x0.shape[0], device=device)
        target_tok = batch.vae_token_target.clamp_min(0)
        t_tok = torch.where(batch.vae_token_target >= 0, t_img[target_tok], t_tok)
        x0_mse = x0.index_select(0, batch.mse_rows).float()
        t_mse = t_img[batch.mse_target][:, None]
        x_t = x0.index_copy(0, batch.mse_rows, ((1.0 - t_mse) * x0_mse + t_mse * noise).to(dtype))
        latents = self._latent_embeddings(x_t, t_tok, batch.latent_position_ids)
        seq = seq.index_copy(0, batch.gen_indexes, latents.to(dtype))

        routing = Routing(und=batch.und_indexes, gen=batch.gen_indexes)
        plan = self._training_plan(batch, hidden_tok, device)
        out, _ = self.language_model.model(seq, position_ids, routing, plan)

        # cross-entropy: the hidden state at ce_indexes predicts ce_labels
        logits = self.language_model.lm_head(out.index_select(0, batch.ce_indexes)).float()
        token_ce = functional.cross_entropy(logits, batch.ce_labels, reduction="none")
        ce = token_ce.sum() * _count_scale(batch.num_ce_tokens, device)

        # flow matching: llm2vae regresses eps - x0 at the noised target tokens
        pred = self.llm2vae(out.index_select(0, batch.mse_indexes)).float()
        token_mse = ((pred - (noise - x0_mse)) ** 2).mean(dim=-1)
        mse = token_mse.sum() * _count_scale(batch.num_mse_tokens, device)

        total = weights.ce * ce + weights.mse * mse + idle
        n = batch.num_samples
        sample_ce = torch.zeros(n, device=device).index_add(0, batch.ce_sample, token_ce.detach())
        sample_mse = torch.zeros(n, device=device).index_add(
            0, batch.mse_sample, token_mse.detach()
        )
        return LossOutput(
            total=total,
            parts={"ce": ce, "mse": mse},
            token_counts={"ce": batch.num_ce_tokens, "mse": batch.num_mse_tokens},
            per_task=_per_task(sample_ce, sample_mse, batch),
        )

    # -- inference ----------------------------------------------------------------------------

    def _context_inputs(
        self, parts: Sequence[tuple[str, Any]]
    ) -> tuple[list[torch.Tensor], list[int], list[int], list[bool], list[int], int, int]:
        """Embeddings, positions, split ids, full flags, gen-token indexes, length, next RoPE."""
        device, tk = self._device, self.tokens
        pieces: list[torch.Tensor] = []
        positions: list[int] = []
        split_ids: list[int] = []
        full: list[bool] = []
        gen: list[int] = []
        rope = curr = 0
        embed = self.language_model.model.embed_tokens
        for sid, (kind, value) in enumerate(parts):
            begin = curr
            if kind == "text":
                ids = torch.tensor([tk.bos, *value, tk.eos], device=device)
                pieces.append(embed(ids))
                positions += range(rope, rope + len(ids))
                rope += len(ids)
                curr += len(ids)
                is_full = False
            else:
                pieces.append(embed(torch.tensor([tk.vision_start], device=device)))
                if kind == "vit":
                    size = self.processor.vit_size(value)
                    p = self.arch.vit_patch_size
                    pix = image_to_tensor(value, size).to(device)
                    rows, cols = size[0] // p, size[1] // p
                    pos = flattened_position_ids(rows, cols, self.arch.vit_max_num_patch_per_side)
                    pieces.append(
                        self._vit_embeddings(patchify(pix, p), pos.to(device), (rows * cols,))
                    )
                else:
                    size = self.processor.vae_size(value)
                    self.processor.check_latent_grid(size, "reference image")
                    down = self.arch.latent_downsample
                    rows, cols = size[0] // down, size[1] // down
                    tokens = self._clean_tokens([image_to_tensor(value, size).to(device)])
                    pos = flattened_position_ids(rows, cols, self.arch.max_latent_size)
                    t0 = torch.zeros(tokens.shape[0], device=device)
                    pieces.append(self._latent_embeddings(tokens, t0, pos.to(device)))
                    gen += range(curr + 1, curr + 1 + rows * cols)
                pieces.append(embed(torch.tensor([tk.vision_end], device=device)))
                curr += rows * cols + 2
                positions += [rope] * (curr - begin)
                rope += 1
                is_full = True
            split_ids += [sid] * (curr - begin)
            full += [is_full] * (curr - begin)
        return pieces, positions, split_ids, full, gen, curr, rope

    def _run(
        self,
        pieces: list[torch.Tensor],
        positions: list[int],
        split_ids: list[int],
        full: list[bool],
        gen: list[int],
    ) -> tuple[torch.Tensor, KVCache]:
        device = self._device
        n = len(positions)
        x = torch.cat([piece.to(self._dtype) for piece in pieces])
        mask = attention_mask(
            torch.tensor(split_ids, device=device),
            torch.tensor(full, device=device),
            torch.zeros(n, dtype=torch.bool, device=device),
        )
        plan = AttentionPlan(spans=[(0, n, 0, n, mask)])
        routing = self._routing(n, gen, device)
        out, kv = self.language_model.model(
            x, torch.tensor(positions, device=device), routing, plan
        )
        return out, kv

    def _prefill(self, parts: Sequence[tuple[str, Any]]) -> _Context:
        """Run a context of ``("text", ids)``, ``("vit", image)`` and ``("vae", image)`` parts.

        Text parts are ``<|im_start|> ids <|im_end|>`` (causal); image parts are one full split
        at one RoPE position, VAE images clean latents (``t = 0``) through the generation expert.
        """
        if not parts:
            return _Context(cache=None, length=0, next_position=0)
        pieces, positions, split_ids, full, gen, length, rope = self._context_inputs(parts)
        _, kv = self._run(pieces, positions, split_ids, full, gen)
        return _Context(cache=kv, length=length, next_position=rope)

    @staticmethod
    def _routing(length: int, gen: Sequence[int], device: torch.device) -> Routing:
        if not gen:
            return Routing(und=None, gen=None)
        gen_set = set(gen)
        und = [i for i in range(length) if i not in gen_set]
        return Routing(
            und=torch.tensor(und, dtype=torch.long, device=device),
            gen=torch.tensor(list(gen), dtype=torch.long, device=device),
        )

    def _extend(
        self,
        context: _Context,
        x: torch.Tensor,
        positions: torch.Tensor,
        routing: Routing,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Hidden states of new tokens that see the whole context (and ``mask`` among themselves)."""
        n = x.shape[0]
        if mask is not None and context.length:
            seen = torch.ones(n, context.length, dtype=torch.bool, device=x.device)
            mask = torch.cat([seen, mask], dim=1)
        plan = AttentionPlan(spans=[(0, n, 0, context.length + n, mask)])
        out, kv = self.language_model.model(x, positions, routing, plan, past=context.cache)
        return out, kv

    @staticmethod
    def _append(context: _Context, kv: KVCache, n: int) -> _Context:
        assert context.cache is not None
        cache = [
            (torch.cat([k0, k1]), torch.cat([v0, v1]))
            for (k0, v0), (k1, v1) in zip(context.cache, kv, strict=True)
        ]
        return _Context(
            cache=cache, length=context.length + n, next_position=context.next_position + n
        )

    @torch.no_grad()
    def answer(
        self,
        images: Sequence[NDArray[np.uint8]],
        questions: Sequence[str],
        max_new_tokens: int = 32,
        *,
        use_cache: bool = True,
    ) -> list[str]:
        """Greedy answers to one question per image (``use_cache=False`` recomputes every step)."""
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images for {len(questions)} questions")
        tk = self.tokens
        answers = []
        for image, question in zip(images, questions, strict=True):
            parts: list[tuple[str, Any]] = [
                ("vit", image),
                ("text", self.processor.encode(question)),
            ]
            generated: list[int] = []
            if use_cache:
                context = self._prefill(parts)
                token = tk.bos
                for _ in range(max_new_tokens):
                    x = self.language_model.model.embed_tokens(
                        torch.tensor([token], device=self._device)
                    )
                    pos = torch.tensor([context.next_position], device=self._device)
                    out, kv = self._extend(context, x, pos, Routing(und=None, gen=None))
                    context = self._append(context, kv, 1)
                    token = int(self.language_model.lm_head(out[-1]).argmax())
                    if token == tk.eos:
                        break
                    generated.append(token)
            else:
                for _ in range(max_new_tokens):
                    out = self._full_forward(parts, [tk.bos, *generated])
                    token = int(self.language_model.lm_head(out[-1]).argmax())
                    if token == tk.eos:
                        break
                    generated.append(token)
            answers.append(self.processor.decode(generated))
        return answers

    def _full_forward(self, parts: Sequence[tuple[str, Any]], tail: Sequence[int]) -> torch.Tensor:
        """Hidden states of the whole sequence ``parts`` + causal ``tail`` ids, in one forward."""
        pieces, positions, split_ids, full, gen, _, rope = self._context_inputs(parts)
        n = len(tail)
        pieces.append(
            self.language_model.model.embed_tokens(torch.tensor(list(tail), device=self._device))
        )
        positions += range(rope, rope + n)
        split_ids += [len(parts)] * n
        full += [False] * n
        out, _ = self._run(pieces, positions, split_ids, full, gen)
        return out

    @torch.no_grad()
    def generate(
        self,
        instructions: Sequence[str],
        images: Sequence[NDArray[np.uint8]] | None = None,
        settings: GenerationSettings | None = None,
    ) -> list[NDArray[np.uint8]]:
        """Draw one HxWx3 uint8 image per instruction (text-to-image, or from an input image).

        Upstream's sampler: Euler from ``t = 1`` (noise) to 0 over ``num_steps`` shifted steps,
        dual CFG (``v = v_img_free + s_img (v_text - v_img_free)`` after
        ``v_text = v_text_free + s_text (v - v_text_free)``) inside the guidance interval
        (``(0.4, 1]`` text-to-image, ``[0, 1]`` with an input image), renormalised as upstream
        (``global`` / ``text_channel``). With an input image the context is the ViT image (and
        its clean VAE latent with ``vae_reference_input``) then the instruction. Defaults: the
        config's ``flow`` (cfg text 4.0, image 2.0, shift 3.0, 50 steps); the output size is
        ``height x width``, else the input's VAE size, else ``vae_max_size`` squared.
        """
        settings = settings if settings is not None else GenerationSettings()
        if images is not None and len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images for {len(instructions)} instructions")
        flow = self.config.flow
        text_scale = (
            settings.cfg_text_scale if settings.cfg_text_scale is not None else flow.cfg_text_scale
        )
        img_scale = (
            settings.cfg_image_scale
            if settings.cfg_image_scale is not None
            else flow.cfg_image_scale
        )
        shift = settings.shift if settings.shift is not None else flow.inference_shift
        steps = settings.num_steps or flow.num_inference_steps
        times = inference_timesteps(steps, shift, _CONVENTION).tolist()
        generator = torch.Generator().manual_seed(settings.seed)
        results = []
        for i, instruction in enumerate(instructions):
            image = images[i] if images is not None else None
            size = (settings.height, settings.width)
            if image is not None:
                default = self.processor.vae_size(image)
            else:
                default = (self.config.vae_max_size, self.config.vae_max_size)
            height, width = size[0] or default[0], size[1] or default[1]
            unit = self.arch.latent_downsample
            grid = (ceil_to(height, unit), ceil_to(width, unit))
            self.processor.check_latent_grid(grid, "generate")
            hw = (grid[0] // unit, grid[1] // unit)
            noise = torch.randn(hw[0] * hw[1], self.arch.latent_channels, generator=generator)
            latents = self._sample(
                self.processor.encode(instruction), image, noise, hw, times, text_scale, img_scale
            )
            pixels = self.decode_latents(self._latent_image(latents, hw)[None])
            if grid != (height, width):
                pixels = functional.interpolate(
                    pixels,
                    size=(height, width),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
            array = ((pixels[0].clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
            results.append(array.permute(1, 2, 0).cpu().numpy())
        return results

    def _sample(
        self,
        ids: list[int],
        image: NDArray[np.uint8] | None,
        noise: torch.Tensor,
        hw: tuple[int, int],
        times: list[float],
        text_scale: float,
        img_scale: float,
    ) -> torch.Tensor:
        device = self._device
        image_parts: list[tuple[str, Any]] = []
        if image is not None:
            if self.config.vae_reference_input:
                image_parts.append(("vae", image))
            image_parts.append(("vit", image))
        text_part: list[tuple[str, Any]] = [("text", ids)]
        cond = self._prefill(image_parts + text_part)
        use_text = text_scale > 1.0
        use_img = image is not None and img_scale > 1.0
        text_free = self._prefill(image_parts) if use_text else None
        # as upstream, image guidance only acts together with text guidance
        img_free = self._prefill(text_part) if use_img and use_text else None
        interval = (0.0, 1.0) if image is not None else (0.4, 1.0)
        renorm = "text_channel" if image is not None else "global"
        n = hw[0] * hw[1]
        tk = self.tokens
        embed = self.language_model.model.embed_tokens
        marks = embed(torch.tensor([tk.vision_start, tk.vision_end], device=device))
        pos_ids = flattened_position_ids(hw[0], hw[1], self.arch.max_latent_size).to(device)
        routing = Routing(
            und=torch.tensor([0, n + 1], device=device),
            gen=torch.arange(1, n + 1, device=device),
        )

        def velocity(context: _Context, x: torch.Tensor, t: float) -> torch.Tensor:
            t_tok = torch.full((n,), t, device=device)
            tokens = self._latent_embeddings(x, t_tok, pos_ids).to(self._dtype)
            seq = torch.cat([marks[:1], tokens, marks[1:]])
            pos = torch.full((n + 2,), context.next_position, device=device)
            out, _ = self._extend(context, seq, pos, routing)
            v: torch.Tensor = self.llm2vae(out[1 : n + 1]).float()
            return v

        x = noise.to(device)
        for t, t_next in itertools.pairwise(times):
            v = velocity(cond, x, t)
            guided = interval[0] < t <= interval[1]
            if guided and text_free is not None:
                v_text_free = velocity(text_free, x, t)
                v_text = v_text_free + text_scale * (v - v_text_free)
                if renorm == "text_channel":
                    scale = v.norm(dim=-1, keepdim=True) / (
                        v_text.norm(dim=-1, keepdim=True) + 1e-8
                    )
                    v_text = v_text * scale.clamp(max=1.0)
                v_new = v_text
                if img_free is not None:
                    v_img_free = velocity(img_free, x, t)
                    v_new = v_img_free + img_scale * (v_text - v_img_free)
                if renorm == "global":
                    scale_g = v.norm() / (v_new.norm() + 1e-8)
                    v_new = v_new * scale_g.clamp(max=1.0)
                v = v_new
            x = x + (t_next - t) * v
        return x
