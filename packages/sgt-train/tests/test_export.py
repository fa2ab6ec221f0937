"""`export` writes EMA or raw weights that `from_pretrained` loads into the trained model's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgt_data import TaskKind
from sgt_train import validate_run_config
from sgt_train.cli import main
from sgt_train.export import ExportError, export_run
from sgt_train.loop import fit
from sgt_train_toy import ToyAdapter, ToySource, toy_sample
from toy_worker import make_config


def _outputs(model: ToyAdapter) -> dict[str, torch.Tensor]:
    batch = model.collate([toy_sample(i, TaskKind.SEGMENTATION) for i in range(3)])
    vqa = model.collate([toy_sample(i, TaskKind.UNDERSTANDING) for i in range(3)])
    torch.manual_seed(123)
    with torch.no_grad():
        seg = model(batch).parts["mse"]
        ce = model(vqa).parts["ce"]
        features = model.llm(model.vision(batch.images))
    return {"mse": seg, "ce": ce, "features": features}


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_export_round_trips_trained_and_ema_weights(tmp_path: Path, stage: int) -> None:
    config = validate_run_config(make_config(str(tmp_path), stage, steps=4, every=4))
    result = fit(config, build_model=lambda _: ToyAdapter(), source=ToySource(config.data, 2))
    trained = result.model
    assert isinstance(trained, ToyAdapter)

    raw_dir = export_run(
        result.run_dir, tmp_path / "raw", ema=False, build_model=lambda _: ToyAdapter()
    )
    raw = ToyAdapter.from_pretrained(raw_dir)
    expected, got = _outputs(trained), _outputs(raw)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key

    ema_dir = export_run(
        result.run_dir, tmp_path / "ema", ema=True, build_model=lambda _: ToyAdapter()
    )
    ema = ToyAdapter.from_pretrained(ema_dir)
    shadow = torch.load(result.last_checkpoint / "ema.pt", weights_only=False)["shadow"]  # type: ignore[operator]
    for name, value in ema.state_dict().items():
        assert torch.equal(value, shadow[name]), name
    assert not torch.equal(ema.vision.weight, trained.vision.weight)


def test_export_errors_name_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExportError, match=r"not a run folder"):
        export_run(tmp_path, tmp_path / "out")
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_reference_model_export_reproduces_outputs(tmp_path: Path) -> None:
    """The tiny reference adapter, ZeRO-2 + EMA: export -> load_adapter gives the trained outputs."""
    from sgt_models.registry import load_adapter

    config = validate_run_config(
        {**make_config(str(tmp_path), 2, steps=2, every=2), "gradient_accumulation": 1}
    )
    result = fit(config, source=ToySource(config.data, 2))  # the config's adapter via the registry
    trained = result.model
    samples = [toy_sample(i, TaskKind.SEGMENTATION) for i in range(2)]

    def outputs(model: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(5)
        with torch.no_grad():
            return model(model.collate(samples)).total  # type: ignore[operator,no-any-return]

    raw = load_adapter(export_run(result.run_dir, tmp_path / "raw", ema=False))
    assert torch.equal(outputs(trained), outputs(raw))
    for (name, a), b in zip(trained.state_dict().items(), raw.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ema = load_adapter(export_run(result.run_dir, tmp_path / "ema", ema=True))
    assert not torch.equal(outputs(ema), outputs(trained))
