"""The training loop: task-routed micro-batches -> DeepSpeed engine -> EMA, metrics, checkpoints.

Readable top to bottom in :func:`fit`. One optimizer step consumes ``gradient_accumulation``
micro-batches per rank; each micro-batch comes from the mixer (one task per micro-batch in the
recipe's interleave mode), is collated by the adapter and trained through the engine, which
accumulates, clips and steps. Loss parts are logged per task.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
import yaml

from sgt_data import TaskKind
from sgt_train import ds_config
from sgt_train.checkpoint import CheckpointManager, CheckpointState
from sgt_train.config import RunConfig
from sgt_train.ema import EMA
from sgt_train.launch import set_single_process_env
from sgt_train.schedule import make_scheduler

__all__ = [
    "RUN_CONFIG_FILE",
    "FitResult",
    "Hooks",
    "MicroBatchSource",
    "StepMetrics",
    "fit",
    "run_dir_of",
]

_log = logging.getLogger(__name__)

#: The resolved run config, written into the run folder at the start of ``fit``.
RUN_CONFIG_FILE = "run_config.yaml"
_PARTS = ("ce", "mse")
_TASKS = tuple(t.value for t in TaskKind)


@runtime_checkable
class MicroBatchSource(Protocol):
    """An endless, resumable stream of this rank's micro-batches.

    Items are lists of samples (the loop collates them with the adapter) or batches the source
    already collated. ``state_dict()`` describes the position after the last item yielded.
    """

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class StepMetrics:
    """What one optimizer step reports (averaged over its micro-batches and all ranks)."""

    step: int
    total_steps: int
    loss: float
    parts: dict[str, float]
    per_task: dict[str, dict[str, float]]
    lr: float
    grad_norm: float | None
    samples: int
    samples_per_s: float
    elapsed_s: float

    def to_record(self) -> dict[str, Any]:
        """A flat JSON-ready row."""
        row: dict[str, Any] = {
            "step": self.step,
            "loss": self.loss,
            **self.parts,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "samples": self.samples,
            "samples_per_s": self.samples_per_s,
            "elapsed_s": self.elapsed_s,
        }
        for task, parts in self.per_task.items():
            for part, value in parts.items():
                row[f"{task}/{part}"] = value
        return row


@dataclass
class Hooks:
    """Optional callbacks of a run (the CLI draws its progress bar from ``on_step``)."""

    on_step: list[Callable[[StepMetrics], None]] = field(default_factory=list)
    on_checkpoint_staged: Callable[[Path], None] | None = None
    on_start: list[Callable[[int, int], None]] = field(default_factory=list)


@dataclass(frozen=True)
class FitResult:
    """How a run ended."""

    run_dir: Path
    model: torch.nn.Module
    start_step: int
    final_step: int
    losses: list[float]
    preempted: bool
    last_checkpoint: Path | None


def run_dir_of(config: RunConfig) -> Path:
    """The folder of a run: ``output_dir/name``."""
    return Path(config.output_dir) / config.name


class _Preemption:
    """Turns SIGTERM into a flag checked after every optimizer step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        _log.warning("received signal %d: checkpointing after this step", signum)
        self.requested = True

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002  (the global RNG user code may draw from)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def _build_model(config: RunConfig) -> torch.nn.Module:
    from sgt_models import registry  # type: ignore[attr-defined,unused-ignore]

    if config.init_from:
        model: torch.nn.Module = registry.load_adapter(config.init_from)
    else:
        model = registry.build_adapter(config.model)
    return model


