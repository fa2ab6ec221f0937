"""``sgt-train sweep SWEEP.yaml``: a grid of run configs (arms) x seeds on the scene world, run one
after another or spread over worker processes (one per GPU), resumable, collected into one
comparison report.

A sweep file names a base run config (a recipe or YAML path plus ``a.b=c`` overrides), the arms
(each a list of stages of overrides; a stage after the first starts from the previous stage's
export, which is how "proxy first, then VQA" is written), the seeds, how the scene world is
built and how each finished run is evaluated. Layout of the output folder::

    stores/                     the scene world and its stores (built once; ``stores.done``)
    runs/s<seed>/_vision/       a dense-pretrained vision encoder (``vision_pretrain``):
                                ``model/`` (an exported reference model), ``vision.done``
    runs/s<seed>/<arm>/<stage>/ sgt-train run folders (checkpoints, ``final/`` export, ``stage.done``)
    runs/s<seed>/<arm>/report.json, done.json    the run's EvalReport, then its done marker
    events.jsonl                what was trained and evaluated, one line each (for audits)
    report/report.json, report/report.md, report/plots/*.png

Resuming: a run with ``done.json`` is never repeated; a stage with ``stage.done`` is not
retrained; a half-trained stage resumes from its newest checkpoint through sgt-train's own
resume. Markers are written atomically (a temporary file renamed over the target) after the
artefact they vouch for.

Workers: every process running the same sweep file takes the next (arm, seed) nobody has taken:
it holds an exclusive POSIX lock (``fcntl.lockf``) on the unit's ``.claim`` file while it trains
and evaluates it, so the kernel releases the claim when the process ends, killed or not, and no
stale claim outlives a crash. A unit whose seed's pretrain stage is not finished waits for it.
``sgt-train sweep FILE --workers N [--devices 0,1,...]`` starts N such workers (each with its own
``CUDA_VISIBLE_DEVICES``, or on a CPU its share of the cores) and writes the report when they end;
starting the same command on several nodes that share the output folder does the same across a
cluster, where the shared file system honours POSIX locks (local disks, NFSv4 and Lustre do;
some FUSE mounts do not, and there two workers could take one run). Each worker writes the
report when nothing is left for it; the report lists runs in plan order, whoever ran them, so it
does not depend on the schedule.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sgt_train.config import ConfigError
from sgt_train.sweep_report import SweepReport, markdown_report, plot_sweep, summarize

if TYPE_CHECKING:
    from sgt_eval.report import EvalReport
    from sgt_train.config import RunConfig
    from sgt_train.demo.stores import DemoStores

__all__ = [
    "SWEEP_SCHEMA_VERSION",
    "Arm",
    "BaseRun",
    "EvaluationSpec",
    "Stage",
    "SweepError",
    "SweepFile",
    "SweepResult",
    "TableSpec",
    "VisionPretrainSpec",
    "WorldSpec",
    "add_sweep_command",
    "cmd_sweep",
    "load_sweep",
    "plan_runs",
    "run_sweep",
]

_log = logging.getLogger(__name__)

SWEEP_SCHEMA_VERSION: Literal[1] = 1
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
#: ``${world.<store>}`` in an override value becomes that store's path (see ``WorldSpec``).
_PLACEHOLDER = re.compile(r"\$\{world\.([a-z_]+)\}")


class SweepError(ValueError):
    """A sweep file that cannot be used; the message names the file, the field and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseRun(_Strict):
    """The run config every run starts from: a recipe name or YAML path, then overrides."""

    config: str = Field(min_length=1, description="shipped recipe name or YAML path")
    set: list[str] = Field(default_factory=list, description="a.b=c overrides (as --set)")


class Stage(_Strict):
    """One training run of an arm: overrides applied over the base config (and the arm's)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    set: list[str] = Field(default_factory=list)


class Arm(_Strict):
    """A row of the comparison. ``set`` is shorthand for one stage named ``train``; ``stages``
    run in order, each after the first initialised from the previous stage's export; an arm
    with neither evaluates its starting point (the ``pretrain`` export, e.g. the base model)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    label: str | None = Field(default=None, description="row label in tables (default: name)")
    set: list[str] | None = None
    stages: list[Stage] | None = None
    compare_to: str | None = Field(
        default=None, description="paired comparison against this arm (default: sweep baseline)"
    )

    @model_validator(mode="after")
    def _one_form(self) -> Arm:
        if self.set is not None and self.stages is not None:
            raise ValueError("give either set (one stage) or stages, not both")
        if self.stages is not None:
            names = [s.name for s in self.stages]
            if len(set(names)) != len(names):
                raise ValueError(f"stage names repeat: {names}")
        return self

    def stage_list(self) -> list[Stage]:
        """The arm's stages (``set`` as one stage named ``train``)."""
        if self.stages is not None:
            return list(self.stages)
        if self.set is not None:
            return [Stage(name="train", set=list(self.set))]
        return []


