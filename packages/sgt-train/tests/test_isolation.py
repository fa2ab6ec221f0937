"""sgt-train sits at the top: every sibling it imports is a declared dependency."""

import importlib
import importlib.metadata

import pytest


@pytest.mark.parametrize("sibling", ["sgt_data", "sgt_models", "sgt_eval"])
def test_declared_siblings_are_importable(sibling: str) -> None:
    importlib.import_module(sibling)


def test_siblings_are_pinned_by_minor_range() -> None:
    requires = importlib.metadata.requires("sgt-train") or []
    siblings = {r.split(">=")[0].split("[")[0]: r for r in requires if r.startswith("sgt-")}
    assert set(siblings) == {"sgt-data", "sgt-models", "sgt-eval"}
    for name, requirement in siblings.items():
        assert ">=0." in requirement, requirement
        assert ",<0." in requirement, f"{name} must be pinned by minor range: {requirement}"
