"""OmniGen2's diffusion transformer on diffusers' Lumina-2 building blocks.

Architecture and parameter names follow the official ``transformer/`` folder of an OmniGen2
pipeline (``diffusion_pytorch_model*.safetensors``, unfused ``to_q``/``to_k``/``to_v``), so that
``from_pretrained``/``save_pretrained`` (diffusers' own machinery) read and write upstream's files:

* ``x_embedder`` / ``ref_image_patch_embedder``: linear patch embeddings of the noisy target and of
  the reference-image latents (``patch_size**2 * in_channels -> hidden_size``);
* ``time_caption_embed``: timestep (times ``timestep_scale``) and caption (MLLM hidden states)
  embeddings;
* ``context_refiner`` (unmodulated), ``noise_refiner`` and ``ref_image_refiner`` (modulated):
  ``num_refiner_layers`` blocks each, run on the caption, target and each reference separately;
* ``layers``: the joint blocks over ``[caption, references, target]``;
* ``norm_out``: adaptive layer norm + projection back to patches;
* ``image_index_embedding``: one learned vector per reference slot (at most 5 references).

Positions use OmniGen2's three-axis "Omni-RoPE": caption token ``k`` sits at ``(k, k, k)``; the
``j``-th reference image and then the target get a constant first coordinate (the caption length,
advanced by ``max(h, w)`` after each reference) and their patch row and column on the other two.
Samples of different resolutions and reference counts share a batch: every part is flattened and
right-padded, and the attention masks cover the valid tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import Timesteps, get_1d_rotary_pos_embed
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import LuminaLayerNormContinuous
from diffusers.models.transformers.transformer_lumina2 import (
    Lumina2CombinedTimestepCaptionEmbedding,
    Lumina2TransformerBlock,
)
from torch import nn
from torch.nn.utils.rnn import pad_sequence

__all__ = ["MAX_REFERENCE_IMAGES", "OmniGen2Transformer2DModel", "omni_rope_position_ids"]

#: Rows of ``image_index_embedding``: the most reference images one sample may carry.
MAX_REFERENCE_IMAGES = 5

_ROPE_THETA = 10000.0


class _TimeCaptionEmbedding(Lumina2CombinedTimestepCaptionEmbedding):
    """diffusers' Lumina-2 timestep + caption embedding with OmniGen2's timestep scale."""

    def __init__(
        self, hidden_size: int, text_feat_dim: int, norm_eps: float, timestep_scale: float
    ) -> None:
        super().__init__(hidden_size=hidden_size, cap_feat_dim=text_feat_dim, norm_eps=norm_eps)
        # OmniGen2 feeds t in [0, 1] and scales it inside the sinusoidal projection
        self.time_proj = Timesteps(
            num_channels=256,
            flip_sin_to_cos=True,
            downscale_freq_shift=0.0,
            scale=timestep_scale,  # type: ignore[arg-type]  # annotated int, used as a factor
        )


def omni_rope_position_ids(
    caption_length: int,
    reference_grids: Sequence[tuple[int, int]],
    target_grid: tuple[int, int],
) -> torch.Tensor:
    """``(L, 3)`` int64 Omni-RoPE positions of one sample's ``[caption, references, target]``."""
    parts = [torch.arange(caption_length, dtype=torch.int64)[:, None].expand(-1, 3)]
    shift = caption_length
    for h, w in (*reference_grids, target_grid):
        rows = torch.arange(h, dtype=torch.int64).repeat_interleave(w)
        cols = torch.arange(w, dtype=torch.int64).repeat(h)
        parts.append(torch.stack([torch.full_like(rows, shift), rows, cols], dim=1))
        shift += max(h, w)
    return torch.cat(parts)


