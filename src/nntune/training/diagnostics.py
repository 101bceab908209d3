"""Diagnostics (seed topics 3, 5, 6): read a training history and the trained model, return findings with advice.

Each finding has a stable code, a plain-language message and the evidence numbers, so the CLI, the report and tests
can all use it. Thresholds are module constants so they are visible and testable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

EXPLODING_RATIO = 1e3      # first-layer / last-layer gradient norm
VANISHING_RATIO = 1e-3
DEAD_FRACTION = 0.4        # fraction of ReLU units never active on a validation batch
SATURATED_FRACTION = 0.4   # fraction of tanh/sigmoid outputs within 1% of their bounds
DIVERGE_FACTOR = 1.5       # train loss above this multiple of its best after the best epoch
BLOWUP_FACTOR = 3.0        # first-epoch train loss above this multiple of the untrained model's loss
SLOW_PROGRESS = 0.1        # relative train-loss drop over the run below this is "too slow"
OVERFIT_RISE = 0.1         # val loss this much above its best while train loss keeps falling


@dataclass
class Finding:
    code: str
    severity: str  # "warning" or "info"
    message: str
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def history_findings(history: list[dict], initial_loss: float | None = None) -> list[Finding]:
    """Findings that need only the per-epoch history: gradients, divergence, slow progress, overfitting.

    ``initial_loss`` is the untrained model's validation loss; with it a loss that blew up in the first epoch is
    reported as diverging.
    """
    findings: list[Finding] = []
    if not history:
        return findings
    losses = [h["loss"] for h in history]
    if not all(math.isfinite(v) for v in losses + [h["val_loss"] for h in history]):
        epoch = next(h["epoch"] for h in history if not (math.isfinite(h["loss"]) and math.isfinite(h["val_loss"])))
        findings.append(Finding("diverging", "warning",
                                f"The loss became non-finite at epoch {epoch}: the learning rate is too high "
                                "(or inputs are not normalized). Lower the LR 3-10x or run `nntune lr-find`.",
                                {"epoch": epoch, "lr": history[epoch - 1]["lr"]}))
        return findings
    findings += _gradient_findings(history)
    best_i = min(range(len(losses)), key=losses.__getitem__)
    later_max = max(losses[best_i:])
    known_start = initial_loss is not None and math.isfinite(initial_loss) and initial_loss > 0
    if known_start and losses[0] > BLOWUP_FACTOR * initial_loss:
        findings.append(Finding("diverging", "warning",
                                f"The loss blew up in the first epoch (untrained {initial_loss:.3g}, first epoch mean "
                                f"{losses[0]:.3g}): the learning rate is too high. Lower it 3-10x or run "
                                "`nntune lr-find`.",
                                {"initial_loss": initial_loss, "first_epoch_loss": losses[0],
                                 "best_loss": losses[best_i], "lr": history[0]["lr"]}))
    elif later_max > DIVERGE_FACTOR * losses[best_i] and later_max > losses[0]:
        findings.append(Finding("diverging", "warning",
                                "The training loss climbed back above where it started: the learning rate is too "
                                "high. Lower it 3-10x or run `nntune lr-find`.",
                                {"best_loss": losses[best_i], "later_max_loss": later_max,
                                 "first_loss": losses[0]}))
    elif len(losses) >= 5 and (losses[0] - min(losses)) < SLOW_PROGRESS * losses[0]:
        findings.append(Finding("slow_progress", "warning",
                                f"The training loss fell by under {SLOW_PROGRESS:.0%} in {len(losses)} epochs: the "
                                "learning rate is probably too low (or the model too small). Raise it or run "
                                "`nntune lr-find`.",
                                {"first_loss": losses[0], "min_loss": min(losses), "epochs": len(losses)}))
    val = [h["val_loss"] for h in history]
    vbest = min(range(len(val)), key=val.__getitem__)
    if (len(val) - vbest >= 3 and val[-1] > (1 + OVERFIT_RISE) * val[vbest] and losses[-1] < losses[vbest]):
        rise = f"{val[-1] / val[vbest] - 1:.0%}" if val[vbest] > 0 else f"from 0 to {val[-1]:.3g}"
        findings.append(Finding("overfitting", "warning",
                                f"Validation loss rose {rise} after epoch {vbest + 1} while "
                                "training loss kept falling: the model is overfitting. Early stopping keeps the best "
                                "epoch; more dropout, weight decay, augmentation or a smaller model would help.",
                                {"best_val_epoch": vbest + 1, "best_val_loss": val[vbest], "last_val_loss": val[-1],
                                 "train_loss_at_best": losses[vbest], "last_train_loss": losses[-1]}))
    return findings


def _gradient_findings(history: list[dict]) -> list[Finding]:
    rows = [h["grad_norms"] for h in history if h.get("grad_norms")]
    if not rows:
        return []
    names = list(rows[0])
    if len(names) < 2:
        return []
    first, last = names[0], names[-1]
    ratios = [r[first] / r[last] if r[last] > 0 else math.inf for r in rows]
    early = ratios[: max(1, len(ratios) // 2)]
    median = sorted(early)[len(early) // 2]
    evidence = {"first_layer": first, "last_layer": last, "median_ratio_first_to_last": median,
                "ratios_by_epoch": ratios}
    if median > EXPLODING_RATIO:
        return [Finding("exploding_gradients", "warning",
                        f"Gradients at {first} are {median:.3g}x those at {last}: they explode toward the input. "
                        "Use batch norm, gradient clipping (train.grad_clip) or a lower LR.", evidence)]
    if median < VANISHING_RATIO:
        return [Finding("vanishing_gradients", "warning",
                        f"Gradients at {first} are {median:.3g}x those at {last}: they vanish toward the input, so "
                        "early layers barely learn. Use ReLU-family activations, batch norm, residual connections "
                        "or fewer layers.", evidence)]
    return []


def activation_findings(model: nn.Module, x: torch.Tensor) -> list[Finding]:
    """Dead ReLU units and saturated tanh/sigmoid units, measured on a batch of (scaled) validation inputs."""
    stats: dict[str, dict] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ReLU):
            handles.append(m.register_forward_hook(_dead_hook(stats, name)))
        elif isinstance(m, (nn.Tanh, nn.Sigmoid)):
            handles.append(m.register_forward_hook(_saturation_hook(stats, name, isinstance(m, nn.Tanh))))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            first = next(model.parameters(), None)
            model(x.to(first.device) if first is not None else x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    findings = []
    dead = {k: v["fraction"] for k, v in stats.items() if v["kind"] == "dead"}
    worst = max(dead.items(), key=lambda kv: kv[1], default=None)
    if worst and worst[1] >= DEAD_FRACTION:
        findings.append(Finding("dead_relu", "warning",
                                f"{worst[1]:.0%} of the units in {worst[0]} never activate on validation data (dead "
                                "ReLUs). Try leaky_relu/elu/gelu, a lower LR, or batch norm.",
                                {"dead_fraction_by_layer": dead}))
    sat = {k: v["fraction"] for k, v in stats.items() if v["kind"] == "saturated"}
    worst = max(sat.items(), key=lambda kv: kv[1], default=None)
    if worst and worst[1] >= SATURATED_FRACTION:
        findings.append(Finding("saturated_units", "warning",
                                f"{worst[1]:.0%} of the outputs of {worst[0]} sit at the ends of their range, where "
                                "gradients vanish. Normalize inputs, use batch norm, or a ReLU-family activation.",
                                {"saturated_fraction_by_layer": sat}))
    if dead and not findings:
        findings.append(Finding("activations_ok", "info", "No layer has a large share of dead units.",
                                {"dead_fraction_by_layer": dead}))
    return findings


def _dead_hook(stats: dict, name: str):
    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        # a unit is a feature (dense) or a channel (conv); dead when never > 0 on any sample or position
        per_unit = out.transpose(0, 1).reshape(out.shape[1], -1) if out.dim() > 2 else out.T
        stats[name] = {"kind": "dead", "fraction": float((per_unit.amax(1) <= 0).float().mean())}
    return hook


def _saturation_hook(stats: dict, name: str, is_tanh: bool):
    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        near = (out.abs() > 0.99) if is_tanh else ((out < 0.01) | (out > 0.99))
        stats[name] = {"kind": "saturated", "fraction": float(near.float().mean())}
    return hook


def diagnose(history: list[dict], model: nn.Module | None = None, x_val: torch.Tensor | None = None,
             initial_loss: float | None = None, max_samples: int = 512) -> list[Finding]:
    """All findings for a finished run."""
    findings = history_findings(history, initial_loss)
    if model is not None and x_val is not None and len(x_val):
        device = next(model.parameters()).device
        findings += activation_findings(model, x_val[:max_samples].to(device))
    return findings
