"""sgt-models depends only on the siblings it declares; in its own environment the others are absent."""

import importlib
import os

import pytest

ISOLATED = os.environ.get("SGT_ISOLATED_PACKAGE") == "sgt-models"


@pytest.mark.skipif(not ISOLATED, reason="only meaningful in sgt-models's own nox environment")
@pytest.mark.parametrize("sibling", ["sgt_train", "sgt_eval"])
def test_undeclared_siblings_are_not_importable(sibling: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(sibling)


@pytest.mark.parametrize("sibling", ["sgt_data"])
def test_declared_siblings_are_importable(sibling: str) -> None:
    importlib.import_module(sibling)
