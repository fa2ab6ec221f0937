"""The four packages' contracts compose: a run config embeds sgt-data and sgt-models types."""

from pathlib import Path

import yaml

from sgt_data import MixtureConfig, TaskKind
from sgt_models import ReferenceAdapterConfig
from sgt_train import RunConfig, load_run_config


def test_run_config_carries_sibling_contracts(tmp_path: Path) -> None:
    mixture = MixtureConfig.model_validate(
        {
            "sources": [
                {"name": "seg", "store": "s", "task": "segmentation"},
                {"name": "vqa", "store": "v", "task": "understanding"},
            ],
            "pattern": ["seg", "seg", "vqa"],
        }
    )
    data = {
        "name": "compose",
        "model": ReferenceAdapterConfig(size="tiny").model_dump(mode="json"),
        "data": mixture.model_dump(mode="json"),
        "steps": 10,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_run_config(path)
    assert isinstance(config.model, ReferenceAdapterConfig)
    assert config.data == mixture
    assert config.data.sources[0].task is TaskKind.SEGMENTATION
    assert RunConfig.model_validate_json(config.model_dump_json()) == config
