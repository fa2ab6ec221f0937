"""sgt-data sits at the bottom: in its own test environment no sibling package is importable."""

import importlib
import os

import pytest

ISOLATED = os.environ.get("SGT_ISOLATED_PACKAGE") == "sgt-data"


@pytest.mark.skipif(not ISOLATED, reason="only meaningful in sgt-data's own nox environment")
@pytest.mark.parametrize("sibling", ["sgt_models", "sgt_train", "sgt_eval"])
def test_siblings_are_not_importable(sibling: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(sibling)


def test_import_is_light() -> None:
    """Importing sgt_data compiles nothing and pulls in neither numba, zarr nor torch."""
    import subprocess
    import sys

    code = (
        "import sys, sgt_data; "
        "print(','.join(m for m in ('numba', 'zarr', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
