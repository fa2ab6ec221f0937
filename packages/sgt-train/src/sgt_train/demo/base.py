"""The demo's shipped base model: the tiny reference model after the `sgt-mini` sweep's base
(dense vision pretraining on 40,000 scenes, then 1,500 VQA steps on existence and counting
questions; seed 0), stored in bfloat16 as package data with a provenance record.

Training that base takes about 15 minutes on two CPU cores and a 40,000-scene world, more than
the demo's budget; like a BAGEL post-training run, the demo starts from a checkpoint trained
beforehand. ``nox -s demo-base`` (``python -m sgt_train.demo.base``) rebuilds it from the sweep
file and rewrites ``PROVENANCE.json``: the recipe, its world, the encoder's record, both files'
SHA-256, the package versions, and a *fingerprint* (the base's answers to the first held-out
scenes' questions) that ``tests/test_demo_base.py`` recomputes from the shipped file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from sgt_models.protocol import UnifiedModelAdapter

__all__ = ["PROVENANCE_FILE", "base_fingerprint", "read_provenance", "rebuild_base", "shipped_base"]

PROVENANCE_FILE = "PROVENANCE.json"
#: the sweep whose seed-0 base this is, and its unit
RECIPE = "sgt-mini"
SEED = 0
#: held-out scenes (world seed 0) whose questions make the fingerprint
FINGERPRINT_SCENES = 16
_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class BaseModelError(RuntimeError):
    """The shipped base is missing or does not match its provenance record (names the file)."""


def shipped_base(folder: Path | None = None) -> Path:
    """The folder of the shipped base (``config.json``, ``model.safetensors``, ``tokenizer.json``,
    ``PROVENANCE.json``), or ``folder`` checked the same way; a :class:`BaseModelError` naming
    the missing file otherwise."""
    folder = folder or Path(str(files("sgt_train.demo").joinpath("base")))
    for name in (*_FILES, PROVENANCE_FILE):
        if not (folder / name).is_file():
            raise BaseModelError(
                f"{folder / name}: the demo's base model is missing; rebuild it with "
                "`nox -s demo-base` (or reinstall sgt-train)"
            )
    return folder


def read_provenance(folder: Path | None = None) -> dict[str, Any]:
    """The provenance record of the shipped base (or of the base in ``folder``)."""
    path = (folder or shipped_base()) / PROVENANCE_FILE
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return record


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def base_fingerprint(
    model_dir: Path, scene: Mapping[str, Any], image_size: int, scenes: int = FINGERPRINT_SCENES
) -> dict[str, Any]:
    """The model's answers to every question of the first ``scenes`` held-out scenes of the
    world with seed 0 and scene config ``scene`` (greedy decoding, the demo's settings), with the
    questions' gold answers and the scene-POPE mean accuracy over them."""
    from sgt_data.scenes import SceneConfig, write_world
    from sgt_eval.harness import evaluate_understanding
    from sgt_eval.report import EvalSettings
    from sgt_models.registry import load_adapter
    from sgt_train.demo.evaluation import load_scene_vqa

    with tempfile.TemporaryDirectory(prefix="sgt-base-fingerprint-") as tmp:
        cfg = SceneConfig(height=image_size, width=image_size, **scene)
        world = write_world(Path(tmp), num_train=0, num_eval=scenes, seed=0, config=cfg)
        vqa = load_scene_vqa(world.eval.vqa, world.root)
        settings = EvalSettings(seed=0, batch_size=8, max_new_tokens=8, num_inference_steps=1)
        adapter = cast("UnifiedModelAdapter", load_adapter(model_dir).eval())
        results, responses = evaluate_understanding(adapter, vqa, settings)
    pope = next(r for r in results if r.benchmark == "scene-pope" and r.split == "overall")
    return {
        "world_seed": 0,
        "eval_scenes": scenes,
        "questions": [item.prompt for item in vqa.items],
        "gold": [item.answer for item in vqa.items],
        "responses": responses,
        "scene_pope_accuracy_mean": float(pope.metrics["accuracy_mean"]),
    }


def _to_bf16(source: Path, target: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(source))
    out = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(out, str(target), metadata={"format": "pt", "kind": "reference"})


def _train_seed0_base(sweep_file: str, work: Path) -> tuple[Any, dict[str, Any], Path, float]:
    """Build the sweep's world, vision encoder and seed-0 base under ``work`` (skipping what is
    done there); the sweep, the encoder's record, the base export and the stage's seconds."""
    from sgt_train.launch import set_single_process_env
    from sgt_train.sweep import (
        _build_world,
        _Events,
        _run_unit,
        _vision_pretrain,
        load_sweep,
        plan_runs,
    )

    sweep = load_sweep(sweep_file).model_copy(update={"output_dir": str(work)})
    out = Path(sweep.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    events = _Events(out / "events.jsonl")
    stores = _build_world(sweep, out, sweep_file)
    set_single_process_env()
    unit = next(u for u in plan_runs(sweep) if u.arm == "_pretrain" and u.seed == SEED)
    vision = _vision_pretrain(sweep, unit, out, events, None)
    export, _ = _run_unit(sweep, unit, out, stores, events, Path(vision["export"]), None)
    assert export is not None
    seconds = 0.0
    for line in (out / "events.jsonl").read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("event") == "trained" and event.get("unit") == f"_pretrain/s{SEED}":
            seconds = float(event["seconds"])
    return sweep, vision, export, seconds


def rebuild_base(target: Path, work: Path, sweep_file: str = RECIPE) -> dict[str, Any]:
    """Train (or reuse, from ``work``) the sweep's seed-0 base and write it to ``target`` in
    bfloat16 with its provenance record; the record."""
    from sgt_train.sweep import _resolve_sweep

    sweep, vision, export, seconds = _train_seed0_base(sweep_file, work)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(export / name, target / name)
    _to_bf16(export / "model.safetensors", target / "model.safetensors")
    fingerprint = base_fingerprint(target, sweep.world.scene, sweep.world.image_size)
    encoder = {k: v for k, v in vision.items() if k != "export"}
    record = {
        "what": (
            f"the `{sweep_file}` sweep's seed-{SEED} base (its `_pretrain` unit): the tiny "
            "reference model with a vision encoder dense-pretrained on the class labels of "
            f"{vision['scenes']} train scenes, then the pretrain stage; weights rounded to "
            "bfloat16 (the fingerprint is of the rounded weights)"
        ),
        "command": "nox -s demo-base",
        "sweep_file": str(_resolve_sweep(sweep_file).name),
        "sweep_sha256": sha256(_resolve_sweep(sweep_file)),
        "pretrain": list(sweep.pretrain or []),
        "base_overrides": list(sweep.base.set),
        "world": sweep.world.model_dump(mode="json"),
        "encoder": encoder,
        "pretrain_seconds": round(seconds, 1),
        "source_sha256": sha256(export / "model.safetensors"),
        "dtype": "bfloat16",
        "sha256": {name: sha256(target / name) for name in _FILES},
        "versions": {
            p: version(p) for p in ("sgt-data", "sgt-models", "sgt-train", "sgt-eval", "torch")
        },
        "fingerprint": fingerprint,
    }
    (target / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sgt_train.demo.base --work DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m sgt_train.demo.base",
        description="Rebuild the demo's shipped base model from the sgt-mini sweep's seed-0 base.",
    )
    parser.add_argument("--work", required=True, help="sweep output folder (reused if present)")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).parent / "base"),
        help="where to write the base (default: the package's own folder)",
    )
    parser.add_argument("--sweep", default=RECIPE, help="sweep file or shipped sweep name")
    args = parser.parse_args(argv)
    record = rebuild_base(Path(args.out), Path(args.work), args.sweep)
    fp = record["fingerprint"]
    print(
        f"base written to {args.out}: sha256 {record['sha256']['model.safetensors'][:12]}, "
        f"encoder AUC {record['encoder']['mean_presence_auc']}, scene-POPE accuracy "
        f"{fp['scene_pope_accuracy_mean']:.1f} on {len(fp['questions'])} held-out questions",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
