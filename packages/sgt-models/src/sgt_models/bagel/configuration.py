"""BAGEL's architecture as its checkpoint folder describes it, and the FLUX VAE key mapping.

An official BAGEL folder (``ByteDance-Seed/BAGEL-7B-MoT``) holds ``llm_config.json`` (a Qwen2.5-7B
config), ``vit_config.json`` (SigLIP so400m/14 at 980 px), ``ema.safetensors`` (the whole model
but the VAE, one file), ``ae.safetensors`` (the FLUX.1 autoencoder under FLUX's own key names) and
the Qwen2 tokenizer files. Upstream (``app.py``) overrides the configs at load time: the LLM gets
``qk_norm=True``, ``tie_word_embeddings=False`` and MoT decoder layers; the ViT gets ``rope=False``
and one layer fewer (BAGEL reads SigLIP's penultimate layer); the model uses latent patches of 2,
``max_latent_size=64`` and ``vit_max_num_patch_per_side=70``. :func:`read_architecture` applies the
same overrides to the raw JSON, which is kept verbatim so that saving writes it back unchanged.

The autoencoder has no config file: its shape (base channels, channel multipliers, residual
blocks, latent channels) is read from ``ae.safetensors``'s header, so one code path serves the
real FLUX VAE and the tiny test one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AE_FILE",
    "BAGEL_CONFIG_FILE",
    "EMA_FILE",
    "LLM_CONFIG_FILE",
    "MODEL_FILE",
    "PUBLISHED_LLM_CONFIG",
    "PUBLISHED_VIT_CONFIG",
    "VIT_CONFIG_FILE",
    "BagelArchitecture",
    "BagelCheckpointError",
    "VaeShape",
    "diffusers_to_flux_key",
    "flux_to_diffusers_key",
    "read_architecture",
    "vae_shape_from_header",
]

LLM_CONFIG_FILE = "llm_config.json"
VIT_CONFIG_FILE = "vit_config.json"
BAGEL_CONFIG_FILE = "config.json"
EMA_FILE = "ema.safetensors"
MODEL_FILE = "model.safetensors"
AE_FILE = "ae.safetensors"

#: ``llm_config.json`` of ByteDance-Seed/BAGEL-7B-MoT (the Qwen2.5-7B-Instruct config).
PUBLISHED_LLM_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}

#: ``vit_config.json`` of ByteDance-Seed/BAGEL-7B-MoT (SigLIP so400m, patch 14, 980 px).
PUBLISHED_VIT_CONFIG: dict[str, Any] = {
    "architectures": ["SiglipVisionModel"],
    "attention_dropout": 0.0,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "image_size": 980,
    "intermediate_size": 4304,
    "layer_norm_eps": 1e-06,
    "model_type": "siglip_vision_model",
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 27,
    "patch_size": 14,
    "torch_dtype": "bfloat16",
}

#: FLUX.1 autoencoder constants (``modeling/autoencoder.py: load_ae``).
FLUX_SCALE_FACTOR = 0.3611
FLUX_SHIFT_FACTOR = 0.1159


class BagelCheckpointError(ValueError):
    """A BAGEL folder that cannot be loaded; the message names the file (and tensor)."""


@dataclass(frozen=True)
class VaeShape:
    """Shape of a FLUX-style autoencoder (``AutoEncoderParams`` minus the constants)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    in_channels: int = 3
    out_ch: int = 3
    scale_factor: float = FLUX_SCALE_FACTOR
    shift_factor: float = FLUX_SHIFT_FACTOR

    @property
    def downsample(self) -> int:
        """Pixels per latent pixel."""
        return int(2 ** (len(self.ch_mult) - 1))

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``diffusers.AutoencoderKL`` for this autoencoder."""
        n = len(self.ch_mult)
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_ch,
            "down_block_types": ("DownEncoderBlock2D",) * n,
            "up_block_types": ("UpDecoderBlock2D",) * n,
            "block_out_channels": tuple(self.ch * m for m in self.ch_mult),
            "layers_per_block": self.num_res_blocks,
            "latent_channels": self.z_channels,
            "norm_num_groups": 32,
            "act_fn": "silu",
            "scaling_factor": self.scale_factor,
            "shift_factor": self.shift_factor,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "mid_block_add_attention": True,
        }


@dataclass(frozen=True)
class BagelArchitecture:
    """Every size BAGEL's modules are built from, after upstream's load-time overrides."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    hidden_act: str
    vit_hidden_size: int
    vit_intermediate_size: int
    vit_layers: int  # already one fewer than vit_config.json says (penultimate layer)
    vit_heads: int
    vit_patch_size: int
    vit_image_size: int
    vit_layer_norm_eps: float
    vit_hidden_act: str
    latent_patch_size: int = 2
    max_latent_size: int = 64
    connector_act: str = "gelu_pytorch_tanh"
    vae: VaeShape = field(default_factory=VaeShape)
    llm_raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    vit_raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def vit_max_num_patch_per_side(self) -> int:
        """Side of the ViT position grid (70 for the published 980 px / 14 config)."""
        return self.vit_image_size // self.vit_patch_size

    @property
    def latent_channels(self) -> int:
        """Channels of one latent token (``p * p * z``)."""
        return self.latent_patch_size**2 * self.vae.z_channels

    @property
    def latent_downsample(self) -> int:
        """Pixels per latent token side (16 for FLUX with 2x2 patches)."""
        return self.vae.downsample * self.latent_patch_size

    def qwen2_config(self) -> Any:
        """A ``transformers.Qwen2Config`` for the library blocks (MLP, RMSNorm, RoPE)."""
        from transformers import Qwen2Config

        return Qwen2Config(  # type: ignore[call-arg]
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            hidden_act=self.hidden_act,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=False,
        )

    def siglip_config(self) -> Any:
        """A ``transformers.SiglipVisionConfig`` (SDPA attention) for the encoder layers."""
        from transformers import SiglipVisionConfig

        config = SiglipVisionConfig(
            hidden_size=self.vit_hidden_size,
            intermediate_size=self.vit_intermediate_size,
            num_hidden_layers=self.vit_layers,
            num_attention_heads=self.vit_heads,
            image_size=self.vit_image_size,
            patch_size=self.vit_patch_size,
            layer_norm_eps=self.vit_layer_norm_eps,
            hidden_act=self.vit_hidden_act,
            attention_dropout=0.0,
        )
        config._attn_implementation = "sdpa"
        return config


