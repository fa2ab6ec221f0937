"""The plugin against the real lmms-eval (its own nox environment installs it): a local parquet
task, evaluated end to end through the `sgt` model entry point on the tiny reference model, with
documents of one, two and no images. Skipped where lmms-eval is not installed."""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if os.environ.get("SGT_REQUIRE_LMMS_EVAL"):  # its nox session: a failed install must fail
    import lmms_eval
else:
    lmms_eval = pytest.importorskip("lmms_eval")

HERE = Path(__file__).parent


def _png(color: tuple[int, int, int], size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), color, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _task_dir(tmp_path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    rows = {
        "question": ["Is the image red?", "Is the left image red?", "Is the sky blue?"],
        "images": [[red], [red, blue], []],
        "answer": ["yes", "yes", "yes"],
    }
    folder = tmp_path / "tasks"
    folder.mkdir()
    parquet = tmp_path / "test.parquet"
    pq.write_table(pa.table(rows), parquet)
    shutil.copy(HERE / "lmms_tasks" / "sgt_scene_utils.py", folder)
    yaml = (HERE / "lmms_tasks" / "sgt_scene_yesno.yaml").read_text(encoding="utf-8")
    (folder / "sgt_scene_yesno.yaml").write_text(yaml.replace("SCENE_PARQUET", str(parquet)))
    return folder


def _pretrained(tmp_path: Path) -> Path:
    import torch

    from sgt_models import registry
    from sgt_models.config import ReferenceAdapterConfig

    torch.manual_seed(0)
    adapter = registry.build_adapter(ReferenceAdapterConfig(size="tiny", image_size=64))
    adapter.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_local_parquet_task_through_the_sgt_entry_point(tmp_path: Path) -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from sgt_eval import lmms_plugin

    assert pickle.loads(pickle.dumps(lmms_plugin.SGTLmms)) is lmms_plugin.SGTLmms
    results = simple_evaluate(
        model="sgt",
        model_args=f"pretrained={_pretrained(tmp_path)},max_new_tokens=4",
        tasks=["sgt_scene_yesno"],
        task_manager=TaskManager(include_path=str(_task_dir(tmp_path)), include_defaults=False),
        batch_size=1,
        log_samples=True,
        distributed_executor_backend="accelerate",
    )
    assert results is not None
    scores = results["results"]["sgt_scene_yesno"]
    assert any(key.startswith("exact_match") for key in scores), scores
    samples = results["samples"]["sgt_scene_yesno"]
    assert len(samples) == 3  # the two-image and the text-only documents were answered too
