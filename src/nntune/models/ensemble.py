"""An ensemble of models as one module: what ``best/`` holds when the chosen configuration's seeds predict better
together than one model does (one architecture), or together with the other finalists' models (``specs``: one model
config per member).

Classification members' probabilities are averaged and the module returns their log (a valid logit vector: its
softmax is the mean probability and its argmax the ensemble's vote), so ``predict``, ``predict_proba``, the losses
and ``nntune export`` treat an ensemble like any model; regression members' outputs are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nntune.config import ModelConfig
from nntune.errors import SpecError
from nntune.models.builders import build_model


class Ensemble(nn.Module):
    """The mean of ``members``' predictions (of their probabilities when ``classification``), as logits.
    ``specs``: each member's model config when they differ (None: all are the run's architecture)."""

    def __init__(self, members: Sequence[nn.Module], classification: bool,
                 specs: Sequence[ModelConfig] | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise SpecError(f"an ensemble needs at least two members, got {len(members)}")
        if specs is not None and len(specs) != len(members):
            raise SpecError(f"an ensemble of {len(members)} members got {len(specs)} model configs")
        self.members = nn.ModuleList(members)
        self.classification = classification
        self.specs = list(specs) if specs is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([m(x) for m in self.members])
        if self.classification:
            return torch.logsumexp(torch.log_softmax(outs, dim=-1), dim=0) - torch.log(
                torch.tensor(float(len(self.members)), dtype=outs.dtype, device=outs.device))
        return outs.mean(0)


def build_ensemble(cfg: ModelConfig, input_shape: Sequence[int], n_outputs: int, size: int,
                   classification: bool, seed: int = 0, specs: Sequence[ModelConfig] | None = None) -> Ensemble:
    """``size`` freshly built members of ``cfg``'s architecture, or of each of ``specs`` (to load saved weights
    into)."""
    configs = list(specs) if specs is not None else [cfg] * size
    return Ensemble([build_model(c, input_shape, n_outputs, seed=seed + i) for i, c in enumerate(configs)],
                    classification, specs)
