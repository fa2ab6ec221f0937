"""SGT's own checkpoint files are read without running code from them.

A shared checkpoint folder could hold pickles that run code when loaded. SGT writes its per-rank
RNG and sampler states as JSON and reads ``ema.pt``, ``rank_R.pt`` files of sgt-train 0.3 and earlier and DeepSpeed's
ZeRO-0 module states with ``torch.load(weights_only=True)``: a planted pickle is refused with an
error naming the file, and its payload never runs. Checkpoints of the previous format still load.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sgt_train.checkpoint import (
    CheckpointManager,
    UnsafeCheckpointError,
    decode_state,
    encode_state,
    load_ema_state,
    load_module_states,
    load_rank_state,
)


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


class _Engine:
    """Stands in for the DeepSpeed engine: records whether it was asked to load."""

    def __init__(self) -> None:
        self.loaded = False

    def save_checkpoint(self, folder: str, tag: str, **_: Any) -> None:
        (Path(folder) / tag).mkdir()

    def load_checkpoint(self, folder: str, tag: str, **_: Any) -> tuple[str, dict[str, Any]]:
        self.loaded = True
        return folder, {}


def _rng_state() -> dict[str, Any]:
    random.seed(3)
    np.random.seed(4)  # noqa: NPY002
    torch.manual_seed(5)
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }


def _restore(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])  # noqa: NPY002
    torch.set_rng_state(rng["torch"])


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.random()), float(torch.rand(()))  # noqa: NPY002


def _assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b)
    else:
        assert a == b


def _manager(root: Path) -> CheckpointManager:
    return CheckpointManager(root, keep_last=2, rank=0, world_size=1, barrier=lambda: None)


def test_rank_state_round_trips_through_json_and_restores_every_rng(tmp_path: Path) -> None:
    state = {"rng": _rng_state(), "source": {"epoch": 2, "step": 7, "fingerprint": {"a": [1]}}}
    ema = {"decay": 0.9, "shadow": {"w": torch.arange(6.0).reshape(2, 3)}}
    folder = _manager(tmp_path).save(3, _Engine(), {"samples_seen": 12}, state, ema)
    assert sorted(p.name for p in folder.iterdir()) == [
        "ds",
        "ema.pt",
        "rank_00000.json",
        "trainer_state.json",
    ]
    json.loads((folder / "rank_00000.json").read_text())  # plain JSON, no pickle
    restored = _manager(tmp_path).load(folder, _Engine())
    _assert_same(restored.rank_state, state)
    _assert_same(restored.ema_state, ema)
    _restore(state["rng"])
    want = _draws()
    _restore(restored.rank_state["rng"])
    assert _draws() == want


def test_encode_names_what_cannot_be_checkpointed() -> None:
    with pytest.raises(TypeError, match=r"rank_00000.json.source.reader: a object"):
        encode_state({"source": {"reader": object()}}, "rank_00000.json")
    assert decode_state(encode_state({"t": (1, torch.zeros(0))}))["t"][1].numel() == 0


def test_previous_format_still_loads(tmp_path: Path) -> None:
    state = {"rng": _rng_state(), "source": {"epoch": 0, "step": 1}}
    torch.save(state, tmp_path / "rank_00000.pt")  # what sgt-train 0.3 wrote
    torch.save({"decay": 0.5, "shadow": {"w": torch.ones(2)}}, tmp_path / "ema.pt")
    _assert_same(load_rank_state(tmp_path, 0), state)
    ema = load_ema_state(tmp_path)
    assert ema is not None
    assert torch.equal(ema["shadow"]["w"], torch.ones(2))


@pytest.mark.parametrize("planted", ["rank_00000.pt", "ema.pt"])
def test_planted_pickle_in_an_sgt_file_is_refused_without_running(
    tmp_path: Path, planted: str
) -> None:
    folder = tmp_path / "step_00000004"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"step": 4, "world_size": 1}))
    marker = tmp_path / "pwned"
    if planted == "ema.pt":
        (folder / "rank_00000.json").write_text(json.dumps(encode_state({"rng": {}})))
    torch.save({"shadow": {"w": _Payload(marker)}}, folder / planted)
    engine = _Engine()
    with pytest.raises(
        UnsafeCheckpointError, match=rf"{folder / planted}: refused to load: it references .*open"
    ):
        _manager(tmp_path).load(folder, engine)
    assert not marker.exists(), "the planted pickle ran"
    assert not engine.loaded, "DeepSpeed was asked to load a checkpoint with a refused file"


def test_planted_pickle_in_zero0_module_states_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    good, bad = tmp_path / "good.pt", tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(1)}, "ds_version": "0.19.8", "lr_scheduler": {}}, good)
    torch.save({"module": {"w": torch.ones(1)}, "x": _Payload(marker)}, bad)
    assert torch.equal(load_module_states(good)["module"]["w"], torch.ones(1))
    with pytest.raises(UnsafeCheckpointError, match=rf"{bad}: refused to load: it references"):
        load_module_states(bad)
    assert not marker.exists()


def test_a_real_zero0_checkpoint_loads_without_pickle(tmp_path: Path) -> None:
    """What ``export`` reads at ZeRO-0 (DeepSpeed's module states, holding sgt-train's LR
    schedule config) and the EMA load with ``weights_only=True``, equal to a full unpickle."""
    from sgt_train import validate_run_config
    from sgt_train.loop import fit
    from sgt_train_toy import ToyAdapter, ToySource
    from toy_worker import make_config

    config = validate_run_config(make_config(str(tmp_path), 0, steps=2, every=2))
    result = fit(config, build_model=lambda _: ToyAdapter(), source=ToySource(config.data, 2))
    assert result.last_checkpoint is not None
    states = result.last_checkpoint / "ds" / "mp_rank_00_model_states.pt"
    safe = load_module_states(states)
    full = torch.load(states, map_location="cpu", weights_only=False)
    assert safe["module"].keys() == full["module"].keys()
    for name, value in full["module"].items():
        assert torch.equal(safe["module"][name], value), name
    ema = load_ema_state(result.last_checkpoint)
    assert ema is not None
    assert set(ema["shadow"]) == {n for n, p in result.model.named_parameters() if p.requires_grad}
