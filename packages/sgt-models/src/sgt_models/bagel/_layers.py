"""BAGEL's modules, named as in the official ``ema.safetensors``.

Library blocks are used where they fit: ``Qwen2MLP``, ``Qwen2RMSNorm``, ``Qwen2RotaryEmbedding``
and ``apply_rotary_pos_emb`` from transformers' Qwen2, and transformers' ``SiglipEncoderLayer``.
What upstream BAGEL changes is written here: the packed Mixture-of-Transformers decoder (every
layer holds an understanding copy and a ``*_moe_gen`` generation copy of its attention
projections, q/k norms, layer norms and MLP; tokens are routed by index, attention is joint over
the packed sequence), the NaViT SigLIP front (patch embedding as a ``Linear`` over 14*14*3 pixels,
position ids ``row * side + column``), the connector, the timestep embedder and the fixed 2-D
sin-cos position tables.

ZeRO-3: every parameter is read only inside the forward of the module that owns it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from sgt_models.bagel.configuration import BagelArchitecture

__all__ = [
    "AttentionPlan",
    "KVCache",
    "MLPConnector",
    "NavitVisionModel",
    "PackedQwen2ForCausalLM",
    "PositionEmbedding",
    "Routing",
    "TimestepEmbedder",
    "sincos_2d",
]

logger = logging.getLogger(__name__)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """BAGEL's fixed 2-D sin-cos table ``(grid * grid, dim)``, row ``h * grid + w``.

    The first half of a row encodes the column ``w``, the second half the row ``h`` (the MAE/DiT
    layout upstream uses); each half is ``[sin(pos * omega), cos(pos * omega)]`` with
    ``omega_k = 10000^(-k / (dim / 4))``, computed in float64 as upstream does with numpy.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0)
    omega = 1.0 / 10000.0**omega
    coords = torch.arange(grid, dtype=torch.float64)

    def one_d(pos: torch.Tensor) -> torch.Tensor:
        out = pos[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    w = coords.repeat(grid)  # w varies fastest
    h = coords.repeat_interleave(grid)
    return torch.cat([one_d(w), one_d(h)], dim=1).float()


class PositionEmbedding(nn.Module):
    """A fixed sin-cos table as a persistent buffer ``pos_embed`` (never trained).

    Upstream keeps it as a frozen ``nn.Parameter``; a buffer keeps it out of optimisers and ZeRO
    partitions while ``state_dict()`` still holds ``<name>.pos_embed`` as the official file does.
    Loading ignores the stored values and rebuilds the table (upstream pops them on load).
    """

    def __init__(self, grid: int, hidden_size: int) -> None:
        super().__init__()
        self.grid = grid
        self.hidden_size = hidden_size
        self.pos_embed: torch.Tensor
        self.register_buffer("pos_embed", torch.zeros(grid * grid, hidden_size), persistent=True)
        if self.pos_embed.device.type != "meta":
            self.rebuild()

    def rebuild(self, device: torch.device | str | None = None) -> None:
        """Recompute the table (on ``device``, default: where the buffer is, meta -> CPU)."""
        current: torch.Tensor = self.pos_embed
        target = torch.device(device) if device is not None else current.device
        if target.type == "meta":
            target = torch.device("cpu")
        self.pos_embed = sincos_2d(self.grid, self.hidden_size).to(target, current.dtype)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        table: torch.Tensor = self.pos_embed
        return table[position_ids]


class TimestepEmbedder(nn.Module):
    """DiT timestep embedder: sinusoid ``[cos, sin]`` of ``t`` (256 wide) -> MLP (``mlp.0/2``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t.float()[:, None] * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        # the dtype is metadata, kept by ZeRO-3's partitioned parameters too
        out: torch.Tensor = self.mlp(embedding.to(first.weight.dtype))
        return out


class MLPConnector(nn.Module):
    """ViT features -> LLM width: ``fc2(act(fc1(x)))``."""

    def __init__(self, in_dim: int, out_dim: int, act: str) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.act = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


# -- attention ---------------------------------------------------------------------------------


@dataclass
class AttentionPlan:
    """How the queries of one packed forward attend.

    ``spans`` lists ``(q_start, q_end, k_start, k_end, mask)``: queries ``q[q_start:q_end]`` attend
    keys ``k[k_start:k_end]`` under ``mask`` (bool, True = attend; ``None`` = everything), one span
    per packed sample so that samples never see each other. ``block_mask`` (a FlexAttention
    ``BlockMask`` over the whole pack) replaces the spans when set.
    """

    spans: list[tuple[int, int, int, int, torch.Tensor | None]]
    block_mask: Any = None


_FLEX: Callable[..., torch.Tensor] | None = None


def _flex_attention() -> Callable[..., torch.Tensor]:
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention)
    assert _FLEX is not None
    return _FLEX


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
    """Attention of ``q (Lq, H, D)`` over ``k, v (Lk, Hkv, D)`` by ``plan`` -> ``(Lq, H, D)``."""
    groups = q.shape[1] // k.shape[1]
    if plan.block_mask is not None:
        out = _flex_attention()(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            block_mask=plan.block_mask,
            enable_gqa=groups > 1,
        )
        return out[0].transpose(0, 1)
    outs = []
    for qs, qe, ks, ke, mask in plan.spans:
        qi = q[qs:qe].transpose(0, 1)[None]
        ki = k[ks:ke].transpose(0, 1)
        vi = v[ks:ke].transpose(0, 1)
        if groups > 1:
            ki, vi = ki.repeat_interleave(groups, dim=0), vi.repeat_interleave(groups, dim=0)
        attn_mask = mask[None, None] if mask is not None else None
        o = functional.scaled_dot_product_attention(qi, ki[None], vi[None], attn_mask=attn_mask)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


@dataclass
class Routing:
    """Which packed tokens take the understanding and which the generation expert.

    ``gen is None`` means every token is an understanding token (text-only inference).
    """

    und: torch.Tensor | None
    gen: torch.Tensor | None


def _route(
    x: torch.Tensor,
    routing: Routing,
    und: Callable[[torch.Tensor], torch.Tensor],
    gen: Callable[[torch.Tensor], torch.Tensor],
    width: int,
) -> torch.Tensor:
    if routing.gen is None:
        return und(x)
    if routing.und is None:
        return gen(x)
    out = x.new_zeros((x.shape[0], width) if x.ndim == 2 else (x.shape[0], *x.shape[1:-1], width))
    out = out.index_copy(0, routing.und, und(x.index_select(0, routing.und)))
    return out.index_copy(0, routing.gen, gen(x.index_select(0, routing.gen)))


#: Per layer, the keys and values of the context (after q/k norm and RoPE).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class PackedMoTAttention(nn.Module):
    """Qwen2 attention with qk-norm, in an understanding and a ``*_moe_gen`` generation copy."""

    def __init__(self, arch: BagelArchitecture) -> None:
        super().__init__()
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

        h, d = arch.hidden_size, arch.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = arch.num_heads, arch.num_kv_heads, d
        self.q_proj = nn.Linear(h, arch.num_heads * d, bias=True)
        self.k_proj = nn.Linear(h, arch.num_kv_heads * d, bias=True)
        self.v_proj = nn.Linear(h, arch.num_kv_heads * d, bias=True)
        self.o_proj = nn.Linear(arch.num_heads * d, h, bias=False)
        self.q_norm = Qwen2RMSNorm(d, eps=arch.rms_norm_eps)
        self.k_norm = Qwen2RMSNorm(d, eps=arch.rms_norm_eps)
        self.q_proj_moe_gen = nn.Linear(h, arch.num_heads * d, bias=True)
        self.k_proj_moe_gen = nn.Linear(h, arch.num_kv_heads * d, bias=True)
        self.v_proj_moe_gen = nn.Linear(h, arch.num_kv_heads * d, bias=True)
        self.o_proj_moe_gen = nn.Linear(arch.num_heads * d, h, bias=False)
        self.q_norm_moe_gen = Qwen2RMSNorm(d, eps=arch.rms_norm_eps)
        self.k_norm_moe_gen = Qwen2RMSNorm(d, eps=arch.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        routing: Routing,
        plan: AttentionPlan,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        n, d = x.shape[0], self.head_dim
        hq, hkv = self.num_heads * d, self.num_kv_heads * d
        q = _route(x, routing, self.q_proj, self.q_proj_moe_gen, hq).view(n, -1, d)
        k = _route(x, routing, self.k_proj, self.k_proj_moe_gen, hkv).view(n, -1, d)
        v = _route(x, routing, self.v_proj, self.v_proj_moe_gen, hkv).view(n, -1, d)
        q = _route(q, routing, self.q_norm, self.q_norm_moe_gen, d)
        k = _route(k, routing, self.k_norm, self.k_norm_moe_gen, d)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        if past is not None:
            k_all, v_all = torch.cat([past[0], k]), torch.cat([past[1], v])
        else:
            k_all, v_all = k, v
        out = attend(q, k_all, v_all, plan).reshape(n, hq)
        return _route(out, routing, self.o_proj, self.o_proj_moe_gen, x.shape[-1]), (k, v)


class MoTDecoderLayer(nn.Module):
    """One BAGEL MoT decoder layer (pre-norm attention + pre-norm SwiGLU MLP, both copies)."""

    def __init__(self, arch: BagelArchitecture) -> None:
        super().__init__()
        from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

        qwen = arch.qwen2_config()
        h, eps = arch.hidden_size, arch.rms_norm_eps
        self.self_attn = PackedMoTAttention(arch)
        self.mlp = Qwen2MLP(qwen)  # type: ignore[no-untyped-call]
        self.mlp_moe_gen = Qwen2MLP(qwen)  # type: ignore[no-untyped-call]
        self.input_layernorm = Qwen2RMSNorm(h, eps=eps)
        self.input_layernorm_moe_gen = Qwen2RMSNorm(h, eps=eps)
        self.post_attention_layernorm = Qwen2RMSNorm(h, eps=eps)
        self.post_attention_layernorm_moe_gen = Qwen2RMSNorm(h, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        routing: Routing,
        plan: AttentionPlan,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        width = x.shape[-1]
        normed = _route(x, routing, self.input_layernorm, self.input_layernorm_moe_gen, width)
        attn, kv = self.self_attn(normed, cos, sin, routing, plan, past)
        x = x + attn

        def und(y: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.mlp(self.post_attention_layernorm(y))
            return out

        def gen(y: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.mlp_moe_gen(self.post_attention_layernorm_moe_gen(y))
            return out

        return x + _route(x, routing, und, gen, width), kv


class PackedQwen2Model(nn.Module):
    """Embeddings, MoT layers, RoPE and the two final norms (``norm``, ``norm_moe_gen``)."""

    def __init__(self, arch: BagelArchitecture) -> None:
        super().__init__()
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, Qwen2RotaryEmbedding

        self.arch = arch
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.layers = nn.ModuleList([MoTDecoderLayer(arch) for _ in range(arch.num_layers)])
        self.norm = Qwen2RMSNorm(arch.hidden_size, eps=arch.rms_norm_eps)
        self.norm_moe_gen = Qwen2RMSNorm(arch.hidden_size, eps=arch.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=arch.qwen2_config())
        self.gradient_checkpointing = False

    def rebuild_rotary(self, device: torch.device | str) -> None:
        """Recompute RoPE's (non-persistent) frequencies on ``device`` (after a meta build)."""
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

        with torch.device(device):
            self.rotary_emb = Qwen2RotaryEmbedding(config=self.arch.qwen2_config())

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor,
        routing: Routing,
        plan: AttentionPlan,
        past: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Hidden states of packed embeddings ``x (L, H)`` and this call's keys/values per layer."""
        cos, sin = self.rotary_emb(x, position_ids[None])
        cos, sin = cos[0], sin[0]
        new_kv: KVCache = []
        for i, layer in enumerate(self.layers):
            layer_past = past[i] if past is not None else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, kv = torch.utils.checkpoint.checkpoint(
                    layer, x, cos, sin, routing, plan, layer_past, use_reentrant=False
                )
            else:
                x, kv = layer(x, cos, sin, routing, plan, layer_past)
            new_kv.append(kv)
        return _route(x, routing, self.norm, self.norm_moe_gen, x.shape[-1]), new_kv


class PackedQwen2ForCausalLM(nn.Module):
    """``model`` (the packed MoT decoder) and ``lm_head`` (untied, as upstream overrides)."""

    def __init__(self, arch: BagelArchitecture) -> None:
        super().__init__()
        self.model = PackedQwen2Model(arch)
        self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)