class WorldSpec(_Strict):
    """The scene world the sweep builds once (``sgt_train.demo.stores.build_stores``); override
    values may name its stores as ``${world.scenes}``, ``${world.vqa}``, ``${world.t2i}``,
    ``${world.eval_semantic}``, ``${world.edge}`` (and ``${world.root}``, the folder of the world)."""

    num_train: int = Field(ge=1)
    num_eval: int = Field(ge=1)
    seed: int = Field(default=0, ge=0, description="the world is the same for every run seed")
    image_size: int = Field(default=64, ge=16)
    edge: bool = Field(default=True, description="also convert a Canny edge store (${world.edge})")
    scene: dict[str, Any] = Field(
        default_factory=dict, description="sgt_data.scenes.SceneConfig fields (sizes, objects)"
    )

    @model_validator(mode="after")
    def _check_scene(self) -> WorldSpec:
        from sgt_data.scenes import SceneConfig

        try:
            SceneConfig(height=self.image_size, width=self.image_size, **self.scene)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"scene{'.' + where if where else ''}: {err['msg']}") from None
        return self


class VisionPretrainSpec(_Strict):
    """Dense pretraining of the reference model's vision encoder and connector before each seed's
    ``pretrain`` stage (which starts from it): per-token class histograms of the
    semantic maps of ``scenes`` train scenes of the world, generated in process (the world's own
    train scenes are the first ``num_train`` of them; held-out scenes are never among them). It
    stands in for the pretrained SigLIP that BAGEL starts from
    (``sgt_models.reference.pretrain_vision_encoder``); the report says that the base saw these
    labels."""

    scenes: int = Field(ge=1, description="distinct train scenes (generated, not stored)")
    steps: int = Field(ge=1)
    lr: float = Field(default=2e-3, gt=0)
    batch_size: int = Field(default=32, ge=1)
    eval_scenes: int = Field(
        default=100, ge=1, description="held-out scenes on which the presence AUC is reported"
    )
    seed: int | None = Field(
        default=0,
        ge=0,
        description="one encoder, pretrained with this seed, shared by every run seed (as every "
        "BAGEL post-training run starts from the same SigLIP); null: one encoder per run seed",
    )


class EvaluationSpec(_Strict):
    """How a finished run is evaluated on the held-out scenes (``demo.evaluation``)."""

    max_questions: int | None = Field(
        default=None, ge=1, description="None: every held-out question (400+ per benchmark)"
    )
    max_prompts: int | None = Field(default=60, ge=0)
    seg_images: int = Field(default=32, ge=1)
    batch_size: int = Field(default=8, ge=1)
    max_new_tokens: int = Field(default=8, ge=1)
    inference_steps: int = Field(default=16, ge=1)
    #: where the evaluated model runs: 'auto' is the worker's GPU when it has one, else the CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: name -> metric keys ('benchmark/split/metric'); a run's aggregate is their mean
    aggregates: dict[str, list[str]] = Field(default_factory=dict)


class TableColumn(_Strict):
    """A table column: a metric key ('benchmark/split/metric' or an aggregate name)."""

    label: str
    metric: str


class TableSpec(_Strict):
    """A table (and its plots) of the report: rows are arms in this order."""

    title: str
    arms: list[str] = Field(min_length=1)
    columns: list[TableColumn] = Field(default_factory=list, description="default: all metrics")
    #: arm -> x value: the plots draw a line over x (e.g. segmentation samples) instead of bars
    x: dict[str, float] = Field(default_factory=dict)
    x_label: str = "x"


