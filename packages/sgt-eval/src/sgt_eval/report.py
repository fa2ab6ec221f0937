"""The evaluation report: what was evaluated, how, and the scores (``EvalReport`` JSON)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "EVAL_REPORT_SCHEMA_VERSION",
    "BenchmarkResult",
    "EvalReport",
    "EvalSettings",
    "ReportError",
]


class ReportError(ValueError):
    """A file that cannot be read as an ``EvalReport``; the message names the file and why."""


EVAL_REPORT_SCHEMA_VERSION: Literal[1] = 1


class EvalSettings(BaseModel):
    """How the model was run: seed, precision, batch and sampling settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_size: int = Field(default=8, ge=1)
    max_new_tokens: int = Field(default=32, ge=1)
    num_inference_steps: int | None = Field(default=None, ge=1)
    cfg_text_scale: float | None = None
    cfg_image_scale: float | None = None
    images_per_prompt: int = Field(default=1, ge=1)


class BenchmarkResult(BaseModel):
    """Scores of one benchmark (or one split of it) under a named protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmark: str = Field(min_length=1, description="e.g. 'cv-bench', 'pope', 'geneval'")
    split: str = Field(default="default", min_length=1)
    kind: Literal["understanding", "generation", "proxy"]
    metrics: dict[str, float] = Field(
        description="metric name -> value (percent where the paper does)"
    )
    primary_metric: str = Field(description="the metric the paper's tables report")
    num_items: int = Field(ge=0)
    protocol: str = Field(
        description="the scoring rule followed, e.g. 'official POPE (yes-ratio on predictions)'"
    )
    deviations: tuple[str, ...] = Field(
        default=(), description="where this differs from the official protocol"
    )
    judge: str | None = Field(
        default=None, description="model that judged, for judge-scored benchmarks"
    )
    data_revision: str | None = None

    @model_validator(mode="after")
    def _primary_present(self) -> BenchmarkResult:
        if self.primary_metric not in self.metrics:
            raise ValueError(
                f"primary_metric {self.primary_metric!r} is not among metrics {sorted(self.metrics)}"
            )
        return self


class EvalReport(BaseModel):
    """The result of evaluating one model: written as JSON, read by ``sgt-eval compare``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = EVAL_REPORT_SCHEMA_VERSION
    model_name: str = Field(min_length=1)
    model_kind: str = Field(description="adapter kind, e.g. 'reference', 'bagel'")
    model_path: str | None = None
    created_at: datetime
    sgt_versions: dict[str, str] = Field(default_factory=dict)
    settings: EvalSettings = EvalSettings()
    results: tuple[BenchmarkResult, ...] = ()

    @model_validator(mode="after")
    def _unique_results(self) -> EvalReport:
        keys = [(r.benchmark, r.split) for r in self.results]
        repeated = sorted({f"{b}/{s}" for b, s in keys if keys.count((b, s)) > 1})
        if repeated:
            raise ValueError(f"benchmark/split repeated in results: {repeated}")
        return self

    def result(self, benchmark: str, split: str = "default") -> BenchmarkResult:
        """The result of one benchmark split; ``KeyError`` if absent."""
        for r in self.results:
            if r.benchmark == benchmark and r.split == split:
                return r
        raise KeyError(f"{self.model_name}: no result for {benchmark}/{split}")

    def write(self, path: str | Path) -> None:
        """Write the report as JSON (atomically: a temporary file renamed over the target)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        tmp.replace(target)

    @classmethod
    def read(cls, path: str | Path) -> EvalReport:
        """Read and validate a report written by ``write``; ``ReportError`` names the file."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ReportError(f"{file}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ReportError(f"{file}: cannot read: {exc}") from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            errors = exc.errors()
            if errors and errors[0]["type"] == "json_invalid":
                raise ReportError(f"{file}: not JSON ({errors[0]['msg']})") from None
            first = errors[0] if errors else None
            where = ".".join(str(p) for p in first["loc"]) if first else ""
            detail = f"{where or '<root>'}: {first['msg']}" if first else str(exc)
            raise ReportError(
                f"{file}: not an EvalReport (`sgt-eval run --out` writes one; "
                f"{len(errors)} problem(s), first {detail})"
            ) from None