# -- NaViT SigLIP ------------------------------------------------------------------------------


class NavitEmbeddings(nn.Module):
    """Patch embedding as a ``Linear`` over flattened ``(row, col, channel)`` pixel patches."""

    def __init__(self, arch: BagelArchitecture) -> None:
        super().__init__()
        p = arch.vit_patch_size
        self.patch_embedding = nn.Linear(3 * p * p, arch.vit_hidden_size)
        self.position_embedding = nn.Embedding(
            arch.vit_max_num_patch_per_side**2, arch.vit_hidden_size
        )

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.patch_embedding(patches) + self.position_embedding(position_ids)
        return out


class NavitEncoder(nn.Module):
    """SigLIP encoder layers (transformers' ``SiglipEncoderLayer``) over packed images."""

    def __init__(self, arch: BagelArchitecture) -> None:
        super().__init__()
        from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

        config = arch.siglip_config()
        self.layers = nn.ModuleList([SiglipEncoderLayer(config) for _ in range(arch.vit_layers)])

    def forward(self, x: torch.Tensor, seqlens: Sequence[int]) -> torch.Tensor:
        # images attend only to themselves: equal-length images run as one batch, no mask needed
        bounds = [0]
        for n in seqlens:
            bounds.append(bounds[-1] + n)
        by_len: dict[int, list[int]] = {}
        for i, n in enumerate(seqlens):
            by_len.setdefault(n, []).append(i)
        out = x
        if len(by_len) == 1:
            n = seqlens[0]
            h = x.reshape(len(seqlens), n, -1)
            for layer in self.layers:
                h = layer(h, None)
            return h.reshape(x.shape)
        for n, images in by_len.items():
            rows = torch.cat(
                [torch.arange(bounds[i], bounds[i + 1], device=x.device) for i in images]
            )
            h = x.index_select(0, rows).reshape(len(images), n, -1)
            for layer in self.layers:
                h = layer(h, None)
            out = out.index_copy(0, rows, h.reshape(-1, h.shape[-1]))
        return out


class NavitVisionTransformer(nn.Module):
    """``embeddings`` -> ``encoder`` -> ``post_layernorm`` (upstream's ``vision_model``)."""

    def __init__(self, arch: BagelArchitecture) -> None:
        super().__init__()
        self.embeddings = NavitEmbeddings(arch)
        self.encoder = NavitEncoder(arch)
        self.post_layernorm = nn.LayerNorm(arch.vit_hidden_size, eps=arch.vit_layer_norm_eps)

    def forward(
        self, patches: torch.Tensor, position_ids: torch.Tensor, seqlens: Sequence[int]
    ) -> torch.Tensor:
        h = self.encoder(self.embeddings(patches, position_ids), seqlens)
        out: torch.Tensor = self.post_layernorm(h)
        return out


class NavitVisionModel(nn.Module):
    """The SigLIP NaViT encoder (``vit_model.vision_model.*``)."""

    def __init__(self, arch: BagelArchitecture) -> None:
        super().__init__()
        self.vision_model = NavitVisionTransformer(arch)

    def forward(
        self, patches: torch.Tensor, position_ids: torch.Tensor, seqlens: Sequence[int]
    ) -> torch.Tensor:
        out: torch.Tensor = self.vision_model(patches, position_ids, seqlens)
        return out
