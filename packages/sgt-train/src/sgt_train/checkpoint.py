"""Atomic, rotating checkpoints of a DeepSpeed run.

A checkpoint is written into ``checkpoints/.staging-step_N`` by every rank (the DeepSpeed engine
states, one ``rank_R.pt`` per rank with RNG and sampler states, and on rank 0 ``ema.pt`` and
``trainer_state.json``), then rank 0 renames the folder to ``checkpoints/step_N``. The rename
is the commit: a process killed at any moment leaves every earlier ``step_*`` folder whole, and
leftovers (``.staging-*``, ``.trash-*``) are removed at the next start. Old checkpoints are
renamed to ``.trash-*`` before they are deleted, so a half-deleted one never looks valid.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_SCHEMA_VERSION",
    "DS_TAG",
    "CheckpointManager",
    "CheckpointState",
    "latest_checkpoint",
]

_log = logging.getLogger(__name__)

CHECKPOINT_SCHEMA_VERSION = 1
#: The DeepSpeed tag (sub-folder) inside every checkpoint folder.
DS_TAG = "ds"
_COMMITTED = re.compile(r"^step_(\d{8,})$")
_STATE_FILE = "trainer_state.json"


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
        torch.save(rank_state, staging / f"rank_{self.rank:05d}.pt")
        if self.rank == 0:
            if ema_state is not None:
                torch.save(ema_state, staging / "ema.pt")
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
        load_path, _ = engine.load_checkpoint(
            str(path),
            tag=DS_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise ValueError(f"{path}: DeepSpeed found no engine states under tag {DS_TAG!r}")
        rank_state = torch.load(
            path / f"rank_{self.rank:05d}.pt", map_location="cpu", weights_only=False
        )
        ema_file = path / "ema.pt"
        ema_state = (
            torch.load(ema_file, map_location="cpu", weights_only=False)
            if ema_file.is_file()
            else None
        )
        return CheckpointState(
            path=path,
            step=int(trainer_state["step"]),
            trainer_state=trainer_state,
            rank_state=rank_state,
            ema_state=ema_state,
        )
