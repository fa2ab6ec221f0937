"""Atomic, rotating checkpoints of a DeepSpeed run.

A checkpoint is written into ``checkpoints/.staging-step_N`` by every rank (the DeepSpeed engine
states, one ``rank_R.json`` per rank with RNG and sampler states, and on rank 0 ``ema.pt`` and
``trainer_state.json``), then rank 0 renames the folder to ``checkpoints/step_N``. The rename
is the commit: a process killed at any moment leaves every earlier ``step_*`` folder whole, and
leftovers (``.staging-*``, ``.trash-*``) are removed at the next start. Old checkpoints are
renamed to ``.trash-*`` before they are deleted, so a half-deleted one never looks valid.

SGT's own files are read without running code from them: ``rank_R.json`` is JSON (tensors and
arrays inside it base64-encoded); ``ema.pt`` (tensors only) and the ``rank_R.pt`` files of
checkpoints written by sgt-train 0.3 and earlier are read with ``torch.load(weights_only=True)``,
which refuses any pickled object but tensors, plain containers and (for the old files) numpy
arrays; a file that holds anything else raises :class:`UnsafeCheckpointError` naming it. DeepSpeed's own files
under ``ds/`` are loaded by DeepSpeed, which unpickles them (see the README).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_SCHEMA_VERSION",
    "DS_TAG",
    "CheckpointManager",
    "CheckpointState",
    "UnsafeCheckpointError",
    "decode_state",
    "encode_state",
    "latest_checkpoint",
    "load_ema_state",
    "load_module_states",
    "load_rank_state",
]

_log = logging.getLogger(__name__)

CHECKPOINT_SCHEMA_VERSION = 1
#: The DeepSpeed tag (sub-folder) inside every checkpoint folder.
DS_TAG = "ds"
_COMMITTED = re.compile(r"^step_(\d{8,})$")
_STATE_FILE = "trainer_state.json"
_EMA_FILE = "ema.pt"


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that would run code (or is not what SGT writes) when loaded."""


# -- pickle-free rank states -----------------------------------------------------------------


def encode_state(value: Any, where: str = "state") -> Any:
    """A JSON-ready copy of a nested state: tensors, numpy arrays and tuples become tagged dicts.

    Accepts dicts with string keys, lists, tuples, str, int, float, bool, None, numpy arrays and
    scalars, and CPU-copyable tensors; anything else raises ``TypeError`` naming its path.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return {
            "$tensor": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "data": base64.b64encode(t.view(torch.uint8).numpy().tobytes()).decode("ascii")
            if t.numel()
            else "",
        }
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        if a.dtype.hasobject:
            raise TypeError(f"{where}: numpy arrays of Python objects cannot be checkpointed")
        return {
            "$ndarray": a.dtype.str,
            "shape": list(a.shape),
            "data": base64.b64encode(a.tobytes()).decode("ascii"),
        }
    if isinstance(value, tuple):
        return {"$tuple": [encode_state(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_state(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            if key.startswith("$"):
                raise TypeError(f"{where}: key {key!r} starts with '$' (reserved)")
            out[key] = encode_state(item, f"{where}.{key}")
        return out
    raise TypeError(
        f"{where}: a {type(value).__name__} cannot be checkpointed (use tensors, numpy arrays, "
        "numbers, strings, lists, tuples and dicts with string keys)"
    )


def decode_state(value: Any) -> Any:
    """The inverse of :func:`encode_state`."""
    if isinstance(value, list):
        return [decode_state(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        dtype = getattr(torch, value["$tensor"])
        raw = bytearray(base64.b64decode(value["data"]))
        flat = (
            torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        )
        return flat.view(dtype).reshape(value["shape"]).clone()
    if "$ndarray" in value:
        data = base64.b64decode(value["data"])
        return np.frombuffer(data, dtype=np.dtype(value["$ndarray"])).reshape(value["shape"]).copy()
    if "$tuple" in value:
        return tuple(decode_state(v) for v in value["$tuple"])
    return {k: decode_state(v) for k, v in value.items()}


def _numpy_globals() -> list[Any]:
    """What a pickled numpy array of numbers references (allowed for the rank files of sgt-train 0.3 and earlier)."""
    multiarray = getattr(np, "_core", None) or np.core
    found: list[Any] = [multiarray.multiarray._reconstruct, np.ndarray, np.dtype]
    found += [type(np.dtype(c)) for c in ("u1", "u4", "i4", "i8", "f4", "f8", "b1")]
    return found


def _safe_load(path: Path, extra_globals: list[Any] | None = None) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers (plus ``extra_globals``).

    Raises ``UnsafeCheckpointError`` naming the file and what it references instead of
    unpickling anything else.
    """
    allowed = list(extra_globals or [])
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = {f"{g.__module__}.{g.__qualname__}" for g in allowed}
        try:
            found = [
                g
                for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                if g not in names
            ]
        except Exception:  # not even a readable pickle: say so without the details
            found = []
        what = f"it references {', '.join(found)}" if found else "it is not a plain pickle"
        raise UnsafeCheckpointError(
            f"{path}: refused to load: {what}, which unpickling would import and run; SGT "
            "writes only tensors and plain data there, so the file was changed or comes from "
            "elsewhere"
        ) from None


