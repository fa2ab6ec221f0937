"""The BAGEL adapter (BAGEL-7B-MoT: Qwen2.5 MoT + SigLIP NaViT + FLUX VAE).

Importing this package imports torch but no model code; the adapter class loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sgt_models.bagel.configuration import BagelArchitecture, BagelCheckpointError

if TYPE_CHECKING:
    from sgt_models.bagel.modeling import BagelAdapter
    from sgt_models.bagel.processor import BagelBatch

__all__ = ["BagelAdapter", "BagelArchitecture", "BagelBatch", "BagelCheckpointError"]


def __getattr__(name: str) -> Any:
    if name == "BagelAdapter":
        from sgt_models.bagel.modeling import BagelAdapter

        return BagelAdapter
    if name == "BagelBatch":
        from sgt_models.bagel.processor import BagelBatch

        return BagelBatch
    raise AttributeError(name)