def _build_source(
    config: RunConfig, rank: int, world_size: int, model: torch.nn.Module
) -> MicroBatchSource:
    from sgt_train.data import build_source

    # A packed model (BAGEL) fills each micro-batch to a token budget; the packs are collated
    # in this process, since their sizes are known only after the mixture's draws.
    estimate = getattr(model, "estimate_num_tokens", None)
    expected = getattr(config.model, "expected_num_tokens", None)
    maximum = getattr(config.model, "max_num_tokens", None)
    if callable(estimate) and isinstance(expected, int) and isinstance(maximum, int):
        from sgt_train.packing import TokenBudgetStream

        inner = build_source(config, rank, world_size, collate=None)
        return TokenBudgetStream(inner, estimate, expected, maximum)
    return build_source(config, rank, world_size, collate=getattr(model, "collate", None))


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters after its freeze policy")
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def _clear_zero3_gradient_partitions(engine: Any) -> None:
    """Zero the gradient partitions of a ZeRO-3 optimizer after its step.

    DeepSpeed 0.19.8's stage-3 optimizer keeps every parameter's reduced gradient in one flat
    buffer (``grad_partitions_flat_buffer``) that is zero only when it is allocated: its
    ``zero_grad`` drops ``param.grad`` but never clears the buffer. A parameter that a step's
    micro-batches do not use (a task-routed batch that skips a head) therefore keeps the
    gradient of an earlier step, which the next step norms, clips and applies again, and one
    first reached after micro-batch 0 adds to it. A fresh engine (a resumed run) starts from
    zeros, so resumed and uninterrupted runs diverged. Zeroing here gives every step the
    ZeRO-1/2 semantics (an unused parameter has a zero gradient) and makes resume exact.
    """
    optimizer = engine.optimizer
    buffer = getattr(optimizer, "grad_partitions_flat_buffer", None)
    if not isinstance(buffer, torch.Tensor):
        raise RuntimeError(
            f"{type(optimizer).__name__} has no grad_partitions_flat_buffer: this DeepSpeed "
            "version's ZeRO-3 differs from the one sgt-train supports"
        )
    buffer.zero_()
    # With CPU offload the fp32 partitions keep their own gradient buffers between steps and
    # are refreshed only for the parameters used in a step.
    for flat in getattr(optimizer, "fp32_partitioned_groups_flat", ()):
        if flat.grad is not None:
            flat.grad.zero_()


class _GradNorm:
    """The pre-clipping global L2 norm of each optimizer step's gradients.

    DeepSpeed's ZeRO and bf16/fp16 optimizers compute it while stepping. The plain engine
    (ZeRO-0, fp32, a torch optimizer) computes it only inside its gradient clipping and drops
    it: there this class clips in its place with ``torch.nn.utils.clip_grad_norm_`` and keeps
    the norm (one pass, as before), and without clipping computes it before the step.
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._own = not (
            engine.zero_optimization() or engine.bfloat16_enabled() or engine.fp16_enabled()
        )
        self._params = [p for p in engine.module.parameters() if p.requires_grad]
        self._max_norm = float(engine.gradient_clipping())
        self._norm: torch.Tensor | None = None
        if self._own and self._max_norm > 0:
            # the engine calls self.clip_fp32_gradients() right before the optimizer step
            engine.clip_fp32_gradients = self._clip

    def _clip(self) -> None:
        self._norm = torch.nn.utils.clip_grad_norm_(self._params, self._max_norm).detach()

    def before_step(self) -> None:
        """Call between the last backward of a step and its ``engine.step()``."""
        self._norm = None
        if self._own and self._max_norm <= 0:
            grads = [p.grad for p in self._params if p.grad is not None]
            self._norm = torch.nn.utils.get_total_norm(grads).detach() if grads else torch.zeros(())

    def after_step(self) -> float | torch.Tensor | None:
        """The norm of the step just taken (None only if DeepSpeed was told not to compute it);
        a tensor is left on its device until the loop logs."""
        if self._own:
            return self._norm
        value = self._engine.get_global_grad_norm()
        if value is None or isinstance(value, torch.Tensor):
            return value
        return float(value)


class _StepStats:
    """Sums over the micro-batches of one step, kept as one flat tensor on the engine's device.

    Adding a micro-batch launches device work only; nothing is read back to the host until
    :meth:`read`, which the loop calls when it logs (reading every step would make the host
    wait for the device once per step, which at small micro-batches costs much throughput).
    """

    def __init__(self, device: torch.device) -> None:
        self.values = torch.zeros(
            3 + 2 * len(_PARTS) + 2 * len(_TASKS) * len(_PARTS),
            dtype=torch.float64,
            device=device,
        )
        self.counts = torch.zeros_like(self.values, device="cpu")

    @staticmethod
    def _value(value: float | torch.Tensor) -> float | torch.Tensor:
        return value.detach().to(torch.float64) if isinstance(value, torch.Tensor) else value

    def add(
        self,
        total: torch.Tensor,
        parts: Mapping[str, torch.Tensor | float],
        per_task: Mapping[str, Mapping[str, torch.Tensor | float]],
        samples: int,
    ) -> None:
        v, c = self.values, self.counts
        v[0] += self._value(total)
        c[1] += 1
        c[2] += samples
        for i, part in enumerate(_PARTS):
            if part in parts:
                v[3 + 2 * i] += self._value(parts[part])
                c[4 + 2 * i] += 1
        base = 3 + 2 * len(_PARTS)
        for ti, task in enumerate(_TASKS):
            for pi, part in enumerate(_PARTS):
                value = per_task.get(task, {}).get(part)
                if value is not None:
                    j = base + 2 * (ti * len(_PARTS) + pi)
                    v[j] += self._value(value)
                    c[j + 1] += 1

    def reduce(self, world_size: int) -> None:
        """Sum over ranks, on the device (NCCL reduces only CUDA tensors); no host read."""
        self.values += self.counts.to(self.values.device)
        if world_size > 1:
            dist.all_reduce(self.values)

    def read(self) -> tuple[float, dict[str, float], dict[str, dict[str, float]], int]:
        """The step's means (reads the device tensor back to the host)."""
        v = self.values.cpu()
        loss = float(v[0] / v[1])
        parts = {
            p: float(v[3 + 2 * i] / v[4 + 2 * i]) for i, p in enumerate(_PARTS) if v[4 + 2 * i] > 0
        }
        base = 3 + 2 * len(_PARTS)
        per_task: dict[str, dict[str, float]] = {}
        for ti, task in enumerate(_TASKS):
            for pi, part in enumerate(_PARTS):
                j = base + 2 * (ti * len(_PARTS) + pi)
                if v[j + 1] > 0:
                    per_task.setdefault(task, {})[part] = float(v[j] / v[j + 1])
        return loss, parts, per_task, int(v[2])


