"""Adapter configurations: one pydantic model per model family, a union discriminated by ``kind``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AdapterConfig",
    "AdapterConfigBase",
    "BagelAdapterConfig",
    "FlowMatchingConfig",
    "FreezePolicy",
    "OmniGen2AdapterConfig",
    "ReferenceAdapterConfig",
]


class FreezePolicy(BaseModel):
    """Which parameter groups train. The VAE (when a model has one) is always frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vision_encoder: bool = Field(
        default=False, description="freeze the understanding vision encoder"
    )
    llm: bool = Field(default=False, description="freeze the language model")
    connector: bool = Field(default=False, description="freeze the vision->LLM connector")
    generator: bool = Field(
        default=False, description="freeze the generation path (gen expert / DiT)"
    )

    def frozen_groups(self) -> dict[str, bool]:
        """Parameter group name -> frozen; the VAE is always frozen."""
        return {
            "vision_encoder": self.vision_encoder,
            "connector": self.connector,
            "llm": self.llm,
            "generator": self.generator,
            "vae": True,
        }


class FlowMatchingConfig(BaseModel):
    """Training-time timestep distribution and inference defaults of the flow-matching head."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    logit_normal_mean: float = 0.0
    logit_normal_std: float = Field(default=1.0, gt=0)
    shift: float = Field(
        default=1.0, gt=0, description="static timestep shift s: t <- s t / (1 + (s-1) t)"
    )
    dynamic_shift: bool = Field(
        default=False,
        description="resolution-dependent shift (OmniGen2 / FLUX style) instead of static",
    )
    base_seq_len: int = Field(default=256, ge=1)
    max_seq_len: int = Field(default=4096, ge=1)
    base_shift: float = 0.5
    max_shift: float = 1.15
    num_inference_steps: int = Field(default=30, ge=1)
    inference_shift: float = Field(default=3.0, gt=0)
    cfg_text_scale: float = Field(default=4.0, ge=0)
    cfg_image_scale: float = Field(default=2.0, ge=0)

    @model_validator(mode="after")
    def _check_seq(self) -> FlowMatchingConfig:
        if self.max_seq_len <= self.base_seq_len:
            raise ValueError("max_seq_len must exceed base_seq_len")
        return self


class AdapterConfigBase(BaseModel):
    """What every adapter config has; a downstream family's config subclasses it and adds
    ``kind: Literal["its-kind"]`` (see ``sgt_models.registry``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str

    freeze: FreezePolicy = FreezePolicy()
    flow: FlowMatchingConfig = FlowMatchingConfig()
    dtype: Literal["float32", "bfloat16"] = "float32"
    vae_reference_input: bool = Field(
        default=False,
        description=(
            "also feed the input image to the generator as a VAE reference latent. Off in the SGT "
            "design: the input must reach the generator only through the understanding encoder."
        ),
    )


class ReferenceAdapterConfig(AdapterConfigBase):
    """The small reference unified model that trains on a CPU (``tiny``) or a GPU (``small``)."""

    kind: Literal["reference"] = "reference"
    size: Literal["tiny", "small"] = "tiny"
    image_size: int = Field(
        default=64, ge=16, description="generation and understanding resolution"
    )
    latent_source: Literal["pixels", "vae"] = Field(
        default="pixels",
        description="'pixels': patchified pixels (tiny demos); 'vae': AutoencoderKL",
    )
    vae_path: str | None = Field(default=None, description="local diffusers AutoencoderKL folder")
    max_text_tokens: int = Field(default=64, ge=8)
    text_cond_dropout: float = Field(
        default=0.1, ge=0, le=1, description="training: drop the instruction, keep the image"
    )
    uncond_dropout: float = Field(
        default=0.1, ge=0, le=1, description="training: drop every condition (for CFG)"
    )
    vision_stem: Literal["patch", "conv"] = Field(
        default="patch",
        description="understanding encoder front end: 'patch' = SigLIP's linear patch embedding; "
        "'conv' = 3x3 convolutions with 2x max pooling down to the patch grid",
    )
    spatial_condition: bool = Field(
        default=False,
        description="generator: also read the LM's hidden states at the image tokens as a "
        "spatial reference on the latent grid (linear, pixel-shuffled; zero when dropped)",
    )
    question_film: bool = Field(
        default=False,
        description="understanding rows: modulate the image tokens by the prompt (FiLM: scale and "
        "shift from the mean prompt-token embedding, zero-initialised; instruction-aware visual "
        "features as in InstructBLIP). Generative rows keep unmodulated image tokens",
    )

    @model_validator(mode="after")
    def _check_vae(self) -> ReferenceAdapterConfig:
        if self.latent_source == "vae" and not self.vae_path:
            raise ValueError("latent_source='vae' needs vae_path (a local AutoencoderKL folder)")
        if self.spatial_condition and self.vae_reference_input:
            raise ValueError(
                "spatial_condition and vae_reference_input both fill the generator's reference "
                "channels; set only one"
            )
        return self


class BagelAdapterConfig(AdapterConfigBase):
    """BAGEL-7B-MoT (Qwen2.5 MoT + SigLIP + FLUX VAE), from a local checkpoint folder."""

    kind: Literal["bagel"] = "bagel"
    model_path: str = Field(
        min_length=1, description="local folder with ema.safetensors, llm/vit configs, ae"
    )
    vit_image_size: int = Field(
        default=224, ge=14, description="SigLIP input: longest side (stride 14, aspect kept)"
    )
    vit_min_size: int = Field(
        default=224, ge=14, description="SigLIP input: shortest side before the long-side cap"
    )
    vae_min_size: int = Field(default=512, ge=16)
    vae_max_size: int = Field(default=1024, ge=16)
    max_latent_size: int = Field(default=64, ge=1)
    expected_num_tokens: int = Field(
        default=16384, ge=1, description="packed tokens per rank per step"
    )
    max_num_tokens: int = Field(default=36864, ge=1)
    text_cond_dropout: float = Field(default=0.1, ge=0, le=1)
    vit_cond_dropout: float = Field(default=0.3, ge=0, le=1)
    vae_cond_dropout: float = Field(default=0.3, ge=0, le=1)
    finetune_from_ema: bool = True
    flow: FlowMatchingConfig = FlowMatchingConfig(num_inference_steps=50)
    gradient_checkpointing: bool = Field(default=False, description="recompute each LLM layer")
    attention_backend: Literal["auto", "sdpa", "flex"] = Field(
        default="auto", description="auto: FlexAttention on CUDA when available, else SDPA"
    )
    lora_rank: int | None = Field(
        default=None, ge=1, description="train LoRA adapters of this rank instead of full weights"
    )
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_target: Literal["generation", "understanding", "both"] = Field(
        default="generation", description="which MoT expert's projections get LoRA"
    )


class OmniGen2AdapterConfig(AdapterConfigBase):
    """OmniGen2 (Qwen2.5-VL-3B MLLM + Lumina-2 style DiT + FLUX VAE), from a local pipeline folder."""

    kind: Literal["omnigen2"] = "omnigen2"
    model_path: str = Field(min_length=1, description="local OmniGen2 pipeline folder")
    mllm_path: str | None = Field(default=None, description="override for the Qwen2.5-VL weights")
    max_output_pixels: int = Field(default=1024 * 1024, ge=256)
    max_input_pixels: int = Field(default=1024 * 1024, ge=256)
    max_text_tokens: int = Field(default=888, ge=8)
    lora_rank: int | None = Field(
        default=None, ge=1, description="train the DiT with LoRA of this rank"
    )
    # OmniGen2's own schedule: dynamic shift in training, upstream's script defaults at inference
    flow: FlowMatchingConfig = FlowMatchingConfig(
        dynamic_shift=True, num_inference_steps=50, cfg_text_scale=5.0, cfg_image_scale=2.0
    )
    detach_mllm: bool = Field(
        default=False,
        description=(
            "upstream's frozen-MLLM conditioning: the generation loss does not reach the MLLM. "
            "Off in SGT: the dense loss trains the understanding representations"
        ),
    )
    lora_alpha: float | None = Field(default=None, gt=0, description="LoRA alpha (default: rank)")
    lora_mllm: bool = Field(
        default=False, description="with lora_rank: also LoRA on the LM's attention projections"
    )
    gradient_checkpointing: bool = Field(
        default=False, description="recompute DiT and MLLM activations in the backward"
    )


#: The configuration of any adapter; ``kind`` selects the model family.
AdapterConfig = Annotated[
    ReferenceAdapterConfig | BagelAdapterConfig | OmniGen2AdapterConfig,
    Field(discriminator="kind"),
]
