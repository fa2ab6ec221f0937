"""Process launch helpers: single-process defaults for the launcher variables and a clean exit."""

from __future__ import annotations

import os
import socket
import sys

__all__ = [
    "destroy_process_group",
    "distributed_exit",
    "free_port",
    "rank_and_world",
    "set_single_process_env",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def set_single_process_env() -> bool:
    """Set the launcher variables for a one-process run when no launcher set them.

    Returns True when it set them. Without them DeepSpeed falls back to MPI discovery and fails.
    """
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
        return False
    os.environ.update(
        {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT", str(free_port())),
        }
    )
    return True


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (from the process group, else the environment)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def distributed_exit(code: int) -> None:
    """End a worker of a multi-process run: barrier, destroy the group, flush, ``os._exit``.

    gloo's worker threads can abort the interpreter at finalisation ('terminate called without an
    active exception'); exiting at once after destroying the group avoids that. A single-process
    run just destroys its group and returns.
    """
    import torch.distributed as dist

    world = 1
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if code == 0:
            dist.barrier()
        dist.destroy_process_group()
    if world > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def destroy_process_group() -> None:
    """Destroy the process group if there is one (on the way out after an error or Ctrl-C: a
    group left to the interpreter's exit can abort it in gloo's threads)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # best effort on the way out
        pass
