"""The OmniGen2 adapter passes the contract suite on a tiny official-layout folder."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from sgt_models import FreezePolicy, OmniGen2AdapterConfig
from sgt_models.omnigen2 import OmniGen2Adapter
from sgt_models.omnigen2.testing import write_tiny_omnigen2_folder
from sgt_models.testing import AdapterContract, AdapterFactory


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_omnigen2_folder(tmp_path_factory.mktemp("omnigen2") / "pipeline")


@pytest.fixture(scope="module")
def tiny_model(tiny_folder: Path) -> OmniGen2Adapter:
    # max_output_pixels = 64 * 64: text-to-image draws at the contract's image size
    config = OmniGen2AdapterConfig(model_path=str(tiny_folder), max_output_pixels=64 * 64)
    return OmniGen2Adapter.from_config(config)


class TestOmniGen2Adapter(AdapterContract):
    @pytest.fixture
    def adapter_factory(self, tiny_model: OmniGen2Adapter) -> AdapterFactory:
        def build(freeze: FreezePolicy | None = None) -> OmniGen2Adapter:
            adapter = copy.deepcopy(tiny_model)
            if freeze is not None:
                adapter.config = adapter.config.model_copy(update={"freeze": freeze})
                adapter.apply_freeze_policy()
            return adapter

        return build


def test_loading_leaves_the_global_rng_alone(tiny_folder: Path) -> None:
    state = torch.get_rng_state()
    OmniGen2Adapter.from_pretrained(tiny_folder)
    assert torch.equal(torch.get_rng_state(), state)
