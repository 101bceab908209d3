"""How a run config is trained: the settings the loops run with, where the config leaves a choice to the family.

Policy, not schema: the config records what the user asked for (an unset ``grad_clip``), and this resolves it per
model family at training time, so the default follows the model even when a search changes the family per trial.
"""

from __future__ import annotations

from nntune.config import RunConfig, TrainConfig

RNN_GRAD_CLIP = 1.0  # the default gradient-norm clip of recurrent models (exploding gradients are their failure)


def training_settings(cfg: RunConfig) -> TrainConfig:
    """``cfg.train`` as the loops run it: an unset ``grad_clip`` is :data:`RNN_GRAD_CLIP` for a recurrent model."""
    if cfg.train.grad_clip is None and cfg.model.family == "rnn":
        return cfg.train.model_copy(update={"grad_clip": RNN_GRAD_CLIP})
    return cfg.train
