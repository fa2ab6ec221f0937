"""sgt-eval depends only on the siblings it declares; in its own environment the others are absent."""

import importlib
import os

import pytest

ISOLATED = os.environ.get("SGT_ISOLATED_PACKAGE") == "sgt-eval"


@pytest.mark.skipif(not ISOLATED, reason="only meaningful in sgt-eval's own nox environment")
@pytest.mark.parametrize("sibling", ["sgt_train"])
def test_undeclared_siblings_are_not_importable(sibling: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(sibling)


@pytest.mark.parametrize("sibling", ["sgt_data", "sgt_models"])
def test_declared_siblings_are_importable(sibling: str) -> None:
    importlib.import_module(sibling)
