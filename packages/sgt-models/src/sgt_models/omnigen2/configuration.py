"""The OmniGen2 pipeline folder: its layout, the published configs and the tiny test configs.

An official pipeline folder (``OmniGen2/OmniGen2`` on the hub) holds::

    model_index.json   _class_name "OmniGen2Pipeline" and the class of each component
    mllm/              Qwen2.5-VL-3B-Instruct: config.json, model*.safetensors (keys model.* / visual.*,
                       the tied lm_head absent), generation_config.json
    processor/         tokenizer files, preprocessor_config.json (Qwen2VLImageProcessor)
    transformer/       config.json, diffusion_pytorch_model*.safetensors (OmniGen2Transformer2DModel)
    vae/               config.json, diffusion_pytorch_model.safetensors (diffusers AutoencoderKL, FLUX VAE)
    scheduler/         scheduler_config.json (OmniGen2's FlowMatchEulerDiscreteScheduler)

SGT saves the same layout plus ``sgt_adapter.json`` (its adapter config).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "COMPONENTS",
    "GENERATION_SYSTEM_PROMPT",
    "MODEL_INDEX",
    "MODEL_INDEX_FILE",
    "PUBLISHED_MLLM_CONFIG",
    "PUBLISHED_SCHEDULER_CONFIG",
    "PUBLISHED_TRANSFORMER_CONFIG",
    "PUBLISHED_VAE_CONFIG",
    "QWEN_SPECIAL_TOKENS",
    "SGT_ADAPTER_FILE",
    "UNDERSTANDING_SYSTEM_PROMPT",
    "OmniGen2CheckpointError",
]


class OmniGen2CheckpointError(ValueError):
    """An OmniGen2 folder that cannot be loaded; the message names the missing or corrupt file."""


MODEL_INDEX_FILE = "model_index.json"
SGT_ADAPTER_FILE = "sgt_adapter.json"
#: Sub-folders of a pipeline folder, in the order ``model_index.json`` lists them.
COMPONENTS: tuple[str, ...] = ("mllm", "processor", "scheduler", "transformer", "vae")

#: Upstream's system prompt for generation (``OmniGen2Pipeline._apply_chat_template``).
GENERATION_SYSTEM_PROMPT = (
    "You are a helpful assistant that generates high-quality images based on user instructions."
)
#: Qwen2.5-VL's default system prompt (its chat template), used for understanding.
UNDERSTANDING_SYSTEM_PROMPT = "You are a helpful assistant."

#: Qwen2.5-VL's special tokens that the adapter uses (the tiny tokenizer carries these and more).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "OmniGen2Pipeline",
    "_diffusers_version": "0.33.1",
    "mllm": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "processor": ["transformers", "Qwen2_5_VLProcessor"],
    "scheduler": ["scheduling_flow_match_euler_discrete", "FlowMatchEulerDiscreteScheduler"],
    "transformer": ["transformer_omnigen2", "OmniGen2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

#: ``transformer/config.json`` of the release (upstream ``options/ft.yml: arch_opt``).
PUBLISHED_TRANSFORMER_CONFIG: dict[str, Any] = {
    "_class_name": "OmniGen2Transformer2DModel",
    "_diffusers_version": "0.33.1",
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": None,
    "hidden_size": 2520,
    "num_layers": 32,
    "num_refiner_layers": 2,
    "num_attention_heads": 21,
    "num_kv_heads": 7,
    "multiple_of": 256,
    "ffn_dim_multiplier": None,
    "norm_eps": 1e-05,
    "axes_dim_rope": [40, 40, 40],
    "axes_lens": [10000, 10000, 10000],
    "text_feat_dim": 2048,
    "timestep_scale": 1000.0,
}

#: ``mllm/config.json``: Qwen2.5-VL-3B-Instruct in the hub's (flat, transformers 4.x) form.
PUBLISHED_MLLM_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}

#: ``vae/config.json``: the FLUX.1 VAE as a diffusers ``AutoencoderKL``.
PUBLISHED_VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.33.1",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}

#: ``scheduler/scheduler_config.json``: upstream's flow-matching Euler scheduler.
PUBLISHED_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.33.1",
    "dynamic_time_shift": True,
    "num_train_timesteps": 1000,
}
