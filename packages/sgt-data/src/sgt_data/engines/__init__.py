"""Where a conversion runs: :class:`LocalEngine` (worker processes on this machine, the default)
or :class:`RayEngine` (shards as Ray tasks on a cluster, ``pip install 'sgt-data[ray]'``). Both
give byte-identical stores for the same input and options."""

from sgt_data.engines._local import Engine, LocalEngine
from sgt_data.engines._ray import RayEngine

__all__ = ["Engine", "LocalEngine", "RayEngine"]
