"""sgt-data: annotations -> RLE kernels -> rendered targets -> Zarr v3 stores -> datasets.

Importing this package compiles nothing and imports no heavy dependency; Numba kernels compile
lazily on first use.
"""

from importlib.metadata import version as _version

from sgt_data.datasets import MemoryRecord, MemoryStore, SourceDataset, StoreReader
from sgt_data.errors import RLEError, SgtDataError, TargetGuardError
from sgt_data.guard import check_target
from sgt_data.mixing import MixtureKey, MixtureLoader, MixtureSampler, build_loader
from sgt_data.prompts import choose_instruction, instruction_set
from sgt_data.scenes import SceneConfig, WorldPaths, generate_scene, write_world
from sgt_data.schema import (
    GENERATIVE_TASKS,
    MANIFEST_SCHEMA_VERSION,
    MixtureConfig,
    MixtureSource,
    RendererSpec,
    Sample,
    SkippedItem,
    SourceSpec,
    StoreManifest,
    TaskKind,
    Turn,
)

__version__ = _version("sgt-data")

__all__ = [
    "GENERATIVE_TASKS",
    "MANIFEST_SCHEMA_VERSION",
    "MemoryRecord",
    "MemoryStore",
    "MixtureConfig",
    "MixtureKey",
    "MixtureLoader",
    "MixtureSampler",
    "MixtureSource",
    "RLEError",
    "RendererSpec",
    "Sample",
    "SceneConfig",
    "SgtDataError",
    "SkippedItem",
    "SourceDataset",
    "SourceSpec",
    "StoreManifest",
    "StoreReader",
    "TargetGuardError",
    "TaskKind",
    "Turn",
    "WorldPaths",
    "__version__",
    "build_loader",
    "check_target",
    "choose_instruction",
    "generate_scene",
    "instruction_set",
    "write_world",
]
