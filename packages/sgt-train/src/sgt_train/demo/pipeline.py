"""The end-to-end CPU demo: scene world -> stores -> base / control / SGT training -> evaluation
-> report. :func:`run_demo` is the library entry point; ``sgt-train demo`` draws the progress bars.

Design of the comparison: a short base stage trains understanding and text-to-image from scratch;
from that base, the **control** post-trains on VQA only and **SGT** post-trains on segmentation :
VQA = 2 : 1 (interleaved micro-batches, pattern ``vqa, seg, seg``). Both see the
**same VQA samples in the same order** (same source name, store and mixture seed, so the VQA stream
is identical, as long as the control stays within one pass over the VQA store, which holds at the
shipped sizes; the integration test checks it); SGT therefore runs three times the control's steps, the extra two thirds being
segmentation. Any difference between them comes from adding the segmentation task.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sgt_eval.report import EvalReport, EvalSettings

if TYPE_CHECKING:
    from sgt_models.protocol import UnifiedModelAdapter
    from sgt_train.config import RunConfig

__all__ = ["DEMO_SIZES", "DemoResult", "DemoSize", "run_demo"]

_log = logging.getLogger(__name__)

#: ``progress(stage, done, total)``; a new stage name starts a new stage.
StageProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DemoSize:
    """How much the demo generates, trains and evaluates."""

    name: str
    num_train: int
    num_eval: int
    base_steps: int
    #: control steps; SGT runs three times as many (the same VQA micro-batches plus segmentation)
    post_steps: int
    micro_batch_size: int
    #: None: every held-out question (at 240 scenes, 400+ items per benchmark: a 95 % band of
    #: at most about 5 points at p = 0.5)
    max_questions: int | None
    max_prompts: int
    seg_images: int
    inference_steps: int
    lr: float = 2e-3
    #: the reference model's ``spatial_condition``: the generator also reads the LM's states at the
    #: image tokens on the latent grid (maps land where the objects are: mIoU 12.7 -> 19.1 after
    #: 600 segmentation steps, docs/dev/sgt-mini-findings.md)
    spatial_condition: bool = True


DEMO_SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(
        name="tiny",
        num_train=48,
        num_eval=16,
        base_steps=12,
        post_steps=6,
        micro_batch_size=4,
        max_questions=48,
        max_prompts=12,
        seg_images=8,
        inference_steps=8,
    ),
    "default": DemoSize(
        name="default",
        num_train=400,
        num_eval=240,
        base_steps=400,
        post_steps=100,
        micro_batch_size=8,
        max_questions=None,
        max_prompts=60,
        seg_images=32,
        inference_steps=16,
    ),
}

MODEL_NAMES = ("base", "control", "sgt")


@dataclass
class DemoResult:
    """What a demo run produced."""

    out_dir: Path
    report_dir: Path
    summary: Path
    reports: dict[str, EvalReport]
    seeds: dict[str, int]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0


def _run_config(
    name: str,
    out_dir: Path,
    size: DemoSize,
    seed: int,
    sources: list[dict[str, Any]],
    pattern: list[str],
    steps: int,
    init_from: Path | None,
) -> RunConfig:
    from sgt_train.config import validate_run_config

    return validate_run_config(
        {
            "name": name,
            "output_dir": str(out_dir / "runs"),
            "seed": seed,
            "model": {
                "kind": "reference",
                "size": "tiny",
                "image_size": 64,
                "spatial_condition": size.spatial_condition,
            },
            "init_from": str(init_from) if init_from is not None else None,
            "data": {"sources": sources, "mode": "interleave", "pattern": pattern, "seed": seed},
            "optimizer": {"lr": size.lr, "eps": 1e-8, "weight_decay": 0.01},
            "schedule": {
                "kind": "cosine",
                "warmup_steps": max(1, steps // 10),
                "min_lr": size.lr / 10,
            },
            "loss_weights": {"ce": 1.5, "mse": 1.0},
            "steps": steps,
            "micro_batch_size": size.micro_batch_size,
            "zero": {"stage": 2},
            "checkpoint": {"every": steps, "keep_last": 1},
            "logging": {"every": 1, "tensorboard": False, "progress_bar": False},
        },
        source=f"demo run {name}",
    )


def _train(config: RunConfig, stage: str, progress: StageProgress | None) -> Path:
    """Train one run with DeepSpeed and export its weights; the exported folder."""
    from sgt_train.export import export_run
    from sgt_train.loop import Hooks, fit, run_dir_of

    hooks = Hooks()
    if progress is not None:
        progress(stage, 0, config.steps)  # the stage begins before DeepSpeed has started
        hooks.on_start.append(lambda start, total: progress(stage, start, total))
        hooks.on_step.append(lambda m: progress(stage, m.step, m.total_steps))
    result = fit(config, hooks=hooks, resume=False)
    # DeepSpeed's fp32 consolidation prints to stdout and draws its own bar: keep the CLI clean
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        exported = export_run(run_dir_of(config), run_dir_of(config) / "final", ema=False)
    _log.info(
        "%s: trained %d steps, final loss %.4f", config.name, result.final_step, result.losses[-1]
    )
    return exported


def run_demo(
    out_dir: str | Path = "sgt-demo",
    *,
    size: DemoSize | str = "default",
    seed: int = 0,
    progress: StageProgress | None = None,
) -> DemoResult:
    """Run the whole demo into ``out_dir`` (world, stores, runs, and the report in ``report/``)."""
    from sgt_models.registry import load_adapter
    from sgt_train.demo.evaluation import (
        evaluate_model,
        load_scene_prompts,
        load_scene_vqa,
        load_segmentation_set,
    )
    from sgt_train.demo.report import write_report
    from sgt_train.demo.stores import build_stores
    from sgt_train.launch import set_single_process_env

    spec = DEMO_SIZES[size] if isinstance(size, str) else size
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = {"world": seed, "training": seed, "mixture": seed, "evaluation": seed}
    times: dict[str, float] = {}
    t_start = time.perf_counter()

    def stage(name: str) -> Callable[[int, int], None]:
        def call(done: int, total: int) -> None:
            if progress is not None:
                progress(name, done, total)

        return call

    t0 = time.perf_counter()
    stage("data")(0, 4)
    data = build_stores(
        out, num_train=spec.num_train, num_eval=spec.num_eval, seed=seed, progress=stage("data")
    )
    times["data"] = time.perf_counter() - t0

    set_single_process_env()
    vqa_source = {"name": "vqa", "store": str(data.vqa), "task": "understanding"}
    runs = {
        "base": _run_config(
            "base", out, spec, seed,
            [vqa_source, {"name": "t2i", "store": str(data.t2i), "task": "text_to_image"}],
            ["vqa", "t2i"], spec.base_steps, None,
        ),
    }  # fmt: skip
    weights: dict[str, Path] = {}
    t0 = time.perf_counter()
    weights["base"] = _train(runs["base"], "train base", progress)
    times["train base"] = time.perf_counter() - t0
    runs["control"] = _run_config(
        "control", out, spec, seed, [vqa_source], ["vqa"], spec.post_steps, weights["base"]
    )
    # An epoch of the mixer ends with the anchor's (segmentation's) last step. With the pattern
    # vqa, seg, seg and an even number of full segmentation steps per epoch, every epoch is whole
    # patterns, so SGT's VQA micro-batches are exactly the control's, in order.
    block = 2 * spec.micro_batch_size
    seg_cap = (spec.num_train // block) * block
    if seg_cap < block:
        raise ValueError(f"demo size {spec.name!r}: num_train must be >= {block}")
    seg_source = {
        "name": "seg",
        "store": str(data.scenes),
        "task": "segmentation",
        "task_variant": "semantic",
        "ratio": 2.0,
        "max_samples": seg_cap,
    }
    runs["sgt"] = _run_config(
        "sgt", out, spec, seed, [seg_source, vqa_source], ["vqa", "seg", "seg"],
        3 * spec.post_steps, weights["base"],
    )  # fmt: skip
    for name in ("control", "sgt"):
        t0 = time.perf_counter()
        weights[name] = _train(runs[name], f"train {name}", progress)
        times[f"train {name}"] = time.perf_counter() - t0

    vqa = load_scene_vqa(data.world.eval.vqa, data.world.root, spec.max_questions)
    prompts = load_scene_prompts(data.world.eval.t2i, spec.max_prompts)
    segmentation = load_segmentation_set(data.eval_semantic, spec.seg_images)
    settings = EvalSettings(
        seed=seed, batch_size=8, max_new_tokens=8, num_inference_steps=spec.inference_steps
    )
    reports: dict[str, EvalReport] = {}
    maps = {}
    from sgt_eval.harness import build_report

    for name in MODEL_NAMES:
        t0 = time.perf_counter()
        adapter = load_adapter(weights[name]).eval()
        # the protocol declares `config` as a mutable attribute of the union type, which a
        # concrete adapter's narrower `config` cannot satisfy for mypy (invariance)
        results, maps[name] = evaluate_model(
            cast("UnifiedModelAdapter", adapter), vqa, prompts, segmentation, settings,
            geneval_dir=out / "geneval" / name, progress=stage(f"eval {name}"),
        )  # fmt: skip
        reports[name] = build_report(
            name, cast("UnifiedModelAdapter", adapter).kind, settings, results, str(weights[name])
        )
        times[f"eval {name}"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stage("report")(0, 1)
    report_dir = out / "report"
    summary = write_report(
        report_dir,
        reports,
        runs={name: out / "runs" / name for name in MODEL_NAMES},
        segmentation=segmentation,
        generated_maps=maps,
        size=spec,
        seeds=seeds,
        stage_seconds=times,
    )
    stage("report")(1, 1)
    times["report"] = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    (report_dir / "timings.json").write_text(
        json.dumps({"stages_s": times, "total_s": total, "size": spec.name}, indent=2) + "\n",
        encoding="utf-8",
    )
    return DemoResult(out, report_dir, summary, reports, seeds, times, total)
