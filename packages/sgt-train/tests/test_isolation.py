"""sgt-train sits at the top: every sibling it imports is a declared dependency."""

import importlib
import importlib.metadata
import re

import pytest


@pytest.mark.parametrize("sibling", ["sgt_data", "sgt_models", "sgt_eval"])
def test_declared_siblings_are_importable(sibling: str) -> None:
    importlib.import_module(sibling)


def test_siblings_are_pinned_by_minor_range() -> None:
    requires = importlib.metadata.requires("sgt-train") or []
    siblings = {
        re.match(r"[A-Za-z0-9_.-]+", r).group(0): r  # type: ignore[union-attr]
        for r in requires
        if r.startswith("sgt-")
    }
    assert set(siblings) == {"sgt-data", "sgt-models", "sgt-eval"}
    for name, requirement in siblings.items():
        lower = re.search(r">=0\.(\d+)", requirement)
        upper = re.search(r"<0\.(\d+)", requirement)
        assert lower, f"{name}: no lower bound in {requirement}"
        assert upper, f"{name}: no upper bound in {requirement}"
        assert int(upper.group(1)) == int(lower.group(1)) + 1, (
            f"{name}: not a minor range: {requirement}"
        )
