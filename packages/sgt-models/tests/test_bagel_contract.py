"""The BAGEL adapter passes the adapter contract suite on a tiny official-layout folder."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar

import pytest

from sgt_models import FreezePolicy
from sgt_models.bagel.modeling import BagelAdapter
from sgt_models.bagel.testing import tiny_bagel_config, write_tiny_bagel_folder
from sgt_models.testing import AdapterContract, AdapterFactory


@pytest.fixture(scope="module")
def tiny_bagel(tmp_path_factory: pytest.TempPathFactory) -> BagelAdapter:
    folder: Path = write_tiny_bagel_folder(tmp_path_factory.mktemp("bagel"))
    return BagelAdapter.from_pretrained(folder, config=tiny_bagel_config(folder))


class TestBagelAdapter(AdapterContract):
    image_size: ClassVar[int] = 32  # the tiny config's VAE size: 2x2 latent tokens

    @pytest.fixture
    def adapter_factory(self, tiny_bagel: BagelAdapter) -> AdapterFactory:
        def build(freeze: FreezePolicy | None = None) -> BagelAdapter:
            adapter = copy.deepcopy(tiny_bagel)
            if freeze is not None:
                adapter.config = adapter.config.model_copy(update={"freeze": freeze})
                adapter.apply_freeze_policy()
            return adapter

        return build