@dataclass
class _PendingStep:
    """A finished step whose metrics are still on the device."""

    step: int
    stats: _StepStats
    lr: float
    grad_norm: float | torch.Tensor | None
    done_at: float


class _MetricSinks:
    """Rank-0 JSONL and TensorBoard writers."""

    def __init__(self, run_dir: Path, config: RunConfig, start_step: int, active: bool) -> None:
        self.active = active
        self.jsonl = run_dir / "metrics.jsonl"
        self._tb: Any = None
        if not active:
            return
        _truncate_jsonl(self.jsonl, start_step)
        if config.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # tensorboard is a dependency

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def write(self, metrics: StepMetrics) -> None:
        if not self.active:
            return
        row = metrics.to_record()
        with self.jsonl.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, float) and math.isfinite(value):
                    self._tb.add_scalar(key if "/" in key else f"train/{key}", value, metrics.step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _truncate_jsonl(path: Path, keep_through_step: int) -> None:
    """Drop rows logged after ``keep_through_step`` (a killed run logged past its checkpoint)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= keep_through_step
    ]
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def fit(
    config: RunConfig,
    *,
    build_model: Callable[[RunConfig], torch.nn.Module] | None = None,
    source: MicroBatchSource | None = None,
    hooks: Hooks | None = None,
    resume: bool = True,
) -> FitResult:
    """Train ``config`` (resuming from its newest checkpoint when ``resume``); collective.

    ``build_model`` (called after seeding, returns an adapter) and ``source`` default to the
    ones the config describes.
    """
    hooks = hooks or Hooks()
    set_single_process_env()
    ds_config.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    run_dir = run_dir_of(config)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_CONFIG_FILE).write_text(
            yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
        )

    # Same seed on every rank for the weights; the engine broadcasts rank 0's anyway.
    _seed_all(config.seed)
    model = (build_model or _build_model)(config)
    apply_freeze = getattr(model, "apply_freeze_policy", None)
    if callable(apply_freeze):
        apply_freeze()
    groups = _parameter_groups(model, config.optimizer.weight_decay)
    engine = ds_config.initialize_engine(
        model,
        groups,
        ds_config.build_ds_config(config, world),
        lambda opt: make_scheduler(opt, config.optimizer.lr, config.schedule, config.steps),
    )
    module: torch.nn.Module = engine.module
    zero3 = config.zero.stage == 3
    grad_norms = _GradNorm(engine)
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    ema: EMA | None = None
    if config.ema.decay > 0:
        with ds_config.gathered_parameters([p for _, p in trainable], zero3):
            ema = EMA(trainable, config.ema.decay)

    if source is None:
        source = _build_source(config, rank, world, model)
    checkpoints = CheckpointManager(
        run_dir / "checkpoints",
        config.checkpoint.keep_last,
        rank,
        world,
        barrier=dist.barrier,
        on_staged=hooks.on_checkpoint_staged,
    )
    checkpoints.remove_leftovers()

    # Fresh runs give each rank its own noise stream; resumed runs restore it exactly.
    step, samples_seen = 0, 0
    _seed_all(config.seed + 1_000_003 * (rank + 1))
    committed = checkpoints.committed() if resume else []
    if committed:
        restored: CheckpointState = checkpoints.load(committed[-1], engine)
        step = restored.step
        samples_seen = int(restored.trainer_state.get("samples_seen", 0))
        source.load_state_dict(restored.rank_state["source"])
        _set_rng_state(restored.rank_state["rng"])
        if ema is not None:
            if restored.ema_state is None:
                raise ValueError(
                    f"{restored.path}: EMA is enabled but the checkpoint has no ema.pt"
                )
            ema.load_state_dict(restored.ema_state)
        _log.info("resumed from %s at step %d", restored.path, step)
    start_step = step
    for on_start in hooks.on_start:
        on_start(start_step, config.steps)

    sinks = _MetricSinks(run_dir, config, start_step, active=rank == 0)
    device = engine.device
    dtype = torch.bfloat16 if config.precision == "bf16" else None
    batches = iter(source)
    losses: list[float] = []
    last_checkpoint: Path | None = committed[-1] if committed else None
    preempted = False
    t0 = window_t = time.perf_counter()
    window_samples = 0

    def save() -> Path:
        ema_state = ema.state_dict() if ema is not None and rank == 0 else None
        return checkpoints.save(
            step,
            engine,
            trainer_state={"samples_seen": samples_seen, "run_name": config.name},
            rank_state={"rng": _rng_state(), "source": source.state_dict()},
            ema_state=ema_state,
        )

    pending: list[_PendingStep] = []

    def flush() -> None:
        """Read the pending steps' metrics back to the host; log them and call the hooks."""
        nonlocal window_t, window_samples, samples_seen
        for item in pending:
            loss, parts_mean, per_task_mean, step_samples = item.stats.read()
            samples_seen += step_samples
            window_samples += step_samples
            losses.append(loss)
            norm = item.grad_norm
            metrics = StepMetrics(
                step=item.step,
                total_steps=config.steps,
                loss=loss,
                parts=parts_mean,
                per_task=per_task_mean,
                lr=item.lr,
                grad_norm=float(norm) if norm is not None else None,
                samples=samples_seen,
                samples_per_s=window_samples / max(item.done_at - window_t, 1e-9),
                elapsed_s=item.done_at - t0,
            )
            if item.step % config.logging.every == 0 or item.step == config.steps:
                sinks.write(metrics)
                window_t, window_samples = item.done_at, 0
            for callback in hooks.on_step:
                callback(metrics)
        pending.clear()

    try:
        with _Preemption() as preemption:
            while step < config.steps:
                stats = _StepStats(device)
                lr = float(engine.get_lr()[0])
                for micro in range(config.gradient_accumulation):
                    item = next(batches)
                    if isinstance(item, list | tuple):  # samples; else the loader collated
                        item = model.collate(item)  # type: ignore[operator]
                    batch = item.to(device, dtype)
                    out = engine(batch, config.loss_weights)
                    engine.backward(out.total)
                    if micro == config.gradient_accumulation - 1:
                        grad_norms.before_step()
                    engine.step()
                    parts = {  # a part normalised by zero tokens was absent from the batch
                        k: v for k, v in out.parts.items() if out.token_counts.get(k, 1) > 0
                    }
                    per_task = {
                        t: {p: v for p, v in d.items() if p in parts}
                        for t, d in out.per_task.items()
                    }
                    tasks = set(batch.tasks)
                    if not per_task and len(tasks) == 1:
                        per_task = {tasks.pop(): parts}
                    stats.add(out.total, parts, per_task, batch.num_samples)
                step += 1
                grad_norm = grad_norms.after_step()
                if zero3:
                    _clear_zero3_gradient_partitions(engine)
                if ema is not None:
                    with ds_config.gathered_parameters([p for _, p in trainable], zero3):
                        ema.update(trainable)
                stats.reduce(world)
                pending.append(_PendingStep(step, stats, lr, grad_norm, time.perf_counter()))

                # The host reads metrics (and ranks agree on a preemption) only at logging
                # steps, checkpoints and the end, so that it never waits on the device between.
                due = step % config.checkpoint.every == 0 and step >= config.checkpoint.save_after
                sync = step % config.logging.every == 0 or step == config.steps or due
                if sync:
                    flush()
                stop = preemption.requested
                if world > 1:
                    stop = False
                    if sync:
                        flag = torch.tensor([1.0 if preemption.requested else 0.0], device=device)
                        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                        stop = bool(flag.item())
                if stop:
                    flush()
                if stop or due or step == config.steps:
                    last_checkpoint = save()
                if stop:
                    preempted = True
                    _log.warning(
                        "preempted: checkpoint %s written at step %d", last_checkpoint, step
                    )
                    break
    finally:
        sinks.close()
    engine.destroy()
    return FitResult(
        run_dir=run_dir,
        model=model,
        start_step=start_step,
        final_step=step,
        losses=losses,
        preempted=preempted,
        last_checkpoint=last_checkpoint,
    )
