"""The run configuration: data mixture, model adapter, optimiser, schedule, precision, ZeRO, EMA,
checkpoints and logging. Loaded from YAML with ``a.b=c`` overrides; errors name the file, the
field path and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from sgt_data import MixtureConfig
from sgt_models import AdapterConfig, AdapterConfigBase, LossWeights

__all__ = [
    "RUN_CONFIG_SCHEMA_VERSION",
    "CheckpointConfig",
    "ConfigError",
    "EMAConfig",
    "LoggingConfig",
    "OptimizerConfig",
    "RunConfig",
    "ScheduleConfig",
    "ZeroConfig",
    "apply_overrides",
    "load_run_config",
    "validate_run_config",
]

RUN_CONFIG_SCHEMA_VERSION: Literal[1] = 1

_ADAPTER_CONFIG: TypeAdapter[AdapterConfig] = TypeAdapter(AdapterConfig)
_BUILTIN_KINDS = ("reference", "bagel", "omnigen2")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerConfig(_Strict):
    """AdamW."""

    lr: float = Field(default=1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-15, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _check_betas(self) -> OptimizerConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        return self


class ScheduleConfig(_Strict):
    """Linear warm-up, then constant or cosine decay to ``min_lr``."""

    kind: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)


class ZeroConfig(_Strict):
    """DeepSpeed ZeRO partitioning."""

    stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer: bool = False
    offload_params: bool = False

    @model_validator(mode="after")
    def _check_offload(self) -> ZeroConfig:
        if self.offload_params and self.stage != 3:
            raise ValueError("offload_params needs ZeRO stage 3")
        if self.offload_optimizer and self.stage == 0:
            raise ValueError("offload_optimizer needs ZeRO stage 1, 2 or 3")
        return self


class EMAConfig(_Strict):
    """Exponential moving average of the trainable weights; ``decay=0`` disables it."""

    decay: float = Field(default=0.0, ge=0, lt=1)


class CheckpointConfig(_Strict):
    """Checkpoint cadence and retention."""

    every: int = Field(default=1000, ge=1)
    keep_last: int = Field(default=3, ge=1)
    save_after: int = Field(default=0, ge=0, description="no periodic checkpoint before this step")


class LoggingConfig(_Strict):
    """Metric sinks."""

    every: int = Field(default=10, ge=1)
    tensorboard: bool = True
    progress_bar: bool = True


class RunConfig(_Strict):
    """Everything one training run needs."""

    schema_version: Literal[1] = RUN_CONFIG_SCHEMA_VERSION
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = "runs"
    seed: int = 0
    model: SerializeAsAny[AdapterConfigBase] = Field(
        description="the adapter config; `kind` picks the model family (built-in or registered)"
    )
    init_from: str | None = Field(
        default=None, description="folder written by save_pretrained/export"
    )
    data: MixtureConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss_weights: LossWeights = LossWeights()
    steps: int = Field(ge=1, description="optimizer steps")
    micro_batch_size: int = Field(default=1, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    zero: ZeroConfig = ZeroConfig()
    ema: EMAConfig = EMAConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    num_workers: int = Field(default=0, ge=0, description="DataLoader workers per rank")
    check_targets: bool = Field(
        default=True, description="refuse segmentation samples whose target is the input image"
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=dict, description="raw DeepSpeed keys merged over the derived config"
    )

    @field_validator("model", mode="before")
    @classmethod
    def _parse_model(cls, value: Any) -> Any:
        # Built-in kinds validate through the discriminated union (errors keep their field
        # paths); a kind a downstream package registered validates through its own class.
        if isinstance(value, AdapterConfigBase):
            return value
        kind = value.get("kind") if isinstance(value, dict) else None
        if isinstance(kind, str) and kind not in _BUILTIN_KINDS:
            from sgt_models import registry

            try:
                family = registry.family_of(kind)
            except registry.AdapterLoadError:
                pass  # unknown: the union below names the expected kinds
            else:
                return family.config_type.model_validate(value)
        return _ADAPTER_CONFIG.validate_python(value)

    @model_validator(mode="after")
    def _check_zero3_offload(self) -> RunConfig:
        zero = self.zero
        if (
            zero.stage == 3
            and (zero.offload_optimizer or zero.offload_params)
            and self.gradient_accumulation > 1
        ):
            raise ValueError(
                "zero.stage 3 with CPU offload and gradient_accumulation > 1 is refused: under "
                "DeepSpeed 0.19 a parameter that gets no gradient in some micro-batches of a step "
                "(a task-routed batch) trains differently from the same run without offload. Use "
                "gradient_accumulation: 1 (a larger micro-batch or token budget instead), ZeRO-3 "
                "without offload, or zero.stage 2 with offload_optimizer"
            )
        return self

    @model_validator(mode="after")
    def _check_schedule(self) -> RunConfig:
        if self.schedule.warmup_steps > self.steps:
            raise ValueError(
                f"schedule.warmup_steps ({self.schedule.warmup_steps}) exceeds steps ({self.steps})"
            )
        return self


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the file, the field path and the reason."""


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (``3``, ``1e-4``, ``true``, ``[1, 2]``, ``null``)."""
    return yaml.safe_load(text) if text.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (lists are indexed by integer keys)."""
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(data)) if data else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected the form a.b.c=value")
        path, raw = item.split("=", 1)
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r}: empty field path")
        node: Any = result
        for depth, key in enumerate(keys[:-1]):
            where = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                try:
                    node = node[int(key)]
                except (ValueError, IndexError) as exc:
                    raise ConfigError(f"override {item!r}: no list item {where}") from exc
            elif isinstance(node, dict):
                node = node.setdefault(key, {})
            else:
                raise ConfigError(f"override {item!r}: {'.'.join(keys[:depth])} is not a mapping")
        last = keys[-1]
        value = _parse_scalar(raw)
        if isinstance(node, list):
            try:
                node[int(last)] = value
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"override {item!r}: no list item {path}") from exc
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: parent of {last!r} is not a mapping")
    return result


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"{source}: invalid run config ({error.error_count()} error(s))"]
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {source}: {loc}: {err['msg']}")
    return "\n".join(lines)


def validate_run_config(data: Any, source: str = "<config>") -> RunConfig:
    """Validate a parsed config; raise ``ConfigError`` naming source, field path and reason."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: <root>: expected a mapping, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``a.b=c`` overrides, validate."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{file}: <yaml>: {where}{getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: <root>: expected a mapping, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides)
    source = str(file) + (f" (with overrides {', '.join(overrides)})" if overrides else "")
    return validate_run_config(data, source)