def read_json_object(path: Path, error: type[ValueError] = BagelCheckpointError) -> dict[str, Any]:
    """A JSON object from a file; ``error`` naming the file when it is missing or not one."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a JSON object")
    return raw


def _get(raw: Mapping[str, Any], key: str, path: Path, default: Any = None) -> Any:
    if key in raw:
        return raw[key]
    if default is None:
        raise BagelCheckpointError(f"{path}: required field {key!r} is missing")
    return default


def architecture_from_dicts(
    llm: Mapping[str, Any],
    vit: Mapping[str, Any],
    vae: VaeShape,
    *,
    max_latent_size: int,
    where: Path = Path("."),
) -> BagelArchitecture:
    """The architecture of raw ``llm_config.json`` / ``vit_config.json`` dicts, with overrides."""
    lp, vp = where / LLM_CONFIG_FILE, where / VIT_CONFIG_FILE
    rope_theta = llm.get("rope_theta")
    if rope_theta is None and isinstance(llm.get("rope_parameters"), Mapping):
        rope_theta = llm["rope_parameters"].get("rope_theta")
    try:
        arch = BagelArchitecture(
            vocab_size=int(_get(llm, "vocab_size", lp)),
            hidden_size=int(_get(llm, "hidden_size", lp)),
            intermediate_size=int(_get(llm, "intermediate_size", lp)),
            num_layers=int(_get(llm, "num_hidden_layers", lp)),
            num_heads=int(_get(llm, "num_attention_heads", lp)),
            num_kv_heads=int(llm.get("num_key_value_heads") or llm["num_attention_heads"]),
            rms_norm_eps=float(llm.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            max_position_embeddings=int(llm.get("max_position_embeddings", 32768)),
            hidden_act=str(llm.get("hidden_act", "silu")),
            vit_hidden_size=int(_get(vit, "hidden_size", vp)),
            vit_intermediate_size=int(_get(vit, "intermediate_size", vp)),
            # upstream: vit_config.num_hidden_layers -= 1 (BAGEL reads the penultimate layer)
            vit_layers=int(_get(vit, "num_hidden_layers", vp)) - 1,
            vit_heads=int(_get(vit, "num_attention_heads", vp)),
            vit_patch_size=int(_get(vit, "patch_size", vp)),
            vit_image_size=int(_get(vit, "image_size", vp)),
            vit_layer_norm_eps=float(vit.get("layer_norm_eps", 1e-6)),
            vit_hidden_act=str(vit.get("hidden_act", "gelu_pytorch_tanh")),
            max_latent_size=max_latent_size,
            vae=vae,
            llm_raw=dict(llm),
            vit_raw=dict(vit),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, BagelCheckpointError):
            raise
        raise BagelCheckpointError(f"{lp} / {vp}: malformed config ({exc})") from None
    if arch.hidden_size % arch.num_heads or arch.num_heads % arch.num_kv_heads:
        raise BagelCheckpointError(f"{lp}: hidden_size / heads / key-value heads do not divide")
    if arch.vit_layers < 1:
        raise BagelCheckpointError(f"{vp}: num_hidden_layers must be at least 2 (BAGEL drops one)")
    return arch


def read_architecture(folder: str | Path, *, max_latent_size: int) -> BagelArchitecture:
    """The architecture of a BAGEL folder: its two JSON configs and ``ae.safetensors``'s header."""
    folder = Path(folder)
    llm = read_json_object(folder / LLM_CONFIG_FILE)
    vit = read_json_object(folder / VIT_CONFIG_FILE)
    vae = vae_shape_from_header(folder / AE_FILE)
    return architecture_from_dicts(llm, vit, vae, max_latent_size=max_latent_size, where=folder)


