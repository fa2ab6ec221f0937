"""sgt-data: annotations -> RLE kernels -> rendered targets -> Zarr v3 stores -> datasets.

Importing this package compiles nothing and imports no heavy dependency; Numba kernels compile
lazily on first use.
"""

from importlib.metadata import version as _version

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
    "MixtureConfig",
    "MixtureSource",
    "RendererSpec",
    "Sample",
    "SceneConfig",
    "SkippedItem",
    "SourceSpec",
    "StoreManifest",
    "TaskKind",
    "Turn",
    "WorldPaths",
    "__version__",
    "generate_scene",
    "write_world",
]
