"""build_adapter / load_adapter dispatch on the config's kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgt_models import BagelAdapterConfig, OmniGen2AdapterConfig, ReferenceAdapterConfig
from sgt_models.reference import ReferenceAdapter
from sgt_models.registry import AdapterLoadError, build_adapter, load_adapter
from sgt_models.testing import contract_samples


def test_build_then_load_round_trips_through_the_kind(tmp_path: Path) -> None:
    torch.manual_seed(0)
    adapter = build_adapter(ReferenceAdapterConfig(size="tiny"))
    assert isinstance(adapter, ReferenceAdapter)
    adapter.save_pretrained(tmp_path)
    assert '"kind": "reference"' in (tmp_path / "config.json").read_text()
    loaded = load_adapter(tmp_path)
    assert isinstance(loaded, ReferenceAdapter)
    assert loaded.config == adapter.config
    batch = adapter.collate(contract_samples())
    torch.manual_seed(1)
    expected = adapter.loss(batch).total
    torch.manual_seed(1)
    assert torch.equal(loaded.loss(batch).total, expected)


@pytest.mark.parametrize(
    ("config", "name"),
    [
        (BagelAdapterConfig(model_path="/ckpt/bagel"), "BAGEL"),
        (OmniGen2AdapterConfig(model_path="/ckpt/omnigen2"), "OmniGen2"),
    ],
)
def test_future_kinds_raise_not_implemented_naming_the_issue(
    config: BagelAdapterConfig | OmniGen2AdapterConfig, name: str, tmp_path: Path
) -> None:
    with pytest.raises(
        NotImplementedError, match=f"{name} adapter .* follow-up '{name} adapter' issue"
    ):
        build_adapter(config)
    (tmp_path / "config.json").write_text(config.model_dump_json())
    with pytest.raises(NotImplementedError, match=f"kind='{config.kind}'"):
        load_adapter(tmp_path)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(AdapterLoadError, match=r"config\.json is missing"):
        load_adapter(tmp_path)
    (tmp_path / "config.json").write_text('{"kind": "janus"}')
    with pytest.raises(AdapterLoadError, match=r"config\.json: not a valid adapter config"):
        load_adapter(tmp_path)
