"""What ``sgt-train validate`` and ``fit`` check before any training starts.

Two jobs: turn a run config's name or path plus ``--set`` overrides into a :class:`RunConfig`
with messages a person can act on (the file named once, the nearest field suggested for an
unknown one), and open every store of the data mixture read-only, without reading a sample, to
report what would otherwise surface as a traceback from inside the training loop.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sgt_train.config import ConfigError, RunConfig, apply_overrides, load_run_config

__all__ = ["DataCheck", "SourceCount", "check_data", "load_cli_config", "resolve_config"]


def resolve_config(spec: str) -> Path:
    """A YAML path, or the file of the shipped recipe named ``spec``.

    Raises ``ConfigError`` naming ``spec`` and listing the recipes when it is neither.
    """
    from sgt_train.recipes import recipe_names, recipe_path

    path = Path(spec)
    if path.exists():
        return path
    names = recipe_names()
    if spec in names:
        return recipe_path(spec)
    close = difflib.get_close_matches(spec, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"{spec}: no such file and no shipped recipe of that name; {hint}"
        f"recipes: {', '.join(names)}"
    )


def _describe(spec: str, path: Path, overrides: list[str]) -> str:
    what = f"recipe {spec} ({path})" if str(path) != spec else spec
    if overrides:
        what += " with " + " ".join(f"--set {o}" for o in overrides)
    return what


def load_cli_config(spec: str, overrides: list[str]) -> RunConfig:
    """The run config of a recipe name or YAML path with ``a.b=c`` overrides.

    ``ConfigError`` names the file once, then one line per invalid field; an unknown field gets
    the nearest known one suggested (``optimizer.learning_rate`` -> ``optimizer.lr``).
    """
    path = resolve_config(spec)
    try:
        return load_run_config(path, overrides)
    except ConfigError as exc:
        original = exc
    # Validate again to reach the structured errors (yaml and override errors re-raise as is).
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise original
        RunConfig.model_validate(apply_overrides(data, overrides))
    except ValidationError as verr:
        lines = [f"{_describe(spec, path, overrides)}: invalid run config"]
        for err in verr.errors():
            lines.append(f"  {_error_line(err)}")
        raise ConfigError("\n".join(lines)) from None
    except (ConfigError, yaml.YAMLError, OSError):
        pass
    raise original


def _error_line(err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc) or "<root>"
    if err["type"] != "extra_forbidden":
        return f"{where}: {err['msg']}"
    known, clean = _fields_at(RunConfig, loc[:-1])
    where = ".".join([*clean, loc[-1]])
    if not known:
        return f"{where}: no such field"
    suggestion = _nearest(loc[-1], known)
    parent = ".".join(clean)
    prefix = f"{parent}." if parent else ""
    hint = f"; did you mean {prefix}{suggestion}?" if suggestion else ""
    return f"{where}: no such field{hint} (fields here: {', '.join(sorted(known))})"


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic model classes an annotation can hold (through unions and Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_of(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for arg in typing.get_args(annotation) for m in _models_of(arg)]
    if origin in (tuple, list):
        return [m for arg in typing.get_args(annotation) for m in _models_of(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _fields_at(model: type[BaseModel], path: list[str]) -> tuple[set[str], list[str]]:
    """Field names of the model reached by ``path``, and the path as an override spells it
    (pydantic's union tags dropped, list indices kept)."""
    models = [model]
    clean: list[str] = []
    for part in path:
        if part.isdigit():
            clean.append(part)
            continue
        tagged = [c for m in models for c in _with_subclasses(m) if _kind_of(c) == part]
        if tagged:
            models = tagged
            continue
        clean.append(part)
        nxt: list[type[BaseModel]] = []
        for m in models:
            info = m.model_fields.get(part)
            if info is not None:
                nxt += _models_of(info.annotation)
        models = nxt
    return {name for m in models for name in m.model_fields}, clean


def _with_subclasses(model: type[BaseModel]) -> list[type[BaseModel]]:
    """A config class and every subclass (adapter configs are tagged subclasses of a base)."""
    found = [model]
    for sub in model.__subclasses__():
        found += _with_subclasses(sub)
    return found


def _kind_of(model: type[BaseModel]) -> str | None:
    """The ``kind`` tag of a tagged config class (its Literal, or its default)."""
    info = model.model_fields.get("kind")
    if info is None:
        return None
    args = typing.get_args(info.annotation)
    if len(args) == 1:
        return str(args[0])
    return info.default if isinstance(info.default, str) else None


def _nearest(name: str, known: set[str]) -> str | None:
    """The known field a mistyped or long-form ``name`` most likely means."""
    initials = "".join(w[0] for w in name.replace("-", "_").split("_") if w)
    for candidate in sorted(known):
        if len(initials) > 1 and candidate == initials:  # learning_rate -> lr
            return candidate
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    if close:
        return close[0]
    for candidate in sorted(known, key=len):  # batch_size -> micro_batch_size
        if len(name) >= 4 and (name in candidate or candidate in name):
            return candidate
    return None


@dataclass(frozen=True)
class SourceCount:
    """One mixture source as the data check found it."""

    name: str
    store: str
    task: str
    available: int
    per_epoch: int


@dataclass
class DataCheck:
    """Problems of a run config's data mixture, or its per-epoch sample counts."""

    problems: list[str] = field(default_factory=list)
    sources: list[SourceCount] = field(default_factory=list)
    steps_per_epoch: int = 0
    anchor: str = ""
    world_size: int = 1

    @property
    def ok(self) -> bool:
        """Whether the mixture can be trained."""
        return not self.problems


def _task_label(task: str, variant: str | None) -> str:
    return f"{task}/{variant}" if variant else task


def check_data(config: RunConfig, world_size: int = 1) -> DataCheck:
    """Open every store of ``config.data`` read-only and check the mixture can be drawn.

    Reports a store that does not exist, is not a sample store (or an unfinished conversion),
    holds no samples of a source's task, a mixture that cannot be laid out, and a source that
    gets no samples in an epoch; otherwise the per-epoch sample counts. Relative store paths
    are resolved from the current directory, as ``fit`` does. Reads manifests and sample
    indices only, never a sample (a source's ``where`` filter reads its candidates' metadata).
    """
    from sgt_data.datasets import NoMatchError, SourceDataset
    from sgt_data.errors import SgtDataError
    from sgt_data.mixing import MixtureSampler
    from sgt_data.remote import is_url
    from sgt_data.store import SampleStore

    check = DataCheck(world_size=world_size)
    readers: dict[str, Any] = {}
    unusable: dict[str, str] = {}
    for source in config.data.sources:
        if source.store in readers or source.store in unusable:
            continue
        users = [
            f"data.sources.{i}.store ({s.name!r})"
            for i, s in enumerate(config.data.sources)
            if s.store == source.store
        ]
        where = f"store {source.store} ({', '.join(users)})"
        root = Path(source.store)
        # object storage (a URL): no local checks, the store's manifest says what it is
        if not is_url(source.store) and not root.exists():
            unusable[source.store] = (
                f"{where} does not exist (relative paths start at {Path.cwd()}); write it with "
                "`sgt-data convert ...` or point the source at an existing store"
            )
        elif not is_url(source.store) and not root.is_dir():
            unusable[source.store] = f"{where} is a file, not a sample store folder"
        else:
            try:
                readers[source.store] = SampleStore.open(source.store)
            except SgtDataError as exc:
                unusable[source.store] = f"{where}: {exc}"
    check.problems.extend(unusable.values())
    datasets: list[Any] = []
    for source in config.data.sources:
        if source.store in unusable:
            continue
        where = f"source {source.name!r}: store {source.store}"
        reader = readers[source.store]
        try:
            dataset = SourceDataset(source, reader, seed=config.data.seed)
        except NoMatchError as exc:  # the task is there; the where filter matches none of it
            check.problems.append(f"data.sources.{source.name}.where: {exc}")
            continue
        except SgtDataError:
            variant = (
                "instance"
                if source.task.value == "segmentation" and source.task_variant is None
                else source.task_variant
            )
            held = ", ".join(
                f"{k.value}={v}" for k, v in sorted(reader.manifest.task_counts.items()) if v
            )
            check.problems.append(
                f"{where} holds no {_task_label(source.task.value, variant)} samples "
                f"(it holds: {held or 'nothing'}); point the source at a store with that "
                "task, or change its task"
            )
            continue
        datasets.append(dataset)
    if check.problems:
        return check
    try:
        sampler = MixtureSampler.from_config(
            config.data,
            [len(d) for d in datasets],
            micro_batch_size=config.micro_batch_size,
            world_size=world_size,
        )
    except SgtDataError as exc:
        check.problems.append(f"data mixture: {exc}")
        return check
    check.steps_per_epoch = sampler.steps_per_epoch
    check.anchor = sampler.names[sampler.anchor]
    for source, dataset, quota in zip(config.data.sources, datasets, sampler.quota, strict=True):
        check.sources.append(
            SourceCount(
                name=source.name,
                store=source.store,
                task=_task_label(source.task.value, dataset.variant),
                available=len(dataset),
                per_epoch=quota,
            )
        )
        if quota == 0:
            anchor = check.anchor
            check.problems.append(
                f"source {source.name!r} gets 0 samples per epoch: an epoch is one pass over "
                f"the anchor source {anchor!r} ({len(datasets[sampler.anchor])} samples, "
                f"{sampler.steps_per_epoch} step(s)), which ends before the pattern reaches "
                f"{source.name!r}; give {anchor!r} more samples, a smaller micro_batch_size, "
                "or put the source earlier in data.pattern"
            )
    return check


def format_counts(config: RunConfig, check: DataCheck) -> list[str]:
    """Lines describing the per-epoch sample counts of a mixture that passed :func:`check_data`."""
    procs = "process" if check.world_size == 1 else "processes"
    steps = check.steps_per_epoch
    budget = getattr(config.model, "expected_num_tokens", None)
    if isinstance(budget, int):
        # packed models (BAGEL) fill each micro-batch to a token budget: how many mixture draws
        # a micro-batch takes depends on the samples' sizes, known only when they are read
        lines = [
            f"data: {steps} draw(s) of {config.micro_batch_size} sample(s) per epoch on "
            f"{check.world_size} {procs}; micro-batches are packed to {budget} tokens "
            f"(model.expected_num_tokens), so the optimizer steps per epoch depend on the "
            f"samples' sizes (an epoch is one pass over {check.anchor!r})"
        ]
    else:
        epochs = config.steps * config.gradient_accumulation / max(steps, 1)
        lines = [
            f"data: {steps} step(s) per epoch on {check.world_size} {procs} at "
            f"micro_batch_size {config.micro_batch_size}; {config.steps} optimizer steps = "
            f"{epochs:.2f} epochs (an epoch is one pass over {check.anchor!r})"
        ]
    width = max(len(s.name) for s in check.sources)
    for s in check.sources:
        lines.append(
            f"  {s.name:<{width}}  {s.task:<24} {s.per_epoch:>7} per epoch of {s.available} "
            f"available  ({s.store})"
        )
    return lines
