"""Adapter configurations: a union discriminated by ``kind`` that round-trips through JSON."""

import pytest
from pydantic import TypeAdapter, ValidationError

from sgt_models import (
    AdapterConfig,
    BagelAdapterConfig,
    FreezePolicy,
    GenerationSettings,
    LossWeights,
    OmniGen2AdapterConfig,
    ReferenceAdapterConfig,
)

ADAPTER = TypeAdapter(AdapterConfig)


@pytest.mark.parametrize(
    "config",
    [
        ReferenceAdapterConfig(size="tiny", freeze=FreezePolicy(vision_encoder=True)),
        BagelAdapterConfig(model_path="/ckpt/BAGEL-7B-MoT", vit_image_size=224),
        OmniGen2AdapterConfig(model_path="/ckpt/OmniGen2", lora_rank=8),
    ],
)
def test_adapter_configs_round_trip_and_dispatch_on_kind(config: object) -> None:
    data = ADAPTER.dump_json(config)  # type: ignore[arg-type]
    again = ADAPTER.validate_json(data)
    assert type(again) is type(config)
    assert again == config


def test_unknown_kind_names_the_choices() -> None:
    with pytest.raises(ValidationError, match="'reference', 'bagel', 'omnigen2'"):
        ADAPTER.validate_python({"kind": "janus"})


def test_vae_latents_need_a_vae_path() -> None:
    with pytest.raises(ValidationError, match="needs vae_path"):
        ReferenceAdapterConfig(latent_source="vae")


def test_bagel_needs_a_model_path() -> None:
    with pytest.raises(ValidationError, match="model_path"):
        ADAPTER.validate_python({"kind": "bagel"})


def test_small_contracts_round_trip() -> None:
    for obj in (LossWeights(ce=1.5, mse=1.0), GenerationSettings(height=64, width=64, seed=3)):
        assert type(obj).model_validate_json(obj.model_dump_json()) == obj
