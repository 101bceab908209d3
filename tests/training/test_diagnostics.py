import pytest
import torch
from torch import nn

from nntune.training.diagnostics import activation_findings, history_findings


def hist(train, val, grads=None):
    rows = []
    for i, (a, b) in enumerate(zip(train, val)):
        row = {"epoch": i + 1, "loss": a, "val_loss": b, "lr": 0.1}
        if grads:
            row["grad_norms"] = grads[i]
        rows.append(row)
    return rows


def codes(findings):
    return [f.code for f in findings]


def test_overfitting():
    f = history_findings(hist([1, .8, .6, .4, .3, .2, .1], [1, .8, .7, .75, .85, .95, 1.1]))
    assert codes(f) == ["overfitting"] and f[0].evidence["best_val_epoch"] == 3


def test_overfitting_from_a_perfect_validation_loss():
    f = history_findings(hist([1, .5, .3, .2, .1, .05], [0.5, 0.0, 0.1, 0.2, 0.3, 0.4]))
    assert codes(f) == ["overfitting"] and "from 0 to 0.4" in f[0].message


def test_diverging_and_non_finite():
    assert codes(history_findings(hist([1, .8, 1.5, 3, 6], [1, .9, 2, 4, 8]))) == ["diverging"]
    f = history_findings(hist([1, float("nan")], [1, float("nan")]))
    assert codes(f) == ["diverging"] and f[0].evidence["epoch"] == 2


def test_slow_progress():
    assert codes(history_findings(hist([1, .99, .98, .97, .96, .95], [1] * 6))) == ["slow_progress"]


def test_healthy_run_has_no_findings():
    assert history_findings(hist([1, .5, .3, .2, .15], [1, .6, .4, .35, .33])) == []


def test_gradient_ratio_findings():
    small = [{"fc1": 1e-6, "out": 1.0}] * 4
    big = [{"fc1": 1e4, "out": 1.0}] * 4
    assert codes(history_findings(hist([1, .5, .3, .2], [1, .6, .4, .3], small))) == ["vanishing_gradients"]
    assert codes(history_findings(hist([1, .5, .3, .2], [1, .6, .4, .3], big))) == ["exploding_gradients"]


def test_dead_relu_and_saturation():
    dead = nn.Sequential(nn.Linear(4, 10), nn.ReLU())
    with torch.no_grad():
        dead[0].weight.zero_()
        dead[0].bias.copy_(torch.tensor([-1.0] * 6 + [1.0] * 4))
    f = activation_findings(dead, torch.randn(32, 4))
    assert codes(f) == ["dead_relu"] and f[0].evidence["dead_fraction_by_layer"]["1"] == pytest.approx(0.6)
    sat = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    with torch.no_grad():
        sat[0].weight.fill_(50.0)
    assert codes(activation_findings(sat, torch.rand(32, 4) + 0.5)) == ["saturated_units"]
