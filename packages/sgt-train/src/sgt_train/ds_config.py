"""Everything DeepSpeed: the JSON derived from a ``RunConfig``, process-group and engine set-up,
ZeRO parameter gathering and fp32 consolidation. The only module of sgt-train that imports
``deepspeed`` (lazily, so reading configs stays cheap).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgt_train.config import RunConfig

if TYPE_CHECKING:
    import torch

__all__ = [
    "Zero3LayoutError",
    "build_ds_config",
    "consolidated_state_dict",
    "device_name",
    "gathered_parameters",
    "init_distributed",
    "initialize_engine",
    "merge_raw",
]

_log = logging.getLogger(__name__)

#: Never let DeepSpeed print its own step log; the trainer logs.
_QUIET_STEPS = 2**31 - 1


class Zero3LayoutError(ValueError):
    """A model that ZeRO-3 cannot train as built; the message names the parameters."""


def merge_raw(base: Mapping[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``raw`` DeepSpeed keys over ``base``: mappings merge, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in raw.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_raw(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_ds_config(config: RunConfig, world_size: int = 1) -> dict[str, Any]:
    """The DeepSpeed JSON of a run, with ``config.deepspeed`` merged over it.

    The optimizer is AdamW; without CPU offload it is ``torch.optim.AdamW`` (``torch_adam``), so
    no op is JIT-compiled. CPU offload needs DeepSpeed's compiled ``cpu_adam``.
    """
    opt = config.optimizer
    zero: dict[str, Any] = {"stage": config.zero.stage}
    if config.zero.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if config.zero.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    zero.update(_single_rank_zero_keys(config, world_size))
    optimizer_params: dict[str, Any] = {
        "lr": opt.lr,
        "betas": list(opt.betas),
        "eps": opt.eps,
        "weight_decay": opt.weight_decay,
    }
    if not config.zero.offload_optimizer:
        optimizer_params["torch_adam"] = True
    derived: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "train_batch_size": config.micro_batch_size * config.gradient_accumulation * world_size,
        "gradient_clipping": config.grad_clip if config.grad_clip is not None else 0.0,
        "bf16": {"enabled": config.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "steps_per_print": _QUIET_STEPS,
        "wall_clock_breakdown": False,
    }
    return merge_raw(derived, config.deepspeed)


def _single_rank_zero_keys(config: RunConfig, world_size: int) -> dict[str, Any]:
    """ZeRO-1/2 keys that drop work which is pointless when one rank holds every partition.

    DeepSpeed's defaults suit many ranks: ``contiguous_gradients`` copies every gradient into a
    fresh ``reduce_bucket_size`` staging bucket (5e8 elements, reallocated each micro-batch) and
    then again into a per-partition buffer, so that reduce-scatters read contiguous memory. With
    one rank nothing is communicated, and the gradients can stay in ``param.grad`` (the path
    ``initialize_engine`` then short-cuts, see ``_skip_single_rank_reduction``); ``overlap_comm``
    has nothing to overlap. Both choices give bit-identical updates (a reduction over one rank
    is an identity). Several ranks keep DeepSpeed's defaults, so their numerics do not change.
    CPU offload forces contiguous gradients in DeepSpeed, so it is left alone.
    """
    single = world_size == 1 and config.zero.stage in (1, 2)
    if not single or config.zero.offload_optimizer or config.zero.offload_params:
        return {}
    return {"contiguous_gradients": False, "overlap_comm": False}


def _skip_single_rank_reduction(engine: Any) -> bool:
    """Make a one-rank ZeRO-1/2 engine skip gradient reduction, an identity on one rank.

    With ``contiguous_gradients`` off, DeepSpeed 0.19 reduces gradients in
    ``buffered_reduce_fallback``: flatten into a new buffer, divide by the world size (1),
    all-reduce over one rank, copy back; three passes over the gradients and a gloo round trip
    that change no bit. Under ZeRO-2 a Python hook per parameter also files every gradient into
    that reduction bucket at every micro-batch (and walks the autograd graph to count them); with
    one rank the gradients can stay in ``param.grad``, where the backward epilogue that
    ``engine.backward`` runs reads and accumulates them exactly as before, so the hooks are
    removed. (A bare ``loss.backward()`` would then skip that epilogue; the trainer always calls
    ``engine.backward``.) Only installed where those are the paths DeepSpeed takes: no offload,
    no separate fp32 accumulation buffer for 16-bit gradients. Relies on deepspeed 0.19
    internals (the dependency is capped below 0.20). Returns whether it applied.
    """
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    optimizer = engine.optimizer
    if (
        engine.dp_world_size != 1
        or not isinstance(optimizer, DeepSpeedZeroOptimizer)
        or optimizer.contiguous_gradients
        or optimizer.overlap_comm
        or optimizer.cpu_offload
        or optimizer.use_grad_accum_attribute
        or any(
            optimizer._use_compact_grad_partition_buffer(i)
            for i in range(len(optimizer.bit16_groups))
        )
        or not callable(getattr(optimizer, "buffered_reduce_fallback", None))
        or not isinstance(getattr(optimizer, "_grad_acc_hooks", None), list)
    ):
        return False

    def _identity_reduction(*args: Any, **kwargs: Any) -> None:
        return None

    optimizer.buffered_reduce_fallback = _identity_reduction
    if optimizer.partition_gradients:
        for handle in optimizer._grad_acc_hooks:
            handle.remove()
        optimizer._grad_acc_hooks.clear()
    return True


def _skip_shm_op() -> None:
    # The shm all-reduce op serves tensor-parallel inference only; without this DeepSpeed
    # JIT-compiles it (25-90 s) on every CPU start. Relies on a module global of deepspeed 0.19.
    import deepspeed.ops as ds_ops

    ds_ops.__compatible_ops__ = {"deepspeed_shm_comm": False}


def init_distributed() -> None:
    """Join (or create) the process group from the launcher's environment variables."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    _skip_shm_op()
    if dist.is_available() and dist.is_initialized():
        return
    missing = [
        v
        for v in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        if v not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f"launcher variables {missing} are not set; run under torchrun/deepspeed or call "
            "sgt_train.launch.set_single_process_env() first"
        )
    backend = get_accelerator().communication_backend_name()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    _log.info(
        "process group: backend %s, rank %d of %d", backend, dist.get_rank(), dist.get_world_size()
    )


