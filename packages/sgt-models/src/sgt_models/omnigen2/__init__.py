"""The OmniGen2 adapter: Qwen2.5-VL-3B MLLM + OmniGen2 DiT + FLUX VAE, official folder layout."""

from sgt_models.omnigen2.configuration import OmniGen2CheckpointError
from sgt_models.omnigen2.modeling import OmniGen2Adapter
from sgt_models.omnigen2.processor import OmniGen2Batch, OmniGen2Processor
from sgt_models.omnigen2.scheduler import OmniGen2Scheduler
from sgt_models.omnigen2.transformer import OmniGen2Transformer2DModel

__all__ = [
    "OmniGen2Adapter",
    "OmniGen2Batch",
    "OmniGen2CheckpointError",
    "OmniGen2Processor",
    "OmniGen2Scheduler",
    "OmniGen2Transformer2DModel",
]
