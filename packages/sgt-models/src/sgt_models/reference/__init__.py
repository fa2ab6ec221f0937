"""The reference unified model (config / modeling / processor trio); trains on a CPU at ``tiny``."""

from sgt_models.reference.configuration import (
    ReferenceArchitecture,
    ReferenceConfigError,
    architecture_for,
)
from sgt_models.reference.modeling import ReferenceAdapter, ReferenceCheckpointError
from sgt_models.reference.pretraining import (
    VisionPretrainConfig,
    VisionPretrainResult,
    dense_class_targets,
    presence_auc,
    pretrain_vision_encoder,
)
from sgt_models.reference.processor import (
    SPECIAL_TOKENS,
    ReferenceBatch,
    ReferenceProcessor,
    build_tokenizer,
)

__all__ = [
    "SPECIAL_TOKENS",
    "ReferenceAdapter",
    "ReferenceArchitecture",
    "ReferenceBatch",
    "ReferenceCheckpointError",
    "ReferenceConfigError",
    "ReferenceProcessor",
    "VisionPretrainConfig",
    "VisionPretrainResult",
    "architecture_for",
    "build_tokenizer",
    "dense_class_targets",
    "presence_auc",
    "pretrain_vision_encoder",
]
