"""Run configs shipped with sgt-train (``bagel-sgt``, ``omnigen2-sgt``, ablations, ``tiny-sgt``)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["recipe_names", "recipe_path"]


def recipe_names() -> list[str]:
    """Names of the shipped recipes, sorted."""
    folder = files(__name__)
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def recipe_path(name: str) -> Path:
    """The YAML file of a shipped recipe; ``KeyError`` names the known ones."""
    if name not in recipe_names():
        raise KeyError(f"no shipped recipe {name!r}; known: {', '.join(recipe_names())}")
    return Path(str(files(__name__).joinpath(f"{name}.yaml")))