def device_name() -> str:
    """The device this rank trains on (``cpu`` or ``cuda:N``)."""
    from deepspeed.accelerator import get_accelerator

    name: str = get_accelerator().device_name(int(os.environ.get("LOCAL_RANK", "0")))
    return name


def initialize_engine(
    model: torch.nn.Module,
    parameter_groups: Sequence[dict[str, Any]],
    ds_config: dict[str, Any],
    scheduler_factory: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> Any:
    """Wrap ``model`` in a DeepSpeed engine (optimizer and LR scheduler included)."""
    import deepspeed

    if ds_config.get("zero_optimization", {}).get("stage", 0) == 3:
        _check_zero3_layout(model)
    init_distributed()
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=list(parameter_groups),
        lr_scheduler=scheduler_factory,
        config=ds_config,
        dist_init_required=False,
    )
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    if offload.get("device", "none") != "none" and engine.zero_optimization_stage() in (1, 2):
        _give_every_parameter_a_gradient(model)
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1:
        # Without ZeRO, DeepSpeed all-reduces every gradient at each accumulation boundary even
        # in a one-process group: an identity that costs ~10 % of a tiny model's step on a CPU.
        engine.enable_backward_allreduce = False
    elif engine.zero_optimization_stage() in (1, 2) and _skip_single_rank_reduction(engine):
        _log.debug("one rank: ZeRO gradient all-reduce skipped (an identity)")
    return engine


def _check_zero3_layout(model: torch.nn.Module) -> None:
    # ZeRO-3 gathers a module's parameters around its forward and, for backward, from hooks on
    # the tensors that forward returns. An adapter's forward returns a LossOutput dataclass,
    # whose tensors DeepSpeed 0.19 cannot see ("unknown inputs or outputs type"), so parameters
    # held by the adapter module itself would stay partitioned (size 0) in backward.
    own = [name for name, _ in model.named_parameters(recurse=False)]
    if own:
        raise Zero3LayoutError(
            f"ZeRO-3 cannot train {type(model).__name__}: its parameters {own} belong to the "
            "top-level module, whose LossOutput hides them from DeepSpeed's backward hooks; "
            "move them into a submodule"
        )


def _give_every_parameter_a_gradient(model: torch.nn.Module) -> None:
    # DeepSpeed 0.19.8's ZeRO-1/2 CPU offload moves gradients to its CPU buffers from per-parameter
    # hooks, so a parameter without a gradient in a micro-batch (a task-routed batch that skips a
    # head) goes wrong: its slot in the fp32 gradient buffer keeps an earlier step's value, which
    # is applied again, and with gradient accumulation a gradient from a micro-batch before the
    # last is dropped. Adding 0 x one element of every trainable parameter to the loss makes
    # every hook fire with the exact gradient (zeros where unused): the loss is unchanged and the
    # updates equal ZeRO-1/2 without offload up to cpu_adam's rounding.
    import torch

    params = [p for p in model.parameters() if p.requires_grad]

    def touch_all(module: torch.nn.Module, args: Any, output: Any) -> Any:
        total = getattr(output, "total", None)
        if isinstance(total, torch.Tensor) and total.requires_grad and params:
            anchor = torch.stack([p.reshape(-1)[0].to(total.dtype) for p in params]).sum()
            output.total = total + anchor * 0.0
        return output

    model.register_forward_hook(touch_all)


@contextlib.contextmanager
def gathered_parameters(params: Sequence[torch.nn.Parameter], enabled: bool) -> Iterator[None]:
    """Full (un-partitioned) parameters inside the block under ZeRO-3; a no-op otherwise."""
    if not enabled:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
        yield


def consolidated_state_dict(checkpoint_dir: Path, tag: str, zero_stage: int) -> dict[str, Any]:
    """The full fp32 model state dict stored in a DeepSpeed checkpoint, without a process group.

    ZeRO 1-3 rebuild fp32 weights from the optimizer shards; stage 0 reads the module states.
    """
    import torch

    if zero_stage == 0:
        path = checkpoint_dir / tag / "mp_rank_00_model_states.pt"
        from sgt_train.checkpoint import load_module_states

        state = load_module_states(path)
        module: dict[str, Any] = state["module"]
        return {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    result: dict[str, Any] = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    return result
