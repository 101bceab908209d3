import math

import pytest
import torch
from torch.optim import lr_scheduler as S

from nntune.config import ScheduleConfig
from nntune.errors import ConfigError
from nntune.training.schedules import lr_values

LR0, EPOCHS = 0.1, 20


def _values(**kw):
    return lr_values(ScheduleConfig(**kw), LR0, EPOCHS)


def test_none_is_constant():
    assert _values(name="none") == [LR0] * EPOCHS


def test_exponential_formula():
    assert _values(name="exponential", gamma=0.8) == pytest.approx([LR0 * 0.8**e for e in range(EPOCHS)])


def test_step_formula():
    got = _values(name="step", gamma=0.5, step_size=3)
    assert got == pytest.approx([LR0 * 0.5 ** math.floor(e / 3) for e in range(EPOCHS)])


def test_multistep_formula():
    got = _values(name="multistep", gamma=0.1, milestones=[5, 12])
    assert got == pytest.approx([LR0 * 0.1 ** sum(e >= m for m in (5, 12)) for e in range(EPOCHS)])


def test_linear_formula():
    got = _values(name="linear", end_factor=0.1)
    assert got == pytest.approx([LR0 * (1 + (0.1 - 1) * min(e, EPOCHS) / EPOCHS) for e in range(EPOCHS)])


def test_polynomial_formula():
    got = _values(name="polynomial", power=2.0)
    assert got == pytest.approx([LR0 * (1 - e / EPOCHS) ** 2 for e in range(EPOCHS)])


def test_cosine_formula():
    got = _values(name="cosine", min_lr_factor=0.1)
    lo = 0.1 * LR0
    assert got == pytest.approx([lo + (LR0 - lo) * (1 + math.cos(math.pi * e / EPOCHS)) / 2 for e in range(EPOCHS)])


def test_cosine_restarts_formula():
    got = _values(name="cosine_restarts", restart_period=5, restart_mult=1)
    assert got == pytest.approx([LR0 * (1 + math.cos(math.pi * (e % 5) / 5)) / 2 for e in range(EPOCHS)])


def test_warmup_then_cosine():
    got = _values(name="cosine", warmup_epochs=4, warmup_start_factor=0.25)
    warm = [LR0 * (0.25 + 0.75 * e / 4) for e in range(4)]
    main = [LR0 * (1 + math.cos(math.pi * e / 16)) / 2 for e in range(16)]
    assert got == pytest.approx(warm + main)


def test_onecycle_matches_torch_per_step():
    steps = 7
    got = lr_values(ScheduleConfig(name="onecycle", pct_start=0.25), LR0, EPOCHS, steps_per_epoch=steps)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR0)
    ref_sched = S.OneCycleLR(opt, max_lr=LR0, total_steps=EPOCHS * steps, pct_start=0.25)
    ref = []
    for _ in range(EPOCHS * steps):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        if len(ref) < EPOCHS * steps:
            ref_sched.step()
    assert len(got) == EPOCHS * steps and got == pytest.approx(ref)
    assert max(got) == pytest.approx(LR0, rel=1e-6)


def test_plateau_reduces_after_patience():
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    got = lr_values(ScheduleConfig(name="plateau", plateau_factor=0.5, plateau_patience=2), LR0, 10, metrics=metrics)
    # best at epoch 1 (0-based); 3 bad epochs (2, 3, 4) exceed patience 2 -> halved from epoch 5 on, again at 8
    assert got == pytest.approx([LR0] * 5 + [LR0 / 2] * 3 + [LR0 / 4] * 2)


def test_warmup_longer_than_training_is_rejected():
    with pytest.raises(ConfigError, match="warmup_epochs: 20 leaves no epoch"):
        _values(name="cosine", warmup_epochs=20)
