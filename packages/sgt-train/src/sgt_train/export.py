"""Export a run's trained weights (EMA or raw) in the adapter's ``from_pretrained`` format."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sgt_train import ds_config
from sgt_train.checkpoint import DS_TAG, latest_checkpoint, load_ema_state
from sgt_train.config import RunConfig, load_run_config

__all__ = ["ExportError", "export_run"]

_log = logging.getLogger(__name__)


class ExportError(ValueError):
    """A run folder that cannot be exported; the message names the folder or file and why."""


def _default_builder(config: RunConfig) -> torch.nn.Module:
    from sgt_models import registry  # type: ignore[attr-defined,unused-ignore]

    if config.init_from:
        model: torch.nn.Module = registry.load_adapter(config.init_from)
    else:
        model = registry.build_adapter(config.model)
    return model


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    ema: bool | None = None,
    checkpoint: str | Path | None = None,
    build_model: Callable[[RunConfig], torch.nn.Module] | None = None,
) -> Path:
    """Write the newest (or the given) checkpoint of ``run_dir`` to ``out`` via ``save_pretrained``.

    ``ema`` takes the EMA weights for the trainable parameters (frozen ones come from the
    checkpoint); ``False`` the raw fp32 weights; ``None`` (default) the EMA weights when the run
    kept an average (``ema.decay > 0``), else the raw ones. Runs in one process without a process group.
    """
    from sgt_train.loop import RUN_CONFIG_FILE

    folder = Path(run_dir)
    config_file = folder / RUN_CONFIG_FILE
    if not config_file.is_file():
        raise ExportError(f"{folder}: not a run folder (no {RUN_CONFIG_FILE})")
    config = load_run_config(config_file)
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(folder / "checkpoints")
    if ckpt is None or not (ckpt / DS_TAG).is_dir():
        raise ExportError(f"{folder}: no committed checkpoint under {folder / 'checkpoints'}")
    state: dict[str, Any] = ds_config.consolidated_state_dict(ckpt, DS_TAG, config.zero.stage)
    if ema is None:  # the EMA weights when the run kept an average, else the trained ones
        ema = config.ema.decay > 0
    if ema:
        ema_file = ckpt / "ema.pt"
        ema_state = load_ema_state(ckpt)
        if ema_state is None:
            raise ExportError(
                f"{ckpt}: no ema.pt (the run had ema.decay=0); export the raw weights instead"
            )
        shadow = ema_state["shadow"]
        unknown = sorted(set(shadow) - set(state))
        if unknown:
            raise ExportError(f"{ema_file}: EMA names not in the model: {unknown[:5]}")
        state.update(shadow)
    model = (build_model or _default_builder)(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(
            f"{ckpt}: checkpoint does not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    merge = getattr(model, "merge_lora", None)
    if callable(merge):
        # LoRA runs export merged weights in the family's official layout, which upstream
        # tools read (a model without LoRA adapters returns itself unchanged)
        merged = merge()
        if isinstance(merged, torch.nn.Module):
            model = merged
    target = Path(out)
    model.save_pretrained(target)  # type: ignore[operator]
    _log.info("exported %s weights of %s to %s", "EMA" if ema else "raw", ckpt, target)
    return target