def vae_shape_from_header(path: Path) -> VaeShape:
    """The FLUX autoencoder's shape from the tensor shapes in its safetensors header."""
    from sgt_models.check import CheckError, read_safetensors_header

    try:
        header = read_safetensors_header(path)
    except CheckError as exc:
        raise BagelCheckpointError(str(exc)) from None
    try:
        ch = header["encoder.conv_in.weight"].shape[0]
        z = header["decoder.conv_in.weight"].shape[1]
        levels = sorted(
            {int(m.group(1)) for k in header if (m := re.match(r"encoder\.down\.(\d+)\.", k))}
        )
        ch_mult = tuple(
            header[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels
        )
        blocks = {
            int(m.group(1))
            for k in header
            if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))
        }
        in_ch = header["encoder.conv_in.weight"].shape[1]
        out_ch = header["decoder.conv_out.weight"].shape[0]
    except KeyError as exc:
        raise BagelCheckpointError(f"{path}: not a FLUX autoencoder (no tensor {exc})") from None
    if not levels or not blocks:
        raise BagelCheckpointError(f"{path}: not a FLUX autoencoder (no encoder blocks)")
    return VaeShape(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=len(blocks),
        z_channels=z,
        in_channels=in_ch,
        out_ch=out_ch,
    )


# -- FLUX <-> diffusers autoencoder key names --------------------------------------------------

