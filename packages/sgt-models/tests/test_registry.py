"""build_adapter / load_adapter dispatch on the config's kind through one table of families."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sgt_models import ReferenceAdapterConfig
from sgt_models.reference import ReferenceAdapter
from sgt_models.registry import (
    ENTRY_POINT_GROUP,
    AdapterLoadError,
    build_adapter,
    family_of,
    known_kinds,
    load_adapter,
    parse_adapter_config,
)
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


def test_built_in_families_share_one_table() -> None:
    assert {"reference", "bagel", "omnigen2"} <= set(known_kinds())
    for kind in ("reference", "bagel", "omnigen2"):
        family = family_of(kind)
        assert family.kind == kind
        assert family.config_type.model_fields["kind"].default == kind


def test_load_errors_name_the_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(AdapterLoadError, match=r"is not a checkpoint folder sgt-models knows"):
        load_adapter(tmp_path)
    with pytest.raises(AdapterLoadError, match=r"is not a folder"):
        load_adapter(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text('{"kind": "janus"}')
    with pytest.raises(AdapterLoadError, match=r"config\.json: no model family of kind 'janus'"):
        load_adapter(tmp_path)
    (tmp_path / "config.json").write_text('{"kind": "reference", "size": "huge"}')
    with pytest.raises(AdapterLoadError, match=r"config\.json: not a valid adapter config"):
        load_adapter(tmp_path)


def test_parse_adapter_config_dispatches_and_names_the_origin() -> None:
    config = parse_adapter_config({"kind": "bagel", "model_path": "/ckpt"}, "run.yaml")
    assert config.model_dump()["model_path"] == "/ckpt"
    with pytest.raises(AdapterLoadError, match=r"run\.yaml: the adapter config has no 'kind'"):
        parse_adapter_config({"size": "tiny"}, "run.yaml")
    with pytest.raises(AdapterLoadError, match=r"run\.yaml: not a valid 'bagel' adapter config"):
        parse_adapter_config({"kind": "bagel"}, "run.yaml")


_PLUGIN = """
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from sgt_models.config import AdapterConfigBase
from sgt_models.registry import ModelFamily


class ToyConfig(AdapterConfigBase):
    kind: Literal["toy"] = "toy"
    width: int = 3


class ToyAdapter(torch.nn.Module):
    kind = "toy"

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.layer = torch.nn.Linear(config.width, 1)


def _load(path: Path, device: Any, dtype: Any) -> torch.nn.Module:
    return ToyAdapter(ToyConfig.model_validate_json((path / "sgt_adapter.json").read_text()))


FAMILY = ModelFamily(kind="toy", config_type=ToyConfig, build=ToyAdapter, load=_load)
"""


def test_a_downstream_package_registers_a_family_by_entry_point(tmp_path: Path) -> None:
    """An installed distribution declaring the entry point is found without editing sgt-models."""
    site = tmp_path / "site"
    (site / "toy_family").mkdir(parents=True)
    (site / "toy_family" / "__init__.py").write_text(_PLUGIN)
    dist = site / "toy_family-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-family\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntoy = toy_family:FAMILY\n")
    saved = tmp_path / "ckpt"
    saved.mkdir()
    (saved / "sgt_adapter.json").write_text('{"kind": "toy", "width": 5}')
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        from sgt_models.registry import known_kinds, build_adapter, load_adapter, parse_adapter_config
        assert "toy" in known_kinds(), known_kinds()
        config = parse_adapter_config({{"kind": "toy", "width": 4}})
        assert build_adapter(config).layer.in_features == 4
        assert load_adapter({str(saved)!r}).layer.in_features == 5
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
