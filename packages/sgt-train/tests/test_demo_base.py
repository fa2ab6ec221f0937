"""The demo's shipped base model is the one its provenance record describes: the files' SHA-256
match, and the weights give the recorded answers to the first held-out scenes' questions (the
fingerprint `nox -s demo-base` wrote), with a scene-POPE accuracy above the balanced chance of 50.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sgt_train.demo.base import (
    PROVENANCE_FILE,
    BaseModelError,
    base_fingerprint,
    read_provenance,
    sha256,
    shipped_base,
)


def test_shipped_files_match_their_recorded_sha256() -> None:
    folder = shipped_base()
    record = read_provenance()
    assert set(record["sha256"]) == {"config.json", "model.safetensors", "tokenizer.json"}
    for name, digest in record["sha256"].items():
        assert sha256(folder / name) == digest, name
    assert record["source_sha256"] != record["sha256"]["model.safetensors"]  # rounded to bf16
    assert record["dtype"] == "bfloat16"


def test_shipped_weights_reproduce_the_recorded_answers_and_perceive() -> None:
    record = read_provenance()
    world = record["world"]
    recorded = record["fingerprint"]
    fresh = base_fingerprint(
        shipped_base(), world["scene"], world["image_size"], recorded["eval_scenes"]
    )
    assert fresh["questions"] == recorded["questions"]
    assert fresh["gold"] == recorded["gold"]
    assert fresh["responses"] == recorded["responses"]
    assert fresh["scene_pope_accuracy_mean"] == pytest.approx(
        recorded["scene_pope_accuracy_mean"], abs=1e-9
    )
    assert fresh["scene_pope_accuracy_mean"] > 50.0  # balanced splits: always-Yes scores 50


def test_the_base_loads_in_float32_from_its_bf16_file() -> None:
    import torch

    from sgt_models.registry import load_adapter

    model = load_adapter(shipped_base())
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.float32}


@pytest.mark.parametrize("missing", ["model.safetensors", PROVENANCE_FILE])
def test_a_missing_base_file_is_named(tmp_path: Path, missing: str) -> None:
    folder = tmp_path / "base"
    shutil.copytree(shipped_base(), folder)
    (folder / missing).unlink()
    with pytest.raises(
        BaseModelError, match=f"{folder / missing}: the demo's base model is missing"
    ):
        shipped_base(folder)
