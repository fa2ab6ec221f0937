"""Build or load an adapter from its configuration's ``kind``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError

from sgt_models.config import AdapterConfig, ReferenceAdapterConfig

if TYPE_CHECKING:
    import torch

    from sgt_models.reference import ReferenceAdapter

__all__ = ["AdapterLoadError", "build_adapter", "load_adapter"]

_FUTURE: dict[str, str] = {
    kind: (
        f"the {name} adapter (kind={kind!r}) is not implemented yet: it is planned for the "
        f"follow-up '{name} adapter' issue (after issue 6, which delivered kind='reference')"
    )
    for kind, name in (("bagel", "BAGEL"), ("omnigen2", "OmniGen2"))
}


class AdapterLoadError(ValueError):
    """A checkpoint folder whose ``config.json`` is missing or names no known adapter kind."""


def build_adapter(config: AdapterConfig) -> ReferenceAdapter:
    """A freshly initialised adapter (weights from the global torch RNG) for ``config``."""
    if isinstance(config, ReferenceAdapterConfig):
        from sgt_models.reference import ReferenceAdapter

        return ReferenceAdapter(config)
    raise NotImplementedError(_FUTURE[config.kind])


def load_adapter(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> ReferenceAdapter:
    """Load what an adapter's ``save_pretrained`` wrote, choosing the class by ``config.json``'s kind."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise AdapterLoadError(f"{config_file} is missing: not an adapter checkpoint folder")
    try:
        raw = json.loads(config_file.read_text())
        config = TypeAdapter(AdapterConfig).validate_python(raw)
    except (json.JSONDecodeError, ValidationError) as exc:
        raise AdapterLoadError(f"{config_file}: not a valid adapter config: {exc}") from exc
    if isinstance(config, ReferenceAdapterConfig):
        from sgt_models.reference import ReferenceAdapter

        return ReferenceAdapter.from_pretrained(path, device=device, dtype=dtype)
    raise NotImplementedError(_FUTURE[config.kind])
