"""Warm-up/constant/cosine learning rates and the EMA update rule."""

from __future__ import annotations

import math

import pytest
import torch

from sgt_train.config import ScheduleConfig
from sgt_train.ema import EMA
from sgt_train.schedule import lr_at, make_scheduler


def test_warmup_then_constant() -> None:
    schedule = ScheduleConfig(kind="constant", warmup_steps=4)
    assert [lr_at(s, 1.0, schedule, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_reaches_min_lr_at_the_end() -> None:
    schedule = ScheduleConfig(kind="cosine", warmup_steps=2, min_lr=0.1)
    assert lr_at(2, 1.0, schedule, 12) == pytest.approx(1.0)
    assert lr_at(7, 1.0, schedule, 12) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))
    )
    assert lr_at(12, 1.0, schedule, 12) == pytest.approx(0.1)
    assert lr_at(50, 1.0, schedule, 12) == pytest.approx(0.1)


def test_torch_scheduler_follows_lr_at() -> None:
    schedule = ScheduleConfig(kind="cosine", warmup_steps=3, min_lr=1e-5)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1e-3)
    scheduler = make_scheduler(opt, 1e-3, schedule, 20)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert seen == pytest.approx([lr_at(s, 1e-3, schedule, 20) for s in range(20)])


def test_ema_update_and_state_round_trip() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA([("w", w)], decay=0.9)
    with torch.no_grad():
        w.copy_(torch.tensor([11.0, 12.0]))
    ema.update([("w", w)])
    assert torch.allclose(ema.shadow["w"], torch.tensor([2.0, 3.0]))
    other = EMA([("w", torch.zeros(2))], decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow["w"], ema.shadow["w"])
    assert other.decay == 0.9
    with pytest.raises(ValueError, match=r"missing \['v'\]"):
        EMA([("v", w)], 0.9).load_state_dict(ema.state_dict())
