"""The end-to-end CPU demo: scene world -> stores -> control / SGT post-training of the shipped
base -> evaluation -> report. :func:`run_demo` is the library entry point; ``sgt-train demo``
draws the progress bars.

Design of the comparison: every model starts from the **shipped base** (:mod:`sgt_train.demo.base`:
the ``sgt-mini`` sweep's seed-0 base, a tiny reference model that perceives existence; training it
takes longer than the demo's budget). From it, the **control** and **SGT** are the sweep's
``vqa-only`` and ``segmentation`` arms at the demo's seed: the control post-trains on existence :
counting questions 1 : 1, SGT on the same questions mixed within each micro-batch with
segmentation at segmentation : VQA = 2 : 1, for three times the control's steps. Both see the
**same VQA samples in the same order** (same sources, stores and mixture seed; the integration
test checks it), so any difference between them comes from adding the segmentation task.
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
from typing import TYPE_CHECKING, cast

from sgt_eval.report import EvalReport, EvalSettings

if TYPE_CHECKING:
    from sgt_data.scenes import SceneConfig
    from sgt_models.protocol import UnifiedModelAdapter
    from sgt_train.config import RunConfig

__all__ = ["DEMO_SIZES", "DemoResult", "DemoSize", "demo_scene_config", "run_demo"]

_log = logging.getLogger(__name__)

#: ``progress(stage, done, total)``; a new stage name starts a new stage.
StageProgress = Callable[[str, int, int], None]

#: the sweep whose arms the control and SGT are, and the arms
SWEEP = "sgt-mini"
ARMS = {"control": "vqa-only", "sgt": "segmentation"}


@dataclass(frozen=True)
class DemoSize:
    """How much the demo generates, trains and evaluates."""

    name: str
    num_train: int
    num_eval: int
    #: None: every held-out question (at 240 scenes, 400+ items per benchmark: a 95 % band of
    #: at most about 5 points at p = 0.5)
    max_questions: int | None
    max_prompts: int
    seg_images: int
    inference_steps: int
    #: control steps (SGT runs three times as many: the same VQA samples plus segmentation);
    #: None: the sweep arms' own (100 and 300)
    post_steps: int | None = None
    #: None: the sweep arms' own (32)
    micro_batch_size: int | None = None


DEMO_SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(
        name="tiny",
        num_train=48,
        num_eval=16,
        max_questions=48,
        max_prompts=12,
        seg_images=8,
        inference_steps=8,
        post_steps=4,
        micro_batch_size=6,
    ),
    "default": DemoSize(
        name="default",
        num_train=2000,
        num_eval=240,
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


def demo_scene_config() -> SceneConfig:
    """The scene config of the world the shipped base was trained on (its provenance record)."""
    from sgt_data.scenes import SceneConfig
    from sgt_train.demo.base import read_provenance

    world = read_provenance()["world"]
    size = int(world["image_size"])
    return SceneConfig(height=size, width=size, **world["scene"])


def _arm_config(model: str, out_dir: Path, size: DemoSize, seed: int, base: Path) -> RunConfig:
    """The sweep arm ``ARMS[model]``'s run config on the demo's stores, from ``base``."""
    import yaml

    from sgt_train._preflight import resolve_config
    from sgt_train.config import apply_overrides, validate_run_config
    from sgt_train.sweep import _store_paths, _substitute, load_sweep

    sweep = load_sweep(SWEEP)
    arm = next(a for a in sweep.arms if a.name == ARMS[model])
    base_file = resolve_config(sweep.base.config)
    data = yaml.safe_load(base_file.read_text(encoding="utf-8")) or {}
    (stage,) = arm.stage_list()  # both arms are one stage
    overrides = [*sweep.base.set, *stage.set]
    overrides += [f"{f}={seed}" for f in sweep.seed_fields]
    if size.post_steps is not None:
        steps = size.post_steps * (3 if model == "sgt" else 1)
        overrides += [f"steps={steps}", f"checkpoint.every={steps}"]
    if size.micro_batch_size is not None:
        overrides.append(f"micro_batch_size={size.micro_batch_size}")
    overrides += [
        f"name={model}", f"output_dir={out_dir / 'runs'}", f"init_from={base}", "logging.every=1",
    ]  # fmt: skip
    data = apply_overrides(data, _substitute(overrides, _store_paths(out_dir)))
    data["model"]["image_size"] = sweep.world.image_size
    return validate_run_config(data, f"demo run {model} (sweep {SWEEP}, arm {arm.name})")


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

    from sgt_train.demo.base import read_provenance, shipped_base

    base = shipped_base()
    t0 = time.perf_counter()
    stage("data")(0, 4)
    data = build_stores(
        out, num_train=spec.num_train, num_eval=spec.num_eval, seed=seed,
        config=demo_scene_config(), progress=stage("data"),
    )  # fmt: skip
    times["data"] = time.perf_counter() - t0

    set_single_process_env()
    runs = {name: _arm_config(name, out, spec, seed, base) for name in ("control", "sgt")}
    weights: dict[str, Path] = {"base": base}
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
        runs={name: out / "runs" / name for name in ("control", "sgt")},
        segmentation=segmentation,
        generated_maps=maps,
        size=spec,
        seeds=seeds,
        stage_seconds=times,
        configs=runs,
        base=read_provenance(base),
    )
    stage("report")(1, 1)
    times["report"] = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    (report_dir / "timings.json").write_text(
        json.dumps({"stages_s": times, "total_s": total, "size": spec.name}, indent=2) + "\n",
        encoding="utf-8",
    )
    return DemoResult(out, report_dir, summary, reports, seeds, times, total)
