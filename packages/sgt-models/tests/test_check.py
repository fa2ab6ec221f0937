"""``sgt-models check``: headers only, named differences, exit status, clear errors."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sgt_models import ReferenceAdapterConfig
from sgt_models.check import (
    CheckError,
    check_folder,
    compare_tensors,
    read_safetensors_header,
    read_safetensors_metadata,
)
from sgt_models.cli import main
from sgt_models.reference import ReferenceAdapter


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("reference")
    ReferenceAdapter(ReferenceAdapterConfig(size="tiny")).save_pretrained(folder)
    return folder


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())
    return dst


def test_header_reader_matches_safetensors(tmp_path: Path) -> None:
    tensors = {"a": torch.zeros(3, 4), "b.c": torch.ones(7, dtype=torch.bfloat16)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    header = read_safetensors_header(tmp_path / "x.safetensors")
    assert {k: (v.dtype, v.shape) for k, v in header.items()} == {
        "a": ("F32", (3, 4)),
        "b.c": ("BF16", (7,)),
    }
    assert read_safetensors_metadata(tmp_path / "x.safetensors") == {"format": "pt"}


def test_header_reader_never_reads_tensor_data(tmp_path: Path) -> None:
    """A header declaring 100 GB of tensors followed by no data is still read."""
    header = {"w": {"dtype": "BF16", "shape": [50_000, 1_000_000], "data_offsets": [0, 10**11]}}
    raw = json.dumps(header).encode()
    (tmp_path / "big.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    assert read_safetensors_header(tmp_path / "big.safetensors")["w"].shape == (50_000, 1_000_000)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"abc", "shorter than its 8-byte header size"),
        (struct.pack("<Q", 400) + b"{}", "truncated safetensors header"),
        (struct.pack("<Q", 5) + b"{nope", "corrupt safetensors header"),
        (struct.pack("<Q", 2**40), "implausible"),
    ],
)
def test_corrupt_headers_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    file = tmp_path / "bad.safetensors"
    file.write_bytes(content)
    with pytest.raises(CheckError, match=message) as info:
        read_safetensors_header(file)
    assert str(file) in str(info.value)


def test_compare_tensors_names_every_difference() -> None:
    diff = compare_tensors(
        {"a": (2, 3), "b": (4,), "c": (1,)},
        {"a": read_info((2, 3)), "b": read_info((5,)), "d": read_info((1,))},
        "model.safetensors",
    )
    assert diff.missing == ["model.safetensors: c"]
    assert diff.unexpected == ["model.safetensors: d"]
    assert diff.mismatched == ["model.safetensors: b: expected (4,), found (5,)"]


def read_info(shape: tuple[int, ...]) -> object:
    from sgt_models.check import TensorInfo

    return TensorInfo("F32", shape)


def test_a_saved_reference_folder_checks_clean(saved: Path) -> None:
    report = check_folder(saved)
    assert report.ok, report
    assert report.family == "reference"
    model = ReferenceAdapter.from_pretrained(saved)
    assert report.total_parameters == sum(p.numel() for p in model.parameters())
    assert sum(report.parameter_counts.values()) == report.total_parameters


def test_planted_missing_and_mismatched_tensors_are_named(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path / "damaged")
    tensors = load_file(folder / "model.safetensors")
    del tensors["connector.1.bias"]
    tensors["connector.3.weight"] = torch.zeros(3, 3)
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, folder / "model.safetensors")
    (folder / "tokenizer.json").unlink()
    code = main(["check", str(folder)])
    assert code == 1
    report = check_folder(folder)
    assert report.missing == ["model.safetensors: connector.1.bias"]
    assert report.unexpected == ["model.safetensors: extra.weight"]
    assert len(report.mismatched) == 1
    assert report.mismatched[0].startswith("model.safetensors: connector.3.weight: expected (")
    assert report.mismatched[0].endswith("found (3, 3)")
    assert report.problems == [f"tokenizer: {folder / 'tokenizer.json'} is missing"]


def test_cli_prints_counts_as_integers_and_exit_status(saved: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sgt_models.cli", "check", str(saved)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{saved}: reference (sgt layout)"
    total = next(line for line in lines if line.strip().startswith("total"))
    assert int(total.split()[-1]) == check_folder(saved).total_parameters
    assert lines[-1].startswith("ok:")

    as_json = subprocess.run(
        [sys.executable, "-m", "sgt_models.cli", "check", "--json", str(saved)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert json.loads(as_json.stdout)["ok"] is True

    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run(
        [sys.executable, "-m", "sgt_models.cli", "check", str(empty)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert bad.stderr.startswith(f"sgt-models: error: {empty} is not a checkpoint folder")
    missing = subprocess.run(
        [sys.executable, "-m", "sgt_models.cli", "check", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"sgt-models: error: {tmp_path / 'nowhere'} does not exist"
