"""Losses and metrics, for one model and per member of a population, with the same definitions.

Classification: cross-entropy (with label smoothing) and accuracy; regression: MSE, MAE and R². The per-member
forms take outputs ``(K, B, ...)`` and return ``(K,)`` values computed as the one-model forms would for each member,
which is what keeps the population engine exact against the single-model loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nntune.models.builders import forward_batched


def metric_name(task: str) -> str:
    """The training metric logged beside the loss: ``accuracy`` for classification, ``mae`` for regression."""
    return "accuracy" if task == "classification" else "mae"


def make_loss(task: str, label_smoothing: float = 0.0) -> nn.Module:
    """Cross-entropy (with optional label smoothing) for classification, MSE for regression."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing) if task == "classification" else nn.MSELoss()


def outputs(out: torch.Tensor, classification: bool) -> torch.Tensor:
    """A model's raw outputs as the loss takes them: logits ``(..., B, C)``, or values ``(..., B)`` for regression."""
    return out if classification else out.reshape(out.shape[:-1])


HALVES = {"a": slice(0, None, 2), "b": slice(1, None, 2)}  # the validation split's interleaved halves


def add_halves(rows: list[dict[str, float]], metrics_of: Callable[[slice], list[dict[str, float]]]) -> None:
    """Add each row's metrics on the two halves of the validation split (``a_loss``, ``b_accuracy``, ...; the
    history then has ``val_a_*`` and ``val_b_*``): what the evidence's cross-fitted early stopping reads, one half
    to choose the epoch and the other to score it. ``metrics_of(half)`` gives the rows' metrics on that half."""
    for name, half in HALVES.items():
        for row, part in zip(rows, metrics_of(half)):
            row.update({f"{name}_{k}": v for k, v in part.items()})


def model_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str,
                  loss_fn: nn.Module | None = None) -> dict[str, float]:
    """Loss and metrics of ``model`` on already-scaled inputs (eval mode, in batches, on the CPU)."""
    return compute_metrics(outputs(forward_batched(model, x), task == "classification"), y.cpu(), task, loss_fn)


def metric_sum(out: torch.Tensor, y: torch.Tensor, classification: bool) -> torch.Tensor:
    """Correct predictions (classification, an integer count: added in place to a float sum it needs no cast) or
    absolute errors summed over the batch (the last target dimension): a scalar for one model, ``(K,)`` for a
    population."""
    if classification:
        return (out.argmax(-1) == y).sum(-1)
    return (out - y).abs().sum(-1)


def compute_metrics(out: torch.Tensor, y: torch.Tensor, task: str,
                    loss_fn: nn.Module | None = None) -> dict[str, float]:
    """Loss and metrics from outputs and targets (one host sync)."""
    out = out.float()
    if task == "classification":
        loss_fn = loss_fn or nn.CrossEntropyLoss()
        loss, acc = torch.stack([loss_fn(out, y), (out.argmax(1) == y).float().mean()]).tolist()
        return {"loss": loss, "accuracy": acc}
    err = out - y
    ss_tot = ((y - y.mean()) ** 2).sum()
    r2 = 1 - (err**2).sum() / ss_tot if ss_tot > 0 else torch.zeros((), device=out.device)
    loss, mae, r2 = torch.stack([(err**2).mean(), err.abs().mean(), r2]).tolist()
    return {"loss": loss, "mae": mae, "r2": r2}


def member_cross_entropy(out: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """(K, B) cross-entropy of logits ``(K, B, C)`` with each member's label smoothing, as ``nn.CrossEntropyLoss``:
    (1 - eps) * NLL + eps * mean over classes of -log p."""
    logp = out.log_softmax(-1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    eps = smoothing.view(-1, 1)
    return torch.where(eps > 0, (1 - eps) * nll - eps * logp.mean(-1), nll)


def member_losses(out: torch.Tensor, y: torch.Tensor, classification: bool, smoothing: torch.Tensor) -> torch.Tensor:
    """(K,) mean training losses: cross-entropy with each member's label smoothing, or MSE."""
    if not classification:
        return ((out - y) ** 2).mean(1)
    return member_cross_entropy(out, y, smoothing).mean(1)


def member_metrics(out: torch.Tensor, y: torch.Tensor, classification: bool,
                   smoothing: torch.Tensor) -> list[dict[str, float]]:
    """Every member's loss and metrics on one shared target set ``y`` (float32, as :func:`compute_metrics`)."""
    y = y.to(out.device)
    if classification:
        y_k = y.unsqueeze(0).expand(out.shape[0], -1)
        per = member_cross_entropy(out, y_k, smoothing.float())
        rows = torch.stack([per.mean(1), (out.argmax(-1) == y_k).float().mean(1)], dim=1).tolist()
        return [{"loss": a, "accuracy": b} for a, b in rows]
    y = y.float()
    err = out - y
    ss_tot = ((y - y.mean()) ** 2).sum()
    r2 = 1 - (err**2).sum(1) / ss_tot if ss_tot > 0 else torch.zeros(out.shape[0], device=out.device)
    rows = torch.stack([(err**2).mean(1), err.abs().mean(1), r2], dim=1).tolist()
    return [{"loss": a, "mae": b, "r2": c} for a, b, c in rows]
