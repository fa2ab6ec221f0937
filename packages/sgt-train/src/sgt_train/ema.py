"""Exponential moving average of the trainable weights, kept in fp32."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["EMA"]


class EMA:
    """``ema <- decay * ema + (1 - decay) * weight`` for every named trainable parameter.

    The shadow weights are fp32 copies on the parameters' device; frozen parameters are not
    tracked (an export takes them from the model itself).
    """

    def __init__(self, named_parameters: Iterable[tuple[str, torch.Tensor]], decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32).clone() for name, p in named_parameters
        }

    @torch.no_grad()
    def update(self, named_parameters: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Move the shadow weights towards the current weights."""
        for name, p in named_parameters:
            shadow = self.shadow.get(name)
            if shadow is None:
                continue
            shadow.lerp_(p.detach().to(torch.float32), 1.0 - self.decay)

    def state_dict(self) -> dict[str, object]:
        """Decay and shadow weights (CPU tensors)."""
        return {"decay": self.decay, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore what :meth:`state_dict` returned; the tracked names must match."""
        shadow = state["shadow"]
        if not isinstance(shadow, dict):
            raise ValueError("EMA state has no 'shadow' mapping")
        missing = sorted(set(self.shadow) - set(shadow))
        extra = sorted(set(shadow) - set(self.shadow))
        if missing or extra:
            raise ValueError(
                f"EMA state does not match the model: missing {missing}, extra {extra}"
            )
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
        self.decay = float(state["decay"])  # type: ignore[arg-type]
