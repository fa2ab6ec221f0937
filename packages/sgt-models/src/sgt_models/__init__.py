"""sgt-models: the adapter protocol, the flow-matching core and model adapters.

Importing this package does not import torch or any model family; adapters load lazily.
"""

from importlib.metadata import version as _version

from sgt_models.config import (
    AdapterConfig,
    AdapterConfigBase,
    BagelAdapterConfig,
    FlowMatchingConfig,
    FreezePolicy,
    OmniGen2AdapterConfig,
    ReferenceAdapterConfig,
)
from sgt_models.protocol import (
    PARAMETER_GROUPS,
    GenerationSettings,
    LossOutput,
    LossWeights,
    ModelBatch,
    UnifiedModelAdapter,
)
from sgt_models.registry import (
    AdapterLoadError,
    ModelFamily,
    build_adapter,
    family_of,
    load_adapter,
    register_family,
)

__version__ = _version("sgt-models")

__all__ = [
    "PARAMETER_GROUPS",
    "AdapterConfig",
    "AdapterConfigBase",
    "AdapterLoadError",
    "BagelAdapterConfig",
    "FlowMatchingConfig",
    "FreezePolicy",
    "GenerationSettings",
    "LossOutput",
    "LossWeights",
    "ModelBatch",
    "ModelFamily",
    "OmniGen2AdapterConfig",
    "ReferenceAdapterConfig",
    "UnifiedModelAdapter",
    "__version__",
    "build_adapter",
    "family_of",
    "load_adapter",
    "register_family",
]
