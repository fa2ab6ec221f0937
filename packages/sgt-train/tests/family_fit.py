"""Shared helpers of the model-family training tests (``test_bagel_fit``, ``test_omnigen2_fit``):
2-process runs of the real CLI, SIGTERM hooks, fixed-batch outputs and ``sgt-models check``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from sgt_data import Sample
from sgt_models import GenerationSettings, LossWeights
from sgt_train.launch import free_port
from sgt_train.loop import Hooks, StepMetrics

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def env() -> dict[str, str]:
    """This process's environment without launcher variables, on the CPU accelerator."""
    out = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    out.update({"DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    return out


def rows(run: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``."""
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def torchrun_fit(
    worker: str, out: Path, recipe: str, overrides: Sequence[str], timeout: float = 300
) -> None:
    """``sgt-train fit RECIPE --set ...`` in 2 gloo processes, each run by ``worker``."""
    out.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        worker,
        str(out),
        "fit",
        recipe,
        *[a for o in overrides for a in ("--set", o)],
    ]
    proc = subprocess.run(
        command, env=env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def sigterm_at(step: int) -> Hooks:
    """Hooks that send this process SIGTERM when ``step`` is reported."""

    def on_step(metrics: StepMetrics) -> None:
        if metrics.step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return Hooks(on_step=[on_step])


def outputs(model: Any, samples: list[Sample], settings: GenerationSettings) -> dict[str, Any]:
    """Loss parts on a fixed batch with a fixed seed, greedy answers and a short generation."""
    model.eval()
    with torch.no_grad():
        torch.manual_seed(11)
        loss = model.loss(model.collate(samples), LossWeights())
    image = samples[1].image
    return {
        "total": loss.total.detach(),
        "ce": loss.parts["ce"].detach(),
        "mse": loss.parts["mse"].detach(),
        "answer": model.answer([image], ["What is in the image?"], max_new_tokens=6),
        "t2i": model.generate(["Draw a cat."], settings=settings)[0],
        "seg": model.generate(
            ["Segment instances with different colors."], [image], settings=settings
        )[0],
    }


def check(folder: Path) -> str:
    """``sgt-models check FOLDER`` in a subprocess; asserts exit status 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "sgt_models.cli", "check", str(folder)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def run_cli_recording(
    argv: Sequence[str], extra: Callable[[], dict[str, Any]] | None = None
) -> int:
    """``sgt-train`` with ``argv[1:]``; each rank writes its losses (plus ``extra()``) and final
    weights to the folder ``argv[0]``."""
    from sgt_train import cli

    out = Path(argv[0])
    run_fit = cli.run_fit

    def recording_run_fit(config: Any, **kwargs: Any) -> Any:
        code, result = run_fit(config, **kwargs)
        rank = int(os.environ["RANK"])
        state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
        torch.save(state, out / f"weights_rank{rank}.pt")
        record = {"rank": rank, "losses": result.losses, "final_step": result.final_step}
        record.update(extra() if extra is not None else {})
        (out / f"result_rank{rank}.json").write_text(json.dumps(record))
        return code, result

    cli.run_fit = recording_run_fit  # the CLI looks it up at call time
    return cli.main(list(argv[1:]))
