"""Model families by ``kind``: build, load, recognise and check adapters through one table.

Each family is one :class:`ModelFamily`. The built-in ones (``reference``, ``bagel``,
``omnigen2``) are imported only when first asked for; a downstream package adds its own without
editing sgt-models by declaring an entry point in the group ``sgt_models.families``::

    # pyproject.toml of the downstream package
    [project.entry-points."sgt_models.families"]
    mymodel = "my_package.sgt_family:FAMILY"

where ``FAMILY = ModelFamily(kind="mymodel", config_type=MyConfig, build=..., load=...)`` and
``MyConfig`` subclasses ``sgt_models.config.AdapterConfigBase`` with ``kind: Literal["mymodel"]``.
Run configs (``model: {kind: mymodel, ...}``), ``build_adapter``, ``load_adapter`` and
``sgt-models check`` then know it.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    import torch

    from sgt_models.check import CheckReport

__all__ = [
    "ENTRY_POINT_GROUP",
    "SGT_ADAPTER_FILE",
    "AdapterLoadError",
    "ModelFamily",
    "build_adapter",
    "families",
    "family_of",
    "family_of_folder",
    "load_adapter",
    "parse_adapter_config",
    "register_family",
]

_log = logging.getLogger(__name__)

#: The entry-point group downstream packages register families in.
ENTRY_POINT_GROUP = "sgt_models.families"
#: Where a family whose official folder has its own ``config.json`` keeps SGT's adapter config.
SGT_ADAPTER_FILE = "sgt_adapter.json"

_BUILTIN: dict[str, str] = {
    "reference": "sgt_models.reference._family:FAMILY",
    "bagel": "sgt_models.bagel._family:FAMILY",
    "omnigen2": "sgt_models.omnigen2._family:FAMILY",
}


class AdapterLoadError(ValueError):
    """A folder that names no known family, a kind no family provides, or an invalid config."""


@dataclass(frozen=True)
class ModelFamily:
    """Everything sgt-models needs of one model family.

    ``build`` makes an adapter from its config (a family whose config names a ``model_path``
    loads those weights there); ``load`` reads a folder that ``save_pretrained`` wrote or an
    official folder of the family; ``recognise`` tells an official (non-SGT) folder of the
    family; ``inspect`` checks a folder from its safetensors headers (``sgt-models check``).
    """

    kind: str
    config_type: type[BaseModel]
    build: Callable[[Any], torch.nn.Module]
    load: Callable[[Path, str | torch.device, torch.dtype | None], torch.nn.Module]
    recognise: Callable[[Path], bool] | None = None
    inspect: Callable[[Path], CheckReport] | None = None


_loaded: dict[str, ModelFamily] = {}
_registered: dict[str, ModelFamily] = {}
_plugins: dict[str, str] | None = None


def _plugin_table() -> dict[str, str]:
    global _plugins
    if _plugins is None:
        _plugins = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in _BUILTIN:
                _log.warning(
                    "ignoring entry point %s = %s: kind %r is built into sgt-models",
                    ep.name,
                    ep.value,
                    ep.name,
                )
                continue
            _plugins[ep.name] = ep.value
    return _plugins


def _import(target: str, origin: str) -> ModelFamily:
    module_name, _, attribute = target.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise AdapterLoadError(f"{origin} {target!r} cannot be imported: {exc}") from exc
    family = value() if callable(value) and not isinstance(value, ModelFamily) else value
    if not isinstance(family, ModelFamily):
        raise AdapterLoadError(f"{origin} {target!r} is not a sgt_models.registry.ModelFamily")
    return family


def register_family(family: ModelFamily) -> None:
    """Register a family in this process (entry points do it for installed packages)."""
    _registered[family.kind] = family
    _loaded.pop(family.kind, None)


def known_kinds() -> list[str]:
    """Every kind a family is available for (built-in, registered or by entry point)."""
    return sorted({*_BUILTIN, *_registered, *_plugin_table()})


def family_of(kind: str) -> ModelFamily:
    """The family of ``kind`` (``AdapterLoadError`` listing the known kinds if there is none)."""
    if kind in _registered:
        return _registered[kind]
    if kind in _loaded:
        return _loaded[kind]
    if kind in _BUILTIN:
        family = _import(_BUILTIN[kind], "built-in family")
    elif kind in _plugin_table():
        family = _import(_plugin_table()[kind], f"entry point {ENTRY_POINT_GROUP}:{kind} =")
    else:
        raise AdapterLoadError(
            f"no model family of kind {kind!r}; known kinds: {', '.join(known_kinds())}"
        )
    if family.kind != kind:
        raise AdapterLoadError(f"family registered as {kind!r} says its kind is {family.kind!r}")
    _loaded[kind] = family
    return family


def families() -> dict[str, ModelFamily]:
    """Every available family by kind (imports them all)."""
    return {kind: family_of(kind) for kind in known_kinds()}


def parse_adapter_config(raw: Mapping[str, Any] | BaseModel, origin: str = "config") -> BaseModel:
    """Validate an adapter config of any family by its ``kind``."""
    if isinstance(raw, BaseModel):
        kind = getattr(raw, "kind", None)
        if isinstance(kind, str) and isinstance(raw, family_of(kind).config_type):
            return raw
        raw = raw.model_dump()
    if not isinstance(raw, Mapping):
        raise AdapterLoadError(f"{origin}: an adapter config must be a mapping with a 'kind'")
    kind = raw.get("kind")
    if not isinstance(kind, str):
        raise AdapterLoadError(
            f"{origin}: the adapter config has no 'kind' (one of {', '.join(known_kinds())})"
        )
    config_type = family_of(kind).config_type
    try:
        return config_type.model_validate(raw)
    except ValidationError as exc:
        raise AdapterLoadError(f"{origin}: not a valid {kind!r} adapter config: {exc}") from exc


def build_adapter(config: Any) -> torch.nn.Module:
    """A new adapter for ``config`` (freshly initialised weights from the global torch RNG, or
    the weights of the folder a ``model_path`` names)."""
    kind = getattr(config, "kind", None)
    if not isinstance(kind, str):
        raise AdapterLoadError(f"{type(config).__name__} has no 'kind': not an adapter config")
    return family_of(kind).build(config)


def _saved_kind(folder: Path) -> tuple[str, Path] | None:
    for name in (SGT_ADAPTER_FILE, "config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if name == SGT_ADAPTER_FILE:
                raise AdapterLoadError(f"{file}: not valid JSON ({exc})") from None
            continue
        kind = raw.get("kind") if isinstance(raw, dict) else None
        if isinstance(kind, str):
            return kind, file
        if name == SGT_ADAPTER_FILE:
            raise AdapterLoadError(f"{file} names no adapter 'kind'")
    return None


def family_of_folder(path: str | Path) -> ModelFamily:
    """The family of a checkpoint folder: SGT's saved config, else an official layout."""
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterLoadError(f"{folder} is not a folder")
    saved = _saved_kind(folder)
    if saved is not None:
        kind, file = saved
        try:
            return family_of(kind)
        except AdapterLoadError as exc:
            raise AdapterLoadError(f"{file}: {exc}") from None
    official: list[str] = []
    for kind in known_kinds():
        try:
            family = family_of(kind)
        except AdapterLoadError as exc:  # a broken plugin must not hide the other families
            _log.warning("%s", exc)
            continue
        if family.recognise is None:
            continue
        official.append(kind)
        if family.recognise(folder):
            return family
    raise AdapterLoadError(
        f"{folder} is not a checkpoint folder sgt-models knows: it has no {SGT_ADAPTER_FILE} "
        f"or config.json naming an adapter 'kind', and is not an official folder of "
        f"{' or '.join(official) or 'any family'}"
    )


def load_adapter(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """Load a folder ``save_pretrained`` wrote (or an official folder of a known family)."""
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterLoadError(f"{folder} is not a folder: no adapter checkpoint to load")
    return family_of_folder(folder).load(folder, device, dtype)
