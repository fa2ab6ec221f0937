"""SGT-mini segmentation probe (issue 16, item 2): can the SGT path draw maps a person recognises?

Trains the reference model on semantic segmentation only, through the demo's own trainer path
(``sgt_train.demo.pipeline._run_config`` / ``_train``: DeepSpeed ZeRO-2 on the CPU, the tiny
preset, ``spatial_condition``), from scratch or from an exported model (``--init-from``), then
draws the maps of ``--eval-images`` held-out scenes with the demo's ``_segment`` and prints the
semantic mIoU and the per-class IoU (background first) from the confusion over their pixels.

    python docs/dev/sgt_mini_seg_probe.py --train-scenes 8000 --steps 2000 \
        --world '{"min_size": 0.5, "max_size": 0.8}' --out /tmp/segprobe

Runs on the threads ``OMP_NUM_THREADS`` allows. Not part of the product; results are recorded in
``docs/dev/sgt-mini-findings.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from sgt_data.scenes import SceneConfig
from sgt_eval.report import EvalSettings
from sgt_models.registry import load_adapter
from sgt_train.demo.evaluation import _segment, load_segmentation_set
from sgt_train.demo.pipeline import DEMO_SIZES, _run_config, _train
from sgt_train.demo.stores import NUM_SCENE_CLASSES, build_stores
from sgt_train.launch import set_single_process_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-scenes", type=int, default=8000)
    parser.add_argument("--eval-scenes", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world", default="{}", help="SceneConfig fields as JSON")
    parser.add_argument("--init-from", default=None, help="an exported model folder")
    parser.add_argument(
        "--inference-steps", default="16", help="comma-separated sampling step counts to draw with"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    t0 = time.time()
    out = Path(args.out)
    world = SceneConfig(**json.loads(args.world))
    stores = build_stores(
        out, num_train=args.train_scenes, num_eval=args.eval_scenes, seed=args.seed, config=world
    )
    print(f"stores in {time.time() - t0:.0f}s", flush=True)
    size = replace(DEMO_SIZES["default"], micro_batch_size=args.micro_batch, lr=args.lr)
    source = {
        "name": "seg",
        "store": str(stores.scenes),
        "task": "segmentation",
        "task_variant": "semantic",
    }
    init = Path(args.init_from) if args.init_from else None
    config = _run_config("seg", out, size, args.seed, [source], ["seg"], args.steps, init)
    set_single_process_env()
    weights = _train(config, "seg", None)
    print(f"trained {args.steps} steps in {time.time() - t0:.0f}s", flush=True)
    data = load_segmentation_set(stores.eval_semantic, args.eval_images)
    adapter = load_adapter(weights).eval()
    for steps in [int(n) for n in args.inference_steps.split(",")]:
        settings = EvalSettings(
            seed=args.seed, batch_size=8, max_new_tokens=8, num_inference_steps=steps
        )
        result, maps = _segment(adapter, data, settings, None)  # type: ignore[arg-type]
        k = NUM_SCENE_CLASSES  # background and the six shapes
        confusion = np.zeros((k, k), dtype=np.int64)
        for drawn, truth in zip(maps, data.labels, strict=True):
            pred = np.asarray(data.renderer.inverse(drawn), dtype=np.int64)
            t = np.asarray(truth, dtype=np.int64)
            ok = (t >= 0) & (t < k) & (pred >= 0) & (pred < k)
            confusion += np.bincount(k * t[ok] + pred[ok], minlength=k * k).reshape(k, k)
        inter = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
        print(f"{steps} sampling steps: metrics {result.metrics}", flush=True)
        print("per-class IoU (background first): " + " ".join(f"{100 * v:.1f}" for v in iou))
        np.save(out / f"maps-{steps}.npy", np.stack(maps))
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
