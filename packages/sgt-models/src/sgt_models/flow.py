"""Flow matching: timestep sampling with shift, the two time conventions, an Euler sampler with CFG.

Two conventions are in use for the same straight path between data ``x0`` and noise ``eps``:

* ``"noise_at_one"`` (BAGEL): ``x_t = (1 - t) x0 + t eps``, the model predicts ``eps - x0``;
* ``"data_at_one"`` (OmniGen2): ``x_t = t x0 + (1 - t) eps``, the model predicts ``x0 - eps``.

They describe the same path under ``t -> 1 - t`` with the velocity's sign flipped. Internally
everything is expressed through the *noise level* ``sigma`` (``sigma = 1`` is pure noise), which
equals BAGEL's ``t`` and OmniGen2's ``1 - t``. Shifts act on ``sigma``:
``sigma' = s sigma / (1 + (s - 1) sigma)``; ``s > 1`` moves mass towards noise. OmniGen2's
resolution-dependent shift ``t' = 1 - e^mu / (e^mu + 1/(1 - t) - 1)`` is this static shift with
``s = e^mu``, ``mu`` linear in the number of latent tokens (FLUX / OmniGen2 style).

Randomness: ``sample_training_timesteps`` and ``training_pair`` draw from the global torch RNG
unless a ``torch.Generator`` is passed, so that a trainer can save and restore the RNG state for
bit-identical resumption.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from sgt_models.config import FlowMatchingConfig

__all__ = [
    "TimeConvention",
    "cfg_combine",
    "euler_sample",
    "from_noise_level",
    "inference_timesteps",
    "interpolate",
    "resolution_shift",
    "sample_training_timesteps",
    "shift_noise_level",
    "to_noise_level",
    "training_pair",
    "velocity_target",
]

#: Which end of the time axis is noise: BAGEL's ``noise_at_one`` or OmniGen2's ``data_at_one``.
TimeConvention = Literal["noise_at_one", "data_at_one"]

_CONVENTIONS: tuple[str, ...] = ("noise_at_one", "data_at_one")


def _check(convention: str) -> None:
    if convention not in _CONVENTIONS:
        raise ValueError(f"unknown time convention {convention!r}; expected one of {_CONVENTIONS}")


def to_noise_level(t: torch.Tensor, convention: TimeConvention) -> torch.Tensor:
    """Noise level ``sigma`` (1 = noise) of a time ``t`` in the given convention."""
    _check(convention)
    return t if convention == "noise_at_one" else 1.0 - t


def from_noise_level(sigma: torch.Tensor, convention: TimeConvention) -> torch.Tensor:
    """Time in the given convention of a noise level ``sigma``."""
    _check(convention)
    return sigma if convention == "noise_at_one" else 1.0 - sigma


def shift_noise_level(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Static shift ``s sigma / (1 + (s - 1) sigma)`` of a noise level (``s = 1`` is the identity)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def resolution_shift(
    num_tokens: int,
    *,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """The static shift ``e^mu`` equivalent to the resolution-dependent shift at ``num_tokens``.

    ``mu`` is linear in the number of latent tokens: ``base_shift`` at ``base_seq_len`` and
    ``max_shift`` at ``max_seq_len`` (extrapolated outside that range).
    """
    if max_seq_len <= base_seq_len:
        raise ValueError("max_seq_len must exceed base_seq_len")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    mu = base_shift + slope * (num_tokens - base_seq_len)
    return math.exp(mu)


def _shift_for(config: FlowMatchingConfig, num_tokens: int | None) -> float:
    if not config.dynamic_shift:
        return config.shift
    if num_tokens is None:
        raise ValueError("dynamic_shift needs the number of latent tokens")
    return resolution_shift(
        num_tokens,
        base_seq_len=config.base_seq_len,
        max_seq_len=config.max_seq_len,
        base_shift=config.base_shift,
        max_shift=config.max_shift,
    )


def sample_training_timesteps(
    n: int,
    config: FlowMatchingConfig,
    convention: TimeConvention,
    *,
    num_tokens: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw ``n`` training times: logit-normal noise levels, shifted, in the given convention.

    ``sigma = shift(sigmoid(mean + std * z))`` with ``z ~ N(0, 1)``; the shift is
    ``config.shift`` or, with ``config.dynamic_shift``, ``resolution_shift(num_tokens)``.
    """
    _check(convention)
    z = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
    sigma = torch.sigmoid(config.logit_normal_mean + config.logit_normal_std * z)
    sigma = shift_noise_level(sigma, _shift_for(config, num_tokens))
    return from_noise_level(sigma, convention)


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def interpolate(
    data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, convention: TimeConvention
) -> torch.Tensor:
    """The point ``x_t`` on the straight path between ``data`` and ``noise`` (``t`` per sample)."""
    sigma = _bcast(to_noise_level(t, convention), data)
    return (1.0 - sigma) * data + sigma * noise


def velocity_target(
    data: torch.Tensor, noise: torch.Tensor, convention: TimeConvention
) -> torch.Tensor:
    """``d x_t / d t``: ``noise - data`` (noise_at_one) or ``data - noise`` (data_at_one)."""
    _check(convention)
    return noise - data if convention == "noise_at_one" else data - noise


def training_pair(
    data: torch.Tensor,
    config: FlowMatchingConfig,
    convention: TimeConvention,
    *,
    num_tokens: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy input, time and regression target for a batch of clean latents ``(B, ...)``.

    Draws the times first, then the noise, both from ``generator`` (the global RNG if ``None``).
    """
    t = sample_training_timesteps(
        data.shape[0],
        config,
        convention,
        num_tokens=num_tokens,
        generator=generator,
        device=data.device,
    )
    noise = torch.randn(data.shape, generator=generator, device=data.device, dtype=torch.float32)
    noise = noise.to(data.dtype)
    return interpolate(data, noise, t, convention), t, velocity_target(data, noise, convention)


def inference_timesteps(num_steps: int, shift: float, convention: TimeConvention) -> torch.Tensor:
    """``num_steps + 1`` times from pure noise to data, uniformly spaced in noise level, shifted."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sigma = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    sigma = shift_noise_level(sigma, shift)
    return from_noise_level(sigma, convention).to(torch.float32)


def cfg_combine(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    text_scale: float,
    image_cond: torch.Tensor | None = None,
    image_scale: float = 1.0,
) -> torch.Tensor:
    """Classifier-free guidance over text (and optionally image) conditions.

    Without ``image_cond``: ``uncond + text_scale (cond - uncond)``. With it (``image_cond`` is the
    prediction with the image but without the text):
    ``uncond + image_scale (image_cond - uncond) + text_scale (cond - image_cond)``.
    Scales of 1 return ``cond``.
    """
    if image_cond is None:
        return uncond + text_scale * (cond - uncond)
    return uncond + image_scale * (image_cond - uncond) + text_scale * (cond - image_cond)


def euler_sample(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    timesteps: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` with Euler steps over ``timesteps`` starting at ``noise``.

    ``velocity(x, t)`` gets ``t`` as a ``(B,)`` tensor; the times come from
    ``inference_timesteps`` in the same convention as the velocity.
    """
    times = torch.as_tensor(timesteps, dtype=torch.float32)
    x = noise
    for i in range(len(times) - 1):
        t = times[i].expand(x.shape[0]).to(x.device)
        v = velocity(x, t)
        x = x + (times[i + 1] - times[i]).item() * v
    return x