def load_rank_state(checkpoint: Path, rank: int) -> dict[str, Any]:
    """One rank's RNG and sampler states: ``rank_R.json``, or a ``rank_R.pt`` of sgt-train 0.3 and earlier."""
    stem = checkpoint / f"rank_{rank:05d}"
    json_file = stem.with_suffix(".json")
    if json_file.is_file():
        try:
            state = decode_state(json.loads(json_file.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{json_file}: not a rank state written by sgt-train ({exc})"
            ) from None
    elif stem.with_suffix(".pt").is_file():
        state = _safe_load(stem.with_suffix(".pt"), _numpy_globals())
    else:
        raise ValueError(
            f"{checkpoint}: no {json_file.name} (nor the {stem.name}.pt of sgt-train 0.3 and earlier)"
        )
    if not isinstance(state, dict):
        raise ValueError(f"{json_file}: expected a mapping, got {type(state).__name__}")
    return state


def load_ema_state(checkpoint: Path) -> dict[str, Any] | None:
    """The EMA state of a checkpoint folder (``ema.pt``, tensors only), or None without one."""
    file = checkpoint / _EMA_FILE
    if not file.is_file():
        return None
    state = _safe_load(file)
    if not isinstance(state, dict) or not isinstance(state.get("shadow"), dict):
        raise ValueError(f"{file}: not an EMA state written by sgt-train (no 'shadow' mapping)")
    return state


def load_module_states(path: Path) -> dict[str, Any]:
    """A DeepSpeed ZeRO-0 ``mp_rank_*_model_states.pt`` read with ``weights_only=True``.

    DeepSpeed 0.19 writes tensors and plain containers there (module, optimizer and LR scheduler
    states, counters, its config), plus sgt-train's ``ScheduleConfig`` inside the LR scheduler's
    state; a file referencing anything else raises ``UnsafeCheckpointError``.
    """
    from sgt_train.config import ScheduleConfig  # the LR schedule's state holds its config

    state = _safe_load(path, [ScheduleConfig])
    if not isinstance(state, dict) or not isinstance(state.get("module"), dict):
        raise ValueError(f"{path}: not a DeepSpeed model-states file (no 'module' mapping)")
    return state


@dataclass(frozen=True)
class CheckpointState:
    """What a committed checkpoint holds besides the engine states."""

    path: Path
    step: int
    trainer_state: dict[str, Any]
    rank_state: dict[str, Any]
    ema_state: dict[str, Any] | None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest committed checkpoint folder under ``root``, or None."""
    folder = Path(root)
    if not folder.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for child in folder.iterdir():
        match = _COMMITTED.match(child.name)
        if match and (child / _STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


class CheckpointManager:
    """Saves, rotates and restores the checkpoints of one run (every rank holds one)."""

    def __init__(
        self,
        root: str | Path,
        keep_last: int,
        rank: int,
        world_size: int,
        barrier: Callable[[], None],
        on_staged: Callable[[Path], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.rank = rank
        self.world_size = world_size
        self._barrier = barrier
        #: called on every rank after all files are staged and before the commit (tests kill here)
        self.on_staged = on_staged

    def committed(self) -> list[Path]:
        """Committed checkpoint folders, oldest first."""
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), c)
            for c in self.root.iterdir()
            if (m := _COMMITTED.match(c.name)) and (c / _STATE_FILE).is_file()
        ]
        return [p for _, p in sorted(found)]

    def remove_leftovers(self) -> None:
        """Delete staging and trash folders a killed process left behind (rank 0), then sync."""
        if self.rank == 0 and self.root.is_dir():
            for child in self.root.iterdir():
                if child.name.startswith((".staging-", ".trash-")):
                    _log.warning("removing unfinished checkpoint folder %s", child)
                    shutil.rmtree(child, ignore_errors=True)
        self._barrier()

    def save(
        self,
        step: int,
        engine: Any,
        trainer_state: dict[str, Any],
        rank_state: dict[str, Any],
        ema_state: dict[str, Any] | None,
    ) -> Path:
        """Write and commit the checkpoint of ``step``; collective over all ranks."""
        name = f"step_{step:08d}"
        staging = self.root / f".staging-{name}"
        final = self.root / name
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir()
        self._barrier()
        engine.save_checkpoint(str(staging), tag=DS_TAG, client_state={}, save_latest=False)
        rank_file = staging / f"rank_{self.rank:05d}.json"
        rank_file.write_text(
            json.dumps(encode_state(rank_state, f"{rank_file.name}")), encoding="utf-8"
        )
        if self.rank == 0:
            if ema_state is not None:
                torch.save(ema_state, staging / _EMA_FILE)
            record = {
                "schema_version": CHECKPOINT_SCHEMA_VERSION,
                "step": step,
                "world_size": self.world_size,
                **trainer_state,
            }
            # written last by rank 0: its presence marks a complete folder
            (staging / _STATE_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        self._barrier()
        if self.on_staged is not None:
            self.on_staged(staging)
        if self.rank == 0:
            _fsync_dir(staging)
            if final.exists():  # a re-save of the same step (e.g. preemption right after a save)
                trash = self.root / f".trash-{name}"
                os.rename(final, trash)
                shutil.rmtree(trash)
            os.rename(staging, final)
            _fsync_dir(self.root)
            self._prune()
        self._barrier()
        _log.info("checkpoint %s committed", final)
        return final

    def _prune(self) -> None:
        committed = self.committed()
        for old in committed[: max(len(committed) - self.keep_last, 0)]:
            trash = self.root / f".trash-{old.name}"
            os.rename(old, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def load(self, path: Path, engine: Any) -> CheckpointState:
        """Restore the engine from ``path`` and return the trainer-side states of this rank."""
        trainer_state = json.loads((path / _STATE_FILE).read_text(encoding="utf-8"))
        saved_world = int(trainer_state.get("world_size", 1))
        if saved_world != self.world_size:
            raise ValueError(
                f"{path}: checkpoint was written by {saved_world} processes, this run has "
                f"{self.world_size}; exact resume needs the same world size"
            )
        # SGT's own files first: one that would run code stops the resume before DeepSpeed loads
        rank_state = load_rank_state(path, self.rank)
        ema_state = load_ema_state(path)
        load_path, _ = engine.load_checkpoint(
            str(path),
            tag=DS_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise ValueError(f"{path}: DeepSpeed found no engine states under tag {DS_TAG!r}")
        return CheckpointState(
            path=path,
            step=int(trainer_state["step"]),
            trainer_state=trainer_state,
            rank_state=rank_state,
            ema_state=ema_state,
        )
