"""Flow matching: shift formulas, the two time conventions, Euler sampling and CFG."""

from __future__ import annotations

import math

import pytest
import torch

from sgt_models import FlowMatchingConfig
from sgt_models.flow import (
    cfg_combine,
    euler_sample,
    from_noise_level,
    inference_timesteps,
    interpolate,
    resolution_shift,
    sample_training_timesteps,
    shift_noise_level,
    to_noise_level,
    training_pair,
    velocity_target,
)


def test_static_shift_matches_hand_computed_values() -> None:
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    # s = 3: 3 * 0.25 / (1 + 2 * 0.25) = 0.5 ; 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    expected = torch.tensor([0.0, 0.5, 0.75, 1.0], dtype=torch.float64)
    assert torch.equal(shift_noise_level(sigma, 3.0), expected)
    assert torch.equal(shift_noise_level(sigma, 1.0), sigma)
    with pytest.raises(ValueError, match="shift must be > 0"):
        shift_noise_level(sigma, 0.0)


def test_resolution_shift_matches_hand_computed_values() -> None:
    assert resolution_shift(256) == pytest.approx(math.exp(0.5))
    assert resolution_shift(4096) == pytest.approx(math.exp(1.15))
    # midpoint 2176 tokens: mu = 0.5 + 0.65 * 1920 / 3840 = 0.825
    assert resolution_shift(2176) == pytest.approx(math.exp(0.825))
    # a 1024x1024 FLUX-VAE image has (1024/16)^2 = 4096 tokens
    assert resolution_shift(64 * 64) == pytest.approx(3.1581929, rel=1e-6)


def test_resolution_shift_equals_omnigen2_formula() -> None:
    """OmniGen2: t' = 1 - e^mu / (e^mu + 1/(1 - t) - 1) on data-time t, here via noise levels."""
    mu = 0.5 + (1.15 - 0.5) * (1024 - 256) / (4096 - 256)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    omnigen2 = 1 - math.exp(mu) / (math.exp(mu) + 1 / (1 - t) - 1)
    ours = from_noise_level(
        shift_noise_level(to_noise_level(t, "data_at_one"), resolution_shift(1024)), "data_at_one"
    )
    torch.testing.assert_close(ours, omnigen2, rtol=0, atol=1e-12)


def test_conventions_describe_the_same_path() -> None:
    torch.manual_seed(0)
    data, noise = torch.randn(5, 4, 3, 3), torch.randn(5, 4, 3, 3)
    t_bagel = torch.rand(5)
    t_omni = 1 - t_bagel
    x_bagel = interpolate(data, noise, t_bagel, "noise_at_one")
    x_omni = interpolate(data, noise, t_omni, "data_at_one")
    torch.testing.assert_close(x_bagel, x_omni, rtol=0, atol=1e-6)
    v_bagel = velocity_target(data, noise, "noise_at_one")
    v_omni = velocity_target(data, noise, "data_at_one")
    assert torch.equal(v_bagel, -v_omni)
    # BAGEL by hand: x_t = (1 - t) x0 + t eps, v = eps - x0
    t = t_bagel.view(-1, 1, 1, 1)
    torch.testing.assert_close(x_bagel, (1 - t) * data + t * noise)
    assert torch.equal(v_bagel, noise - data)
    # the target is the time derivative of the path in each convention
    eps = 1e-3
    for convention, t0 in (("noise_at_one", t_bagel), ("data_at_one", t_omni)):
        finite = (
            interpolate(data, noise, t0 + eps, convention)
            - interpolate(data, noise, t0, convention)
        ) / eps  # type: ignore[arg-type]
        torch.testing.assert_close(
            finite, velocity_target(data, noise, convention), rtol=0, atol=1e-2
        )  # type: ignore[arg-type]


def test_training_times_of_both_conventions_mirror_each_other() -> None:
    config = FlowMatchingConfig(shift=3.0)
    torch.manual_seed(7)
    t_bagel = sample_training_timesteps(1000, config, "noise_at_one")
    torch.manual_seed(7)
    t_omni = sample_training_timesteps(1000, config, "data_at_one")
    torch.testing.assert_close(t_omni, 1 - t_bagel, rtol=0, atol=1e-7)
    # logit-normal then shift towards noise: the median noise level is shift(0.5) = 0.75
    assert float(t_bagel.median()) == pytest.approx(0.75, abs=0.03)


