"""Run configs: YAML with overrides; every error names the file, the field path and the reason."""

from pathlib import Path

import pytest
import yaml

from sgt_train import ConfigError, RunConfig, apply_overrides, load_run_config

VALID = {
    "name": "tiny-sgt",
    "model": {"kind": "reference", "size": "tiny"},
    "data": {
        "sources": [
            {"name": "seg", "store": "stores/scenes", "task": "segmentation", "ratio": 2},
            {"name": "vqa", "store": "stores/scenes", "task": "understanding", "ratio": 1},
        ],
        "pattern": ["seg", "seg", "vqa"],
    },
    "steps": 100,
    "loss_weights": {"ce": 1.5, "mse": 1.0},
    "zero": {"stage": 2},
}


def _write(tmp_path: Path, data: object, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_config_round_trips_through_json(tmp_path: Path) -> None:
    config = load_run_config(_write(tmp_path, VALID))
    assert RunConfig.model_validate_json(config.model_dump_json()) == config
    assert config.model.kind == "reference"
    assert config.loss_weights.ce == 1.5


def test_overrides_are_applied_with_yaml_types(tmp_path: Path) -> None:
    config = load_run_config(
        _write(tmp_path, VALID),
        [
            "optimizer.lr=5e-5",
            "zero.offload_optimizer=true",
            "data.sources.1.ratio=3",
            "model.size=small",
        ],
    )
    assert config.optimizer.lr == 5e-5
    assert config.zero.offload_optimizer is True
    assert config.data.sources[1].ratio == 3
    assert config.model.kind == "reference"
    assert config.model.size == "small"


@pytest.mark.parametrize(
    ("mutation", "path", "reason"),
    [
        (["optimizer.lr=-1"], "optimizer.lr", "greater than 0"),
        (["zero.stage=5"], "zero.stage", "Input should be 0, 1, 2 or 3"),
        (["model.kind=janus"], "model", "does not match any of the expected tags"),
        (["data.sources.0.task=detection"], "data.sources.0.task", "Input should be"),
        (["steps=0"], "steps", "greater than or equal to 1"),
        (["optimizer.momentum=0.9"], "optimizer.momentum", "Extra inputs are not permitted"),
        (["zero.offload_params=true"], "zero", "offload_params needs ZeRO stage 3"),
    ],
)
def test_invalid_config_names_file_field_and_reason(
    tmp_path: Path, mutation: list[str], path: str, reason: str
) -> None:
    file = _write(tmp_path, apply_overrides(VALID, mutation), "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_run_config(file)
    message = str(info.value)
    assert str(file) in message
    assert f": {path}: " in message or f": {path}." in message
    assert reason in message


def test_missing_field_is_named(tmp_path: Path) -> None:
    data = {k: v for k, v in VALID.items() if k != "steps"}
    with pytest.raises(ConfigError, match=r"run\.yaml: steps: Field required"):
        load_run_config(_write(tmp_path, data))


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: <yaml>: line \d+"):
        load_run_config(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_run_config(tmp_path / "nope.yaml")


def test_malformed_override_is_reported() -> None:
    with pytest.raises(ConfigError, match="expected the form"):
        apply_overrides(VALID, ["optimizer.lr"])


def test_validate_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sgt_train.cli import main

    assert main(["validate", str(_write(tmp_path, VALID)), "--config-only"]) == 0
    assert main(["validate", str(_write(tmp_path, VALID)), "--set", "steps=-3"]) == 2
    assert "steps: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_launcher_local_rank_is_accepted_before_the_command() -> None:
    from sgt_train.cli import build_parser

    args = build_parser().parse_args(["--local_rank=3", "fit", "tiny-sgt"])
    assert (args.command, args.launcher_local_rank, args.local_rank) == ("fit", 3, None)
    args = build_parser().parse_args(["fit", "tiny-sgt", "--local_rank", "1"])
    assert (args.launcher_local_rank, args.local_rank) == (None, 1)