def _patchify(latent: torch.Tensor, p: int) -> torch.Tensor:
    """``(C, H, W) -> (H/p * W/p, p*p*C)`` in upstream's ``(p1 p2 c)`` order."""
    c, h, w = latent.shape
    x = latent.reshape(c, h // p, p, w // p, p).permute(1, 3, 2, 4, 0)
    return x.reshape((h // p) * (w // p), p * p * c)


def _unpatchify(tokens: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``_patchify`` for a ``(h/p * w/p, p*p*C)`` token block."""
    c = tokens.shape[-1] // (p * p)
    x = tokens.reshape(h // p, w // p, p, p, c).permute(4, 0, 2, 1, 3)
    return x.reshape(c, h, w)


def _pad(rows: Sequence[torch.Tensor], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of ``(L_i, D)`` blocks into ``(B, max L, D)`` plus a ``(B, max L)`` mask."""
    lengths = [int(r.shape[0]) for r in rows]
    if not rows:
        return like.new_zeros(0, 0, like.shape[-1]), torch.zeros(
            0, 0, dtype=torch.bool, device=like.device
        )
    padded = pad_sequence(list(rows), batch_first=True)
    mask = torch.arange(padded.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    return padded, mask.to(like.device)


class OmniGen2Transformer2DModel(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """OmniGen2's DiT: predicts the flow velocity of target latents (``t = 1`` is data).

    ``forward`` takes per-sample latents (a list of ``(C, H, W)`` or a ``(B, C, H, W)`` tensor), the
    time in ``[0, 1]``, the MLLM's hidden states with their (right-padded) mask and, per sample, a
    list of reference latents; it returns the velocity in the same form as the latents.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ("Lumina2TransformerBlock",)  # type: ignore[assignment]
    _skip_layerwise_casting_patterns = ("x_embedder", "norm")  # type: ignore[assignment]

    @register_to_config  # type: ignore[untyped-decorator]
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 16,
        out_channels: int | None = None,
        hidden_size: int = 2304,
        num_layers: int = 26,
        num_refiner_layers: int = 2,
        num_attention_heads: int = 24,
        num_kv_heads: int = 8,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        norm_eps: float = 1e-5,
        axes_dim_rope: tuple[int, int, int] = (32, 32, 32),
        axes_lens: tuple[int, int, int] = (300, 512, 512),
        text_feat_dim: int = 1024,
        timestep_scale: float = 1.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if hidden_size // num_attention_heads != sum(axes_dim_rope):
            raise ValueError(
                f"hidden_size // num_attention_heads ({hidden_size // num_attention_heads}) must "
                f"equal sum(axes_dim_rope) ({sum(axes_dim_rope)})"
            )
        self.out_channels = out_channels or in_channels
        patch_dim = patch_size * patch_size * in_channels

        def block(modulation: bool) -> Lumina2TransformerBlock:
            return Lumina2TransformerBlock(
                hidden_size,
                num_attention_heads,
                num_kv_heads,
                multiple_of,
                ffn_dim_multiplier,  # type: ignore[arg-type]
                norm_eps,
                modulation=modulation,
            )

        self.x_embedder = nn.Linear(patch_dim, hidden_size)
        self.ref_image_patch_embedder = nn.Linear(patch_dim, hidden_size)
        self.time_caption_embed = _TimeCaptionEmbedding(
            hidden_size, text_feat_dim, norm_eps, timestep_scale
        )
        self.noise_refiner = nn.ModuleList([block(True) for _ in range(num_refiner_layers)])
        self.ref_image_refiner = nn.ModuleList([block(True) for _ in range(num_refiner_layers)])
        self.context_refiner = nn.ModuleList([block(False) for _ in range(num_refiner_layers)])
        self.layers = nn.ModuleList([block(True) for _ in range(num_layers)])
        self.norm_out = LuminaLayerNormContinuous(
            embedding_dim=hidden_size,
            conditioning_embedding_dim=min(hidden_size, 1024),
            elementwise_affine=False,
            eps=1e-6,
            bias=True,
            out_dim=patch_size * patch_size * self.out_channels,
        )
        self.image_index_embedding = nn.Parameter(torch.randn(MAX_REFERENCE_IMAGES, hidden_size))
        self.gradient_checkpointing = False
        self._freqs: dict[torch.device, list[torch.Tensor]] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        # upstream's initialisation: xavier linears, zero adaLN modulations and output projection
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for layer in (*self.noise_refiner, *self.ref_image_refiner, *self.layers):
            nn.init.zeros_(layer.norm1.linear.weight)
            nn.init.zeros_(layer.norm1.linear.bias)
        nn.init.zeros_(self.norm_out.linear_1.weight)
        nn.init.zeros_(self.norm_out.linear_1.bias)
        assert self.norm_out.linear_2 is not None
        nn.init.zeros_(self.norm_out.linear_2.weight)
        nn.init.zeros_(self.norm_out.linear_2.bias)
        caption_proj: Any = self.time_caption_embed.caption_embedder[1]
        nn.init.trunc_normal_(caption_proj.weight, std=0.02)
        nn.init.normal_(self.time_caption_embed.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_caption_embed.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.normal_(self.image_index_embedding, std=0.02)

    # -- rotary tables -------------------------------------------------------------------------

    def _rope_tables(self, device: torch.device) -> list[torch.Tensor]:
        """Complex rotary tables per axis (float64 angles, as upstream), cached per device."""
        if device.type == "meta":
            raise RuntimeError("cannot run the OmniGen2 transformer on the meta device")
        if device not in self._freqs:
            cfg: Any = self.config
            self._freqs[device] = [
                get_1d_rotary_pos_embed(d, n, theta=_ROPE_THETA, freqs_dtype=torch.float64).to(
                    device
                )
                for d, n in zip(cfg.axes_dim_rope, cfg.axes_lens, strict=True)
            ]
        return self._freqs[device]

    def _rotary(self, position_ids: torch.Tensor) -> torch.Tensor:
        """``(L, 3)`` positions -> ``(L, head_dim / 2)`` complex rotations."""
        tables = self._rope_tables(position_ids.device)
        return torch.cat([t[position_ids[:, i]] for i, t in enumerate(tables)], dim=-1)

    # -- forward -------------------------------------------------------------------------------

    def _run(
        self,
        layers: nn.ModuleList,
        x: torch.Tensor,
        mask: torch.Tensor,
        rotary: torch.Tensor,
        temb: torch.Tensor | None,
    ) -> torch.Tensor:
        for layer in layers:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                checkpoint: Any = self._gradient_checkpointing_func
                x = checkpoint(layer, x, mask, rotary, temb)
            else:
                x = layer(x, mask, rotary, temb)
        return x

    def forward(
        self,
        hidden_states: torch.Tensor | Sequence[torch.Tensor],
        timestep: torch.Tensor,
        text_hidden_states: torch.Tensor,
        freqs_cis: Any = None,
        text_attention_mask: torch.Tensor | None = None,
        ref_image_hidden_states: Sequence[Sequence[torch.Tensor] | None] | None = None,
        text_lengths: Sequence[int] | None = None,
        return_dict: bool = False,
    ) -> Any:
        """Velocity of each target latent (same container as ``hidden_states``).

        ``freqs_cis`` is accepted for signature compatibility with upstream and ignored (the
        rotary tables come from the config). ``text_lengths``, when given, are the valid caption
        lengths as Python ints, which saves reading the mask back from the device.
        """
        del freqs_cis
        is_tensor = isinstance(hidden_states, torch.Tensor)
        latents = list(hidden_states)
        batch = len(latents)
        device = latents[0].device
        dtype = latents[0].dtype
        p: int = self.config.patch_size  # type: ignore[attr-defined]
        if text_attention_mask is None:
            text_attention_mask = torch.ones(
                text_hidden_states.shape[:2], dtype=torch.bool, device=device
            )
        text_mask = text_attention_mask.bool()
        if text_lengths is None:
            text_lengths = [int(n) for n in text_mask.sum(dim=1).tolist()]
        refs: list[list[torch.Tensor]] = [
            list(r) if r is not None else [] for r in (ref_image_hidden_states or [None] * batch)
        ]
        if len(refs) != batch:
            raise ValueError(f"got reference lists for {len(refs)} of {batch} samples")
        if any(len(r) > MAX_REFERENCE_IMAGES for r in refs):
            raise ValueError(f"a sample may carry at most {MAX_REFERENCE_IMAGES} reference images")

        temb, caption = self.time_caption_embed(latents[0], timestep, text_hidden_states)
        temb = temb.to(dtype)

        target_grids = [(int(x.shape[1]) // p, int(x.shape[2]) // p) for x in latents]
        ref_grids = [[(int(r.shape[1]) // p, int(r.shape[2]) // p) for r in rs] for rs in refs]
        positions = [
            omni_rope_position_ids(n, g, t)
            for n, g, t in zip(text_lengths, ref_grids, target_grids, strict=True)
        ]
        rotary = [self._rotary(pos.to(device)) for pos in positions]
        ref_lengths = [sum(h * w for h, w in g) for g in ref_grids]

        # caption refinement over the (right-padded) MLLM states
        width = text_hidden_states.shape[1]
        cap_rotary = pad_sequence(
            [r[:n] for r, n in zip(rotary, text_lengths, strict=True)], batch_first=True
        )
        if cap_rotary.shape[1] < width:
            cap_rotary = nn.functional.pad(cap_rotary, (0, 0, 0, width - cap_rotary.shape[1]))
        caption = self._run(self.context_refiner, caption, text_mask, cap_rotary, None)

        # target refinement
        target_tokens, target_mask = _pad([_patchify(x, p) for x in latents], latents[0])
        target = self.x_embedder(target_tokens)
        target_rotary = pad_sequence(
            [r[n + m :] for r, n, m in zip(rotary, text_lengths, ref_lengths, strict=True)],
            batch_first=True,
        )
        target = self._run(self.noise_refiner, target, target_mask, target_rotary, temb)

        # reference refinement: each reference image is refined on its own
        ref_blocks: list[torch.Tensor] = []
        ref_rot: list[torch.Tensor] = []
        ref_owner: list[int] = []
        ref_slot: list[int] = []
        for i, (rs, grids) in enumerate(zip(refs, ref_grids, strict=True)):
            start = text_lengths[i]
            for j, (r, (h, w)) in enumerate(zip(rs, grids, strict=True)):
                ref_blocks.append(_patchify(r, p))
                ref_rot.append(rotary[i][start : start + h * w])
                ref_owner.append(i)
                ref_slot.append(j)
                start += h * w
        patch_dim = p * p * int(latents[0].shape[0])
        if ref_blocks:
            ref_tokens, ref_mask = _pad(ref_blocks, latents[0])
            ref_rotary = pad_sequence(ref_rot, batch_first=True)
        else:
            # no reference in the batch: run the reference path on one zero token whose output
            # is added times 0 below, so that its parameters still get (zero) gradients on every
            # rank (diffusers' attention cannot run on a zero-length sequence)
            ref_tokens = latents[0].new_zeros(1, 1, patch_dim)
            ref_mask = torch.ones(1, 1, dtype=torch.bool, device=device)
            ref_rotary = torch.ones_like(rotary[0][:1])[None]
            ref_slot, ref_owner = [0], [0]
        slot = torch.tensor(ref_slot, dtype=torch.long, device=device)
        owner = torch.tensor(ref_owner, dtype=torch.long, device=device)
        ref = self.ref_image_patch_embedder(ref_tokens)
        ref = ref + self.image_index_embedding[slot].to(ref.dtype)[:, None, :]
        ref = self._run(self.ref_image_refiner, ref, ref_mask, ref_rotary, temb[owner])
        if not ref_blocks:
            target = target + ref.sum() * 0.0
            ref_owner = []

        # joint sequence [caption, references, target] per sample
        joint: list[torch.Tensor] = []
        for i in range(batch):
            parts = [caption[i, : text_lengths[i]]]
            parts += [ref[k, : h * w] for k, (h, w) in _refs_of(i, ref_owner, ref_grids[i])]
            parts.append(target[i, : target_grids[i][0] * target_grids[i][1]])
            joint.append(torch.cat(parts))
        x, mask = _pad(joint, target)
        x = self._run(self.layers, x, mask, pad_sequence(rotary, batch_first=True), temb)
        x = self.norm_out(x, temb)

        out = []
        for i, (h, w) in enumerate(target_grids):
            end = int(positions[i].shape[0])
            tokens = x[i, end - h * w : end]
            out.append(_unpatchify(tokens, p, h * p, w * p))
        result: Any = torch.stack(out) if is_tensor else out
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=result)
        return result


def _refs_of(
    sample: int, owners: Sequence[int], grids: Sequence[tuple[int, int]]
) -> list[tuple[int, tuple[int, int]]]:
    """(row in the reference batch, grid) of each reference of ``sample``, in order."""
    rows = [k for k, o in enumerate(owners) if o == sample]
    return list(zip(rows, grids, strict=True))