def test_dynamic_shift_needs_the_token_count_and_uses_it() -> None:
    config = FlowMatchingConfig(dynamic_shift=True)
    with pytest.raises(ValueError, match="number of latent tokens"):
        sample_training_timesteps(4, config, "noise_at_one")
    torch.manual_seed(1)
    small = sample_training_timesteps(2000, config, "noise_at_one", num_tokens=256)
    torch.manual_seed(1)
    large = sample_training_timesteps(2000, config, "noise_at_one", num_tokens=4096)
    assert bool((large >= small).all())
    assert float(large.mean()) > float(small.mean()) + 0.05


def test_training_pair_uses_the_global_rng_reproducibly() -> None:
    data = torch.randn(3, 2, 4, 4)
    torch.manual_seed(3)
    first = training_pair(data, FlowMatchingConfig(), "data_at_one")
    state = torch.get_rng_state()
    torch.manual_seed(3)
    again = training_pair(data, FlowMatchingConfig(), "data_at_one")
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert torch.equal(torch.get_rng_state(), state)
    x_t, t, target = first
    assert t.shape == (3,)
    assert bool(((t > 0) & (t < 1)).all())
    # x_t lies on the path: x_t = t x0 + (1 - t) eps with eps = x0 - target
    noise = data - target
    torch.testing.assert_close(x_t, t.view(-1, 1, 1, 1) * data + (1 - t.view(-1, 1, 1, 1)) * noise)


def test_inference_timesteps_run_from_noise_to_data() -> None:
    bagel = inference_timesteps(4, 3.0, "noise_at_one")
    omni = inference_timesteps(4, 3.0, "data_at_one")
    # noise levels 1, .75, .5, .25, 0 shifted by 3: 1, 0.9, 0.75, 0.5, 0
    torch.testing.assert_close(bagel, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    torch.testing.assert_close(omni, 1 - bagel)


@pytest.mark.parametrize("convention", ["noise_at_one", "data_at_one"])
def test_euler_with_the_exact_velocity_recovers_the_data(convention: str) -> None:
    """On a straight path the true velocity is constant, so Euler is exact in any number of steps."""
    torch.manual_seed(0)
    data, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    target = velocity_target(data, noise, convention)  # type: ignore[arg-type]
    out = euler_sample(lambda x, t: target, noise, inference_timesteps(3, 2.0, convention))  # type: ignore[arg-type]
    torch.testing.assert_close(out, data, rtol=0, atol=1e-5)


def test_euler_trajectories_agree_across_conventions() -> None:
    """A velocity field written in BAGEL time gives the same samples when driven in OmniGen2 time."""
    torch.manual_seed(0)
    noise = torch.randn(2, 3)

    def v_bagel(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(3 * x) + t[:, None]

    def v_omni(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -v_bagel(x, 1 - t)

    a = euler_sample(v_bagel, noise, inference_timesteps(7, 3.0, "noise_at_one"))
    b = euler_sample(v_omni, noise, inference_timesteps(7, 3.0, "data_at_one"))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_cfg_combination_on_a_toy_velocity() -> None:
    def v(text: float, image: float) -> torch.Tensor:
        # a toy "model": the velocity is linear in which conditions are present
        return torch.tensor([1.0 + 2.0 * text + 5.0 * image, -1.0 + 3.0 * image])

    cond, image_only, uncond = v(1, 1), v(0, 1), v(0, 0)
    # text-only guidance: uncond + 4 (cond - uncond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 4.0), torch.tensor([29.0, 11.0]))
    # text 4, image 2: uncond + 2 (image_only - uncond) + 4 (cond - image_only)
    out = cfg_combine(cond, uncond, 4.0, image_cond=image_only, image_scale=2.0)
    torch.testing.assert_close(out, torch.tensor([1.0 + 10.0 + 8.0, -1.0 + 6.0]))
    # scales of 1 return the conditional prediction; scale 0 the unconditional one
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0, image_only, 1.0), cond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0, image_only, 0.0), uncond)


def test_unknown_convention_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown time convention 'bagel'"):
        to_noise_level(torch.zeros(1), "bagel")  # type: ignore[arg-type]
