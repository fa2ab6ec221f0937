"""Architecture presets of the reference model (``tiny`` for tests, ``small`` ~100M for GPUs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sgt_models.config import ReferenceAdapterConfig

__all__ = ["ReferenceArchitecture", "ReferenceConfigError", "architecture_for", "check_geometry"]


class ReferenceConfigError(ValueError):
    """A reference-model configuration that cannot be built (e.g. an indivisible image size)."""


@dataclass(frozen=True)
class ReferenceArchitecture:
    """Sizes of the three building blocks and how images become latents."""

    vocab_size: int
    lm_hidden: int
    lm_layers: int
    lm_heads: int
    lm_kv_heads: int
    lm_intermediate: int
    vit_hidden: int
    vit_layers: int
    vit_heads: int
    vit_intermediate: int
    vit_patch: int
    dit_hidden: int
    dit_layers: int
    dit_refiner_layers: int
    dit_heads: int
    dit_kv_heads: int
    dit_multiple_of: int
    dit_patch: int
    pixel_patch: int  # latent_source="pixels": pixels are space-to-depth'ed by this factor

    def qwen2_config(self, max_positions: int) -> dict[str, Any]:
        """Keyword arguments of ``transformers.Qwen2Config``."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.lm_hidden,
            "intermediate_size": self.lm_intermediate,
            "num_hidden_layers": self.lm_layers,
            "num_attention_heads": self.lm_heads,
            "num_key_value_heads": self.lm_kv_heads,
            "max_position_embeddings": max_positions,
            "tie_word_embeddings": False,
            "attention_dropout": 0.0,
            "rms_norm_eps": 1e-6,
        }

    def siglip_config(self, image_size: int) -> dict[str, Any]:
        """Keyword arguments of ``transformers.SiglipVisionConfig``."""
        return {
            "hidden_size": self.vit_hidden,
            "intermediate_size": self.vit_intermediate,
            "num_hidden_layers": self.vit_layers,
            "num_attention_heads": self.vit_heads,
            "image_size": image_size,
            "patch_size": self.vit_patch,
            "attention_dropout": 0.0,
        }

    def lumina2_config(self, latent_channels: int, reference_input: bool) -> dict[str, Any]:
        """Keyword arguments of ``diffusers.Lumina2Transformer2DModel``."""
        head_dim = self.dit_hidden // self.dit_heads
        # rotary dims per axis (caption position, row, column): even, summing to head_dim
        row = col = (head_dim // 3) // 2 * 2
        return {
            "patch_size": self.dit_patch,
            "in_channels": latent_channels * (2 if reference_input else 1),
            "out_channels": latent_channels,
            "hidden_size": self.dit_hidden,
            "num_layers": self.dit_layers,
            "num_refiner_layers": self.dit_refiner_layers,
            "num_attention_heads": self.dit_heads,
            "num_kv_heads": self.dit_kv_heads,
            "multiple_of": self.dit_multiple_of,
            "axes_dim_rope": (head_dim - row - col, row, col),
            "axes_lens": (1024, 256, 256),
            "cap_feat_dim": self.lm_hidden,
        }


_PRESETS: dict[str, ReferenceArchitecture] = {
    "tiny": ReferenceArchitecture(
        vocab_size=512,
        lm_hidden=64,
        lm_layers=2,
        lm_heads=4,
        lm_kv_heads=2,
        lm_intermediate=128,
        vit_hidden=48,
        vit_layers=2,
        vit_heads=2,
        vit_intermediate=96,
        vit_patch=8,
        dit_hidden=192,  # >= the 2*2*48 values of a token of pixel latents: no bottleneck
        dit_layers=2,
        dit_refiner_layers=1,
        dit_heads=4,
        dit_kv_heads=2,
        dit_multiple_of=32,
        dit_patch=2,
        pixel_patch=4,
    ),
    "small": ReferenceArchitecture(
        vocab_size=4096,
        lm_hidden=512,
        lm_layers=10,
        lm_heads=8,
        lm_kv_heads=4,
        lm_intermediate=1536,
        vit_hidden=384,
        vit_layers=6,
        vit_heads=6,
        vit_intermediate=1536,
        vit_patch=16,
        dit_hidden=512,
        dit_layers=8,
        dit_refiner_layers=2,
        dit_heads=8,
        dit_kv_heads=4,
        dit_multiple_of=128,
        dit_patch=2,
        pixel_patch=4,
    ),
}


def architecture_for(size: Literal["tiny", "small"]) -> ReferenceArchitecture:
    """The architecture preset of a size."""
    return _PRESETS[size]


def check_geometry(config: ReferenceAdapterConfig, latent_factor: int) -> None:
    """Raise ``ReferenceConfigError`` if ``image_size`` does not tile into patches and latents.

    With ``spatial_condition`` the grid of image tokens must also divide the latent grid.
    """
    arch = architecture_for(config.size)
    step = latent_factor * arch.dit_patch
    for name, unit in (("vision patch", arch.vit_patch), ("latent patch", step)):
        if config.image_size % unit:
            raise ReferenceConfigError(
                f"image_size={config.image_size} of the {config.size!r} reference model must be "
                f"a multiple of the {name} size {unit}"
            )
    if config.vision_stem == "conv" and arch.vit_patch & (arch.vit_patch - 1):
        raise ReferenceConfigError(
            f"vision_stem='conv' halves the image per stage: the vision patch ({arch.vit_patch}) "
            f"of the {config.size!r} reference model must be a power of 2"
        )
    if config.spatial_condition and arch.vit_patch % latent_factor:
        raise ReferenceConfigError(
            f"spatial_condition needs the vision patch ({arch.vit_patch}) of the {config.size!r} "
            f"reference model to be a multiple of the latent factor ({latent_factor})"
        )