class SweepFile(_Strict):
    """A sweep: base config x arms x seeds, the world, the evaluation and the report tables."""

    schema_version: Literal[1] = SWEEP_SCHEMA_VERSION
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = Field(description="relative paths are relative to the current directory")
    base: BaseRun
    pretrain: list[str] | None = Field(
        default=None,
        description="overrides of a stage trained once per seed that every arm starts from",
    )
    vision_pretrain: VisionPretrainSpec | None = Field(
        default=None, description="dense vision pretraining before each seed's pretrain stage"
    )
    arms: list[Arm] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    #: the run-config fields that take the seed
    seed_fields: list[str] = Field(default_factory=lambda: ["seed", "data.seed"])
    baseline: str | None = Field(default=None, description="default compare_to (the first arm)")
    world: WorldSpec
    evaluation: EvaluationSpec = EvaluationSpec()
    tables: list[TableSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_names(self) -> SweepFile:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {names}")
        if "_pretrain" in names:
            raise ValueError("arm name '_pretrain' is reserved")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        known = set(names)
        for where, arm in [("baseline", self.baseline)] + [
            (f"arms.{a.name}.compare_to", a.compare_to) for a in self.arms
        ]:
            if arm is not None and arm not in known:
                raise ValueError(f"{where}: no arm {arm!r}")
        for t in self.tables:
            unknown = [a for a in t.arms if a not in known]
            if unknown:
                raise ValueError(f"table {t.title!r}: no arm(s) {unknown}")
        if self.vision_pretrain is not None and self.pretrain is None:
            raise ValueError("vision_pretrain: needs a pretrain stage (which starts from it)")
        if self.pretrain is None and any(not a.stage_list() for a in self.arms):
            raise ValueError("an arm without stages evaluates the pretrain stage: add pretrain")
        return self

    def select_arms(self, names: Sequence[str]) -> SweepFile:
        """The same sweep restricted to the arms ``names`` (same output folder, so the full sweep
        later reuses these runs): tables keep their selected rows, comparisons their pairs of
        selected arms. ``SweepError`` for a name the sweep does not have."""
        known = [a.name for a in self.arms]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise SweepError(
                f"--arms: no arm(s) {unknown or list(names)}; known: {', '.join(known)}"
            )
        arms = [a for a in self.arms if a.name in names]
        keep = {a.name for a in arms}
        baseline = self.baseline or self.arms[0].name
        # an arm compared with an arm left out is compared with nothing (not silently with another)
        pruned = [
            a.model_copy(update={"compare_to": a.name})
            if (a.compare_to or baseline) not in keep
            else a
            for a in arms
        ]
        tables = [
            t.model_copy(update={"arms": [a for a in t.arms if a in keep]})
            for t in self.tables
            if any(a in keep for a in t.arms)
        ]
        return self.model_copy(
            update={
                "arms": pruned,
                "tables": tables,
                "baseline": baseline if baseline in keep else None,
            }
        )

    def comparisons(self) -> list[tuple[str, str]]:
        """(arm, against) pairs: each arm against its ``compare_to`` or the baseline."""
        default = self.baseline or self.arms[0].name
        pairs = []
        for arm in self.arms:
            against = arm.compare_to or default
            if against != arm.name:
                pairs.append((arm.name, against))
        return pairs


def _format_validation(file: Path, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{file}: {loc}: {err['msg']}{more}"


def load_sweep(path: str | Path) -> SweepFile:
    """Read and validate a sweep file (a path or a shipped ``recipes/sweeps`` name); also checks
    that the base config with every arm's and stage's overrides is a valid run config.
    ``SweepError`` names the file, the field and the reason in one line."""
    file = _resolve_sweep(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SweepError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise SweepError(f"{file}: <yaml>: {where}{getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{file}: <root>: expected a mapping, got {type(data).__name__}")
    try:
        sweep = SweepFile.model_validate(data)
    except ValidationError as exc:
        raise SweepError(_format_validation(file, exc)) from None
    stores = _store_paths(Path(sweep.output_dir) / "stores")
    # one seed is enough: seeds change only the seed fields
    for unit in (u for u in plan_runs(sweep) if u.seed == sweep.seeds[0]):
        for stage in unit.stages:
            try:
                config = _stage_config(sweep, unit, stage, stores, Path(sweep.output_dir), None)
            except ConfigError as exc:  # its first line says "invalid run config"; keep the field
                first = str(exc).splitlines()
                detail = first[1].strip() if len(first) > 1 else first[0]
                raise SweepError(
                    f"{file}: arms.{unit.arm}.{stage.name}: not a valid run config: {detail}"
                ) from None
            if unit.arm == "_pretrain" and sweep.vision_pretrain is not None:
                kind = getattr(config.model, "kind", None)
                if kind != "reference":
                    raise SweepError(
                        f"{file}: vision_pretrain: pretrains the reference model's encoder; the "
                        f"pretrain stage's model is {kind!r}"
                    )
    return sweep


def _resolve_sweep(path: str | Path) -> Path:
    file = Path(path)
    if file.exists() or file.suffix in (".yaml", ".yml"):
        return file
    from importlib.resources import files

    shipped = Path(str(files("sgt_train.recipes").joinpath("sweeps", f"{path}.yaml")))
    return shipped if shipped.is_file() else file


# -- planning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunUnit:
    """One (arm, seed): its stages in order, trained under ``runs/s<seed>/<arm>/``."""

    arm: str
    seed: int
    stages: tuple[Stage, ...]
    from_pretrain: bool

    def folder(self, out: Path) -> Path:
        """Where the unit's run folders, report and done marker lie."""
        return out / "runs" / f"s{self.seed}" / self.arm


def plan_runs(sweep: SweepFile) -> list[RunUnit]:
    """Every (arm, seed) in run order: seed by seed, arms in file order (so a partial sweep has
    complete seeds for paired comparisons). A seed's pretrain stage comes first."""
    units = []
    for seed in sweep.seeds:
        if sweep.pretrain is not None:
            units.append(
                RunUnit("_pretrain", seed, (Stage(name="pretrain", set=sweep.pretrain),), False)
            )
        for arm in sweep.arms:
            units.append(
                RunUnit(arm.name, seed, tuple(arm.stage_list()), sweep.pretrain is not None)
            )
    return units


def _store_paths(stores: Path) -> dict[str, str]:
    return {
        "root": str(stores / "world"),
        "scenes": str(stores / "stores" / "scenes-train"),
        "vqa": str(stores / "stores" / "scenes-train-vqa"),
        "t2i": str(stores / "stores" / "scenes-train-t2i"),
        "eval_semantic": str(stores / "stores" / "scenes-eval-semantic"),
        "edge": str(stores / "stores" / "scenes-train-edge"),
    }


def _substitute(overrides: Sequence[str], stores: Mapping[str, str]) -> list[str]:
    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in stores:
            raise ConfigError(f"unknown placeholder ${{world.{key}}}; known: {', '.join(stores)}")
        return stores[key]

    return [_PLACEHOLDER.sub(one, o) for o in overrides]


def _stage_config(
    sweep: SweepFile,
    unit: RunUnit,
    stage: Stage,
    stores: Mapping[str, str],
    out: Path,
    init_from: Path | None,
) -> RunConfig:
    from sgt_train._preflight import resolve_config
    from sgt_train.config import apply_overrides, validate_run_config

    base_file = resolve_config(sweep.base.config)
    data = yaml.safe_load(base_file.read_text(encoding="utf-8")) or {}
    overrides = [*sweep.base.set, *stage.set]
    overrides += [f"{f}={unit.seed}" for f in sweep.seed_fields]
    overrides += [f"name={stage.name}", f"output_dir={unit.folder(out)}"]
    if init_from is not None:
        overrides.append(f"init_from={init_from}")
    data = apply_overrides(data, _substitute(overrides, stores))
    if isinstance(data.get("model"), dict) and data["model"].get("kind") == "reference":
        data["model"]["image_size"] = sweep.world.image_size  # the world's resolution
    return validate_run_config(data, f"{base_file} (sweep arm {unit.arm}, stage {stage.name})")


# -- running ----------------------------------------------------------------------------------


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique: workers may write at once
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


@dataclass
class SweepResult:
    """What ``run_sweep`` did and where the report lies."""

    out_dir: Path
    report: SweepReport
    report_dir: Path
    trained: list[str]
    evaluated: list[str]
    skipped: list[str]
    seconds: float


#: ``progress(event, unit, detail)``: events 'skip' (once, for every finished run), 'train',
#: 'evaluate', 'done', 'wait'
SweepProgress = Callable[[str, str, str], None]


class _Events:
    def __init__(self, path: Path) -> None:
        self.path = path

    def log(self, event: str, unit: str, **fields: Any) -> None:
        record = {"event": event, "unit": unit, "time": time.time(), "pid": os.getpid(), **fields}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


class _Claim:
    """An exclusive claim on a file, held while the object lives (``release`` or process end)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = -1


def _claim(path: Path, *, wait: bool = False) -> _Claim | None:
    """Take the POSIX lock on ``path`` (created if missing); None when another process holds it
    and ``wait`` is False. The file records who holds it (pid, host), for people, not for locking."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
    return _Claim(path, fd)


def claim_holder(path: Path) -> str | None:
    """``process PID on HOST`` of the process holding the claim at ``path``, or None when nobody holds it."""
    if not path.is_file():
        return None
    held = _claim(path)
    if held is not None:
        held.release()
        return None
    return path.read_text(encoding="utf-8").strip() or "another process"


@contextlib.contextmanager
def _claimed(path: Path) -> Iterator[None]:
    """Hold the claim at ``path`` for the ``with`` block, waiting for it if it is taken."""
    held = _claim(path, wait=True)
    assert held is not None
    try:
        yield
    finally:
        held.release()


def _build_world(sweep: SweepFile, out: Path, source: str | Path) -> DemoStores:
    """The world and its stores, built by one worker while the others wait for it."""
    with _claimed(out / ".world.claim"):
        return _open_or_build_world(sweep, out, source)


def _open_or_build_world(sweep: SweepFile, out: Path, source: str | Path) -> DemoStores:
    """Build the world and its stores once; later calls reopen them (``stores.done``).
    ``source``: the sweep file, named in errors."""
    import dataclasses

    from sgt_data.scenes import SceneConfig, WorldPaths, WorldSplitPaths
    from sgt_train.demo.stores import DemoStores, build_stores

    folder = out / "stores"
    marker = folder / "stores.done"
    wanted = sweep.world.model_dump(mode="json")
    if sweep.world.edge and not marker.is_file() and importlib.util.find_spec("cv2") is None:
        raise SweepError(
            f"{source}: world.edge: the edge store needs OpenCV, which is not installed: "
            "pip install 'sgt-data[edge]' (or set world.edge: false and drop the edge arms)"
        )
    if marker.is_file():
        record = json.loads(marker.read_text(encoding="utf-8"))
        if record["world"] != wanted:
            raise SweepError(
                f"{folder}: built for another world ({record['world']}); use a new output_dir"
            )
        paths = record["paths"]

        def split(d: dict[str, Any]) -> WorldSplitPaths:
            return WorldSplitPaths(
                split=str(d["split"]), images=Path(d["images"]), instances=Path(d["instances"]),
                semantic=Path(d["semantic"]), depth=Path(d["depth"]), vqa=Path(d["vqa"]),
                t2i=Path(d["t2i"]), num_images=int(d["num_images"]),
            )  # fmt: skip

        world = WorldPaths(
            root=Path(paths["root"]), manifest=Path(paths["manifest"]),
            train=split(paths["train"]), eval=split(paths["eval"]),
        )  # fmt: skip
        stores = _store_paths(folder)
        return DemoStores(
            world=world, scenes=Path(stores["scenes"]), vqa=Path(stores["vqa"]),
            t2i=Path(stores["t2i"]), eval_semantic=Path(stores["eval_semantic"]), manifests={},
            edge=Path(stores["edge"]) if sweep.world.edge else None,
        )  # fmt: skip
    spec = sweep.world
    built = build_stores(
        folder, num_train=spec.num_train, num_eval=spec.num_eval, seed=spec.seed,
        config=SceneConfig(height=spec.image_size, width=spec.image_size, **spec.scene),
        edge=spec.edge,
    )  # fmt: skip
    record = {"world": wanted, "paths": dataclasses.asdict(built.world)}
    _write_atomic(marker, json.dumps(record, default=str) + "\n")
    return built


def _train_stage(config: RunConfig, on_start: Callable[[int, int], None]) -> Path:
    """Train (resuming from the newest checkpoint) and export; the exported folder."""
    from sgt_train.export import export_run
    from sgt_train.loop import Hooks, fit, run_dir_of

    fit(config, hooks=Hooks(on_start=[on_start]), resume=True)
    run_dir = run_dir_of(config)
    # DeepSpeed's fp32 consolidation prints to stdout and draws its own bar
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return export_run(run_dir, run_dir / "final", ema=False)


def _evaluate(
    sweep: SweepFile, unit: RunUnit, weights: Path, stores: DemoStores, out: Path
) -> EvalReport:
    from typing import cast

    from sgt_eval.harness import build_report
    from sgt_eval.report import EvalSettings
    from sgt_models.registry import load_adapter
    from sgt_train.demo.evaluation import (
        evaluate_model,
        load_scene_prompts,
        load_scene_vqa,
        load_segmentation_set,
    )

    if TYPE_CHECKING:
        from sgt_models.protocol import UnifiedModelAdapter
    ev = sweep.evaluation
    vqa = load_scene_vqa(stores.world.eval.vqa, stores.world.root, ev.max_questions)
    prompts = load_scene_prompts(stores.world.eval.t2i, ev.max_prompts)
    segmentation = load_segmentation_set(stores.eval_semantic, ev.seg_images)
    settings = EvalSettings(
        seed=unit.seed, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens,
        num_inference_steps=ev.inference_steps,
    )  # fmt: skip
    import torch

    device = ev.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    adapter = cast("UnifiedModelAdapter", load_adapter(weights, device=device).eval())
    results, _maps = evaluate_model(
        adapter, vqa, prompts, segmentation, settings,
        geneval_dir=unit.folder(out) / "geneval",
    )  # fmt: skip
    name = f"{sweep.name}/{unit.arm}/s{unit.seed}"
    return build_report(name, adapter.kind, settings, results, str(weights))


def _run_unit(
    sweep: SweepFile,
    unit: RunUnit,
    out: Path,
    stores: DemoStores,
    events: _Events,
    start: Path | None,
    progress: SweepProgress | None,
) -> tuple[Path | None, list[str]]:
    """Train the unit's stages (skipping finished ones), the first from ``start`` (an export);
    the unit's final export and the stages trained now."""
    store_paths = _store_paths(out / "stores")
    init = start
    trained = []
    key = f"{unit.arm}/s{unit.seed}"
    for stage in unit.stages:
        config = _stage_config(sweep, unit, stage, store_paths, out, init)
        marker = unit.folder(out) / stage.name / "stage.done"
        if marker.is_file():
            init = Path(json.loads(marker.read_text(encoding="utf-8"))["export"])
            continue
        if progress is not None:
            progress("train", key, stage.name)
        # the thread count changes float summation order, so it is part of what a run was
        events.log("train", key, stage=stage.name, threads=_threads())
        t0 = time.perf_counter()

        def started(start: int, total: int, stage_name: str = stage.name) -> None:
            events.log("started", key, stage=stage_name, start_step=start, total_steps=total)

        init = _train_stage(config, started)
        _write_atomic(marker, json.dumps({"export": str(init)}) + "\n")
        events.log("trained", key, stage=stage.name, seconds=time.perf_counter() - t0)
        trained.append(f"{key}/{stage.name}")
    return init, trained


def _scene_arrays(world: WorldSpec, split: Literal["train", "eval"], count: int) -> tuple[Any, Any]:
    """Images ``(N, S, S, 3)`` and class maps (0 = background, 1 + class index) of the first
    ``count`` scenes of the world's ``split``, generated in process."""
    import numpy as np

    from sgt_data.scenes import SceneConfig, generate_scene, scene_seed, semantic_map

    cfg = SceneConfig(height=world.image_size, width=world.image_size, **world.scene)
    size = world.image_size
    images = np.empty((count, size, size, 3), np.uint8)
    labels = np.empty((count, size, size), np.uint8)
    for i in range(count):
        scene = generate_scene(scene_seed(world.seed, split, i), cfg)
        images[i] = scene.image
        semantic = semantic_map(scene)
        labels[i] = np.where(semantic == 255, 0, semantic + 1)
    return images, labels


def _vision_pretrain(
    sweep: SweepFile, unit: RunUnit, out: Path, events: _Events, progress: SweepProgress | None
) -> dict[str, Any]:
    """The ``vision.done`` record (``export``: the folder) of the dense-pretrained model the
    unit's seed starts from (``runs/s<v>/_vision/model``, ``v`` the spec's seed or, without one,
    the run seed), trained unless that marker exists; built from the pretrain stage's model
    config, weights drawn with seed ``v``."""
    spec = sweep.vision_pretrain
    assert spec is not None
    seed = unit.seed if spec.seed is None else spec.seed
    folder = out / "runs" / f"s{seed}" / "_vision"
    with _claimed(folder / ".claim"):  # one encoder may be shared by every seed's pretrain
        return _train_vision(sweep, unit, out, events, progress, seed, folder)


def _train_vision(
    sweep: SweepFile,
    unit: RunUnit,
    out: Path,
    events: _Events,
    progress: SweepProgress | None,
    seed: int,
    folder: Path,
) -> dict[str, Any]:
    import torch

    from sgt_data.scenes import SCENE_CLASSES
    from sgt_models.reference import VisionPretrainConfig, pretrain_vision_encoder
    from sgt_models.registry import build_adapter

    spec = sweep.vision_pretrain
    assert spec is not None
    marker = folder / "vision.done"
    if marker.is_file():
        record: dict[str, Any] = json.loads(marker.read_text(encoding="utf-8"))
        return record
    key = f"_vision/s{seed}"
    if progress is not None:
        progress("train", key, f"{spec.steps} dense vision steps on {spec.scenes} scenes")
    events.log("train", key, stage="vision")
    t0 = time.perf_counter()
    config = _stage_config(sweep, unit, unit.stages[0], _store_paths(out / "stores"), out, None)
    images, labels = _scene_arrays(sweep.world, "train", spec.scenes)
    eval_images, eval_labels = _scene_arrays(sweep.world, "eval", spec.eval_scenes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = build_adapter(config.model)
        settings = VisionPretrainConfig(
            steps=spec.steps, lr=spec.lr, batch_size=spec.batch_size, seed=seed
        )
        every = max(1, spec.steps // 10)

        def logged(step: int, loss: float) -> None:
            if step % every == 0:
                _log.info("%s: dense vision step %d/%d, loss %.4f", key, step, spec.steps, loss)

        result = pretrain_vision_encoder(
            model, images, labels, 1 + len(SCENE_CLASSES), settings,
            eval_images=eval_images, eval_labels=eval_labels, progress=logged,
        )  # fmt: skip
    export = folder / "model"
    model.save_pretrained(export)
    names = ["background", *SCENE_CLASSES]
    record = {
        "export": str(export),
        "seed": seed,
        "steps": spec.steps,
        "scenes": spec.scenes,
        "first_loss": result.losses[0],
        "final_loss": sum(result.losses[-50:]) / len(result.losses[-50:]),
        "presence_auc": {names[k]: v for k, v in result.presence_auc.items()},
        "mean_presence_auc": round(result.mean_presence_auc, 2),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_atomic(marker, json.dumps(record) + "\n")
    events.log("trained", key, stage="vision", seconds=record["seconds"])
    return record


def _vision_note(spec: VisionPretrainSpec, records: Mapping[int, Mapping[str, Any]]) -> str:
    by_encoder = {int(r["seed"]): r for r in records.values()}
    aucs = ", ".join(
        f"seed {seed}: {by_encoder[seed]['mean_presence_auc']:.1f}" for seed in sorted(by_encoder)
    )
    which = (
        f"one vision encoder and connector (seed {spec.seed}, shared by every run seed)"
        if spec.seed is not None
        else "a vision encoder and connector (one per run seed)"
    )
    return (
        f"**Base:** every run starts from {which} pretrained on the dense "
        f"class labels (per-token class histograms of the semantic maps) of {spec.scenes} train "
        f"scenes, {spec.steps} steps at lr {spec.lr:g}, batch {spec.batch_size}; the models have "
        f"seen these labels (as BAGEL's SigLIP has seen its pretraining data). Mean per-class "
        f"presence AUC on {spec.eval_scenes} held-out scenes (chance 50): {aucs}."
    )


def _metrics_of(report: EvalReport, aggregates: Mapping[str, Sequence[str]]) -> dict[str, float]:
    values = {
        f"{r.benchmark}/{r.split}/{m}": float(v)
        for r in report.results
        for m, v in r.metrics.items()
    }
    for name, keys in aggregates.items():
        present = [values[k] for k in keys if k in values]
        if len(present) == len(keys) and keys:
            values[name] = sum(present) / len(present)
    return values


def _pretrain_export(sweep: SweepFile, seed: int, out: Path) -> Path | None:
    """The seed's finished pretrain export (its last stage's ``stage.done``), or None."""
    if sweep.pretrain is None:
        return None
    marker = out / "runs" / f"s{seed}" / "_pretrain" / "pretrain" / "stage.done"
    if not marker.is_file():
        return None
    return Path(json.loads(marker.read_text(encoding="utf-8"))["export"])


def _unit_done(sweep: SweepFile, unit: RunUnit, out: Path) -> bool:
    if unit.arm == "_pretrain":
        return _pretrain_export(sweep, unit.seed, out) is not None
    return (unit.folder(out) / "done.json").is_file()


def run_sweep(
    path: str | Path,
    *,
    progress: SweepProgress | None = None,
    stop_after: int | None = None,
    poll_seconds: float = 1.0,
    arms: Sequence[str] | None = None,
) -> SweepResult:
    """Run (or continue) every (arm, seed) of the sweep file at ``path``; write the report.

    Units are taken in plan order; one that another process has claimed, or whose seed's
    pretrain stage is still being trained elsewhere, is left to it, and this process waits
    (polling every ``poll_seconds``) until every unit is done. ``stop_after``: stop after this
    many newly finished runs (0: only write the report of what is done). ``arms``: run and
    report only these arms (``SweepFile.select_arms``).
    """
    from sgt_eval.report import EvalReport
    from sgt_train.launch import set_single_process_env

    t_start = time.perf_counter()
    sweep = load_sweep(path)
    if arms is not None:
        sweep = sweep.select_arms(arms)
    out = Path(sweep.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "sweep.json", load_sweep(path).model_dump_json(indent=2) + "\n")
    events = _Events(out / "events.jsonl")
    if len(sweep.seeds) < 3:
        _log.warning("%s: %d seed(s): intervals need at least 3", path, len(sweep.seeds))
    stores = _build_world(sweep, out, path)
    set_single_process_env()
    plan = plan_runs(sweep)
    trained: list[str] = []
    evaluated: list[str] = []
    skipped = [
        f"{u.arm}/s{u.seed}" for u in plan if u.arm != "_pretrain" and _unit_done(sweep, u, out)
    ]
    if skipped and progress is not None:  # one line, not one per finished run
        shown = ", ".join(skipped[:4]) + (
            f" and {len(skipped) - 4} more" if len(skipped) > 4 else ""
        )
        progress("skip", f"{len(skipped)} finished run(s):", shown)
    finished_now = 0
    waiting_on: dict[str, str] = {}
    last_wait = ""

    def next_unit() -> tuple[RunUnit, _Claim] | None:
        """The first unit that is not done, not claimed, and ready, claimed; None if none."""
        for unit in plan:
            if _unit_done(sweep, unit, out):
                continue
            key = f"{unit.arm}/s{unit.seed}"
            if unit.from_pretrain and _pretrain_export(sweep, unit.seed, out) is None:
                waiting_on[key] = f"the pretrain of seed {unit.seed}"
                continue
            claim = _claim(unit.folder(out) / ".claim")
            if claim is None:
                waiting_on[key] = claim_holder(unit.folder(out) / ".claim") or "another process"
                continue
            if _unit_done(sweep, unit, out):  # finished between the check and the claim
                claim.release()
                continue
            return unit, claim
        return None

    while stop_after is None or finished_now < stop_after:
        waiting_on.clear()
        taken = next_unit()
        if taken is None:
            if not waiting_on:
                break  # every unit is done
            unit_key, holder = next(iter(waiting_on.items()))
            message = f"{len(waiting_on)} unit(s) left, waiting for {holder}"
            if progress is not None and message != last_wait:
                progress("wait", unit_key, message)
            last_wait = message
            time.sleep(poll_seconds)
            continue
        unit, claim = taken
        key = f"{unit.arm}/s{unit.seed}"
        try:
            if unit.arm == "_pretrain":
                vision = None
                if sweep.vision_pretrain is not None:
                    record = _vision_pretrain(sweep, unit, out, events, progress)
                    vision = Path(record["export"])
                _export, new = _run_unit(sweep, unit, out, stores, events, vision, progress)
                trained += new
                continue
            start = _pretrain_export(sweep, unit.seed, out) if unit.from_pretrain else None
            export, new = _run_unit(sweep, unit, out, stores, events, start, progress)
            trained += new
            assert export is not None  # an arm without stages starts from the pretrain export
            if progress is not None:
                progress("evaluate", key, str(export))
            events.log("evaluate", key)
            folder = unit.folder(out)
            report = _evaluate(sweep, unit, export, stores, out)
            report.write(folder / "report.json")
            done = {"report": str(folder / "report.json"), "export": str(export)}
            _write_atomic(folder / "done.json", json.dumps(done) + "\n")
            events.log("done", key)
            evaluated.append(key)
            finished_now += 1
            if progress is not None:
                progress("done", key, str(folder / "report.json"))
        finally:
            claim.release()

    # the report: every finished run, in plan order (whichever process ran it)
    runs: dict[str, dict[int, dict[str, float]]] = {}
    headline: list[str] = []
    vision_notes: dict[int, dict[str, Any]] = {}
    for unit in plan:
        if unit.arm == "_pretrain":
            if sweep.vision_pretrain is not None:
                v = unit.seed if sweep.vision_pretrain.seed is None else sweep.vision_pretrain.seed
                marker = out / "runs" / f"s{v}" / "_vision" / "vision.done"
                if marker.is_file():
                    vision_notes[unit.seed] = json.loads(marker.read_text(encoding="utf-8"))
            continue
        if not _unit_done(sweep, unit, out):
            continue
        report = EvalReport.read(unit.folder(out) / "report.json")
        runs.setdefault(unit.arm, {})[unit.seed] = _metrics_of(report, sweep.evaluation.aggregates)
        for r in report.results:
            metric = f"{r.benchmark}/{r.split}/{r.primary_metric}"
            headline.extend([metric] if metric not in headline else [])
    report_dir = out / "report"
    headline += [a for a in sweep.evaluation.aggregates if a not in headline]
    notes = []
    if sweep.vision_pretrain is not None and vision_notes:
        notes.append(_vision_note(sweep.vision_pretrain, vision_notes))
    with _claimed(out / ".report.claim"):  # workers ending together write one at a time
        sweep_report = write_sweep_report(sweep, str(path), runs, report_dir, headline, notes)
    return SweepResult(
        out, sweep_report, report_dir, trained, evaluated, skipped, time.perf_counter() - t_start
    )


def write_sweep_report(
    sweep: SweepFile,
    sweep_file: str,
    runs: Mapping[str, Mapping[int, Mapping[str, float]]],
    report_dir: Path,
    headline: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> SweepReport:
    """Write ``report.json``, ``report.md`` and the plots of ``runs`` into ``report_dir``."""
    labels = {a.name: a.label or a.name for a in sweep.arms}
    tables = [t.model_dump(mode="json") for t in sweep.tables]
    report = summarize(
        sweep.name, sweep_file, [a.name for a in sweep.arms], labels, sweep.seeds, runs,
        sweep.comparisons(), tables, headline, notes,
    )  # fmt: skip
    report_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(report_dir / "report.json", report.model_dump_json(indent=2) + "\n")
    plots = plot_sweep(report, report_dir / "plots")
    links = [str(p.relative_to(report_dir)) for p in plots]
    _write_atomic(report_dir / "report.md", markdown_report(report, links))
    return report


# -- CLI --------------------------------------------------------------------------------------


def add_sweep_command(subparsers: Any) -> None:
    """Register ``sweep`` on the ``sgt-train`` subcommand parsers."""
    sweep = subparsers.add_parser(
        "sweep",
        help="run a grid of run configs x seeds (resumable, spread over workers) and write one "
        "comparison report",
        description="Train and evaluate every (arm, seed) of a sweep file, skipping finished "
        "runs, then write OUT/report/report.{json,md} and plots: per arm the mean over seeds "
        "with a 95% Student-t interval and paired comparisons between arms. Several processes "
        "running the same file share the work (each run is claimed by one of them).",
        allow_abbrev=False,
    )
    sweep.add_argument("sweep_file", help="sweep YAML, or a shipped sweep name (e.g. sgt-mini)")
    sweep.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="start N worker processes that share the runs (default: 1, or one per --devices "
        "entry); on a CPU each gets its share of the cores",
    )  # fmt: skip
    sweep.add_argument(
        "--devices", default=None, metavar="LIST",
        help="GPUs for the workers, e.g. 0,1,2,3 (worker i gets CUDA_VISIBLE_DEVICES=LIST[i mod "
        "len]); 'all' for every visible GPU",
    )  # fmt: skip
    sweep.add_argument(
        "--arms", default=None, metavar="A,B,...",
        help="run and report only these arms (the same output folder: the full sweep later "
        "skips them)",
    )  # fmt: skip
    sweep.add_argument("--verbose", action="store_true", help="log at INFO level")
    sweep.set_defaults(func=cmd_sweep)


def _arms(args: argparse.Namespace) -> list[str] | None:
    spec = getattr(args, "arms", None)
    return None if spec is None else [a.strip() for a in spec.split(",") if a.strip()]


def _devices(spec: str | None) -> list[str]:
    if spec is None:
        return []
    if spec == "all":
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    bad = [d for d in devices if not d.isdigit()]
    if bad or not devices:
        raise SweepError(f"--devices {spec}: expected GPU indices such as 0,1,2,3 or 'all'")
    return devices


def _worker_env(index: int, workers: int, devices: Sequence[str]) -> dict[str, str]:
    """Worker ``index``'s environment: its GPU, or its share of the cores; no launcher variables
    (each worker is a one-process run with its own rendezvous port)."""
    env = dict(os.environ)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["SGT_SWEEP_WORKER"] = str(index)
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
    elif "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        env["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // workers))
    return env


def _run_workers(args: argparse.Namespace, workers: int, devices: Sequence[str]) -> int:
    """Start the workers, wait for them, then write the report of what they finished."""
    procs = []
    for i in range(workers):
        command = [sys.executable, "-m", "sgt_train.sweep", args.sweep_file]
        command += ["--verbose"] if getattr(args, "verbose", False) else []
        command += ["--arms", args.arms] if getattr(args, "arms", None) else []
        procs.append(subprocess.Popen(command, env=_worker_env(i, workers, devices)))
    where = f" on GPUs {','.join(devices)}" if devices else ""
    print(f"sgt-train sweep: {workers} workers{where}", file=sys.stderr, flush=True)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        which = ", ".join(f"worker {i} (exit {c})" for i, c in failed)
        print(
            f"sgt-train sweep: {which} failed; its run is unclaimed again: "
            f"`sgt-train sweep {args.sweep_file}` continues it",
            file=sys.stderr,
        )
        return 1
    result = run_sweep(args.sweep_file, stop_after=0, arms=_arms(args))  # only the report
    missing = f", missing {len(result.report.missing)}" if result.report.missing else ""
    print(f"sgt-train sweep: report {result.report_dir / 'report.md'}{missing}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``sgt-train sweep``: exit 0, 1 if a worker failed, 2 for a bad sweep file or option, 130
    on Ctrl-C."""
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    worker = os.environ.get("SGT_SWEEP_WORKER")
    prefix = "sgt-train sweep" if worker is None else f"sgt-train sweep [worker {worker}]"

    def show(event: str, unit: str, detail: str) -> None:
        print(f"{prefix}: {event} {unit} {detail}", file=sys.stderr, flush=True)

    try:
        devices = _devices(getattr(args, "devices", None))
        asked = getattr(args, "workers", None)
        workers = asked if asked is not None else max(1, len(devices))
        if workers < 1:
            raise SweepError(f"--workers {workers}: expected 1 or more")
        if workers > 1 or devices:
            sweep = load_sweep(args.sweep_file)  # a bad file is one line here, not per worker
            if _arms(args) is not None:
                sweep.select_arms(_arms(args) or [])
            return _run_workers(args, workers, devices)
        result = run_sweep(args.sweep_file, progress=show, arms=_arms(args))
    except SweepError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            f"{prefix}: interrupted; `sgt-train sweep {args.sweep_file}` continues where "
            "it stopped (finished runs are not repeated)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    missing = f", missing {len(result.report.missing)}" if result.report.missing else ""
    print(
        f"{prefix}: {len(result.evaluated)} run(s) finished now, {len(result.skipped)} "
        f"already done{missing}; report {result.report_dir / 'report.md'} "
        f"({result.seconds:.0f} s)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sgt_train.sweep SWEEP.yaml`` (the same as ``sgt-train sweep``)."""
    parser = argparse.ArgumentParser(prog="sgt-train sweep")
    sub = parser.add_subparsers(dest="command", required=True)
    add_sweep_command(sub)
    return cmd_sweep(parser.parse_args(["sweep", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    raise SystemExit(main())