_ATTN_FLUX_TO_DIFFUSERS = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}
_ATTN_DIFFUSERS_TO_FLUX = {v: k for k, v in _ATTN_FLUX_TO_DIFFUSERS.items()}


def _resnet_flux_to_diffusers(rest: str) -> str:
    return rest.replace("nin_shortcut", "conv_shortcut")


def flux_to_diffusers_key(key: str, num_levels: int) -> str:
    """The ``diffusers.AutoencoderKL`` name of a FLUX ``ae.safetensors`` tensor name.

    ``encoder.down.N.block.M.*`` -> ``encoder.down_blocks.N.resnets.M.*``;
    ``decoder.up.N.*`` -> ``decoder.up_blocks.{L-1-N}.*`` (FLUX numbers up-levels from the bottom);
    ``*.mid.block_K`` -> ``*.mid_block.resnets.{K-1}``; ``*.mid.attn_1.{norm,q,k,v,proj_out}`` ->
    ``*.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}``; ``*.norm_out`` ->
    ``*.conv_norm_out``; ``nin_shortcut`` -> ``conv_shortcut``. Raises ``KeyError`` otherwise.
    """
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        raise KeyError(key)
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("norm_out."):
        return f"{side}.conv_norm_out.{rest[len('norm_out.') :]}"
    if m := re.fullmatch(r"mid\.block_(\d)\.(.+)", rest):
        return f"{side}.mid_block.resnets.{int(m.group(1)) - 1}.{_resnet_flux_to_diffusers(m.group(2))}"
    if m := re.fullmatch(r"mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", rest):
        return f"{side}.mid_block.attentions.0.{_ATTN_FLUX_TO_DIFFUSERS[m.group(1)]}.{m.group(2)}"
    if side == "encoder":
        if m := re.fullmatch(r"down\.(\d+)\.block\.(\d+)\.(.+)", rest):
            return f"encoder.down_blocks.{m.group(1)}.resnets.{m.group(2)}.{_resnet_flux_to_diffusers(m.group(3))}"
        if m := re.fullmatch(r"down\.(\d+)\.downsample\.conv\.(weight|bias)", rest):
            return f"encoder.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    else:
        if m := re.fullmatch(r"up\.(\d+)\.block\.(\d+)\.(.+)", rest):
            level = num_levels - 1 - int(m.group(1))
            return f"decoder.up_blocks.{level}.resnets.{m.group(2)}.{_resnet_flux_to_diffusers(m.group(3))}"
        if m := re.fullmatch(r"up\.(\d+)\.upsample\.conv\.(weight|bias)", rest):
            level = num_levels - 1 - int(m.group(1))
            return f"decoder.up_blocks.{level}.upsamplers.0.conv.{m.group(2)}"
    raise KeyError(key)


def diffusers_to_flux_key(key: str, num_levels: int) -> str:
    """The FLUX ``ae.safetensors`` name of a ``diffusers.AutoencoderKL`` tensor name (inverse)."""
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        raise KeyError(key)
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out.{rest[len('conv_norm_out.') :]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest):
        return f"{side}.mid.block_{int(m.group(1)) + 1}.{m.group(2).replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(
        r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", rest
    ):
        return f"{side}.mid.attn_1.{_ATTN_DIFFUSERS_TO_FLUX[m.group(1)]}.{m.group(2)}"
    if side == "encoder":
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            return f"encoder.down.{m.group(1)}.block.{m.group(2)}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", rest):
            return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
    else:
        if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            level = num_levels - 1 - int(m.group(1))
            return f"decoder.up.{level}.block.{m.group(2)}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", rest):
            level = num_levels - 1 - int(m.group(1))
            return f"decoder.up.{level}.upsample.conv.{m.group(2)}"
    raise KeyError(key)


def is_attention_projection(diffusers_key: str) -> bool:
    """Whether a diffusers VAE weight is a mid-block attention projection (FLUX stores 1x1 convs)."""
    return bool(
        re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", diffusers_key)
    )
