"""The reference adapter passes the contract suite, in both latent modes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from sgt_models import FreezePolicy, ReferenceAdapterConfig
from sgt_models.reference import ReferenceAdapter
from sgt_models.testing import AdapterContract, AdapterFactory


def _factory(base: ReferenceAdapter) -> AdapterFactory:
    def build(freeze: FreezePolicy | None = None) -> ReferenceAdapter:
        adapter = copy.deepcopy(base)
        if freeze is not None:
            adapter.config = adapter.config.model_copy(update={"freeze": freeze})
            adapter.apply_freeze_policy()
        return adapter

    return build


@pytest.fixture(scope="module")
def pixel_model() -> ReferenceAdapter:
    torch.manual_seed(0)
    return ReferenceAdapter(ReferenceAdapterConfig(size="tiny"))


@pytest.fixture(scope="module")
def vae_model(tmp_path_factory: pytest.TempPathFactory) -> ReferenceAdapter:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae_dir: Path = tmp_path_factory.mktemp("vae")
    AutoencoderKL(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    ).save_pretrained(vae_dir)
    config = ReferenceAdapterConfig(
        size="tiny", latent_source="vae", vae_path=str(vae_dir), vae_reference_input=True
    )
    return ReferenceAdapter(config)


class TestPixelLatents(AdapterContract):
    @pytest.fixture
    def adapter_factory(self, pixel_model: ReferenceAdapter) -> AdapterFactory:
        return _factory(pixel_model)


class TestVaeLatentsWithReferenceInput(AdapterContract):
    @pytest.fixture
    def adapter_factory(self, vae_model: ReferenceAdapter) -> AdapterFactory:
        return _factory(vae_model)
