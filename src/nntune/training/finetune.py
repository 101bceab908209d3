"""Fine-tuning (seed topic 1, which parameters train): start from a saved nntune model, replace its output layer
when the task or the classes differ, freeze layer groups, unfreeze them gradually (fastai's gradual unfreezing) and
give earlier groups smaller learning rates (discriminative LRs, ``lr_mult`` per group).

A layer group is a weighted layer with its batch norm (:func:`nntune.models.inspect.layer_groups`). The optimizer
holds every parameter from the start; a frozen one gets no gradient and so is never changed (not even by weight
decay), and it starts training the epoch after it is unfrozen. The saved model's input shape and scaler apply.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nntune import artifacts
from nntune.config import RunConfig, apply_overrides
from nntune.data.scalers import Scaler
from nntune.data.sources import Dataset
from nntune.errors import ConfigError, DataError
from nntune.models.ensemble import Ensemble
from nntune.models.inspect import freeze, layer_groups
from nntune.training.callbacks import Callback


MIN_STEPS = 1200  # optimizer steps a run with a frozen base trains at least (measured: bench/finetune_probe.py)


@lru_cache(maxsize=4)
def _saved(path: str, version: float) -> artifacts.Artifact:
    return artifacts.load(path)


def saved_model(cfg: RunConfig) -> artifacts.Artifact:
    """The model ``finetune.init_from`` names, loaded once per process and version of its weights (each run takes
    a fresh copy)."""
    path = Path(cfg.finetune.init_from).resolve()
    weights = path / artifacts.WEIGHTS
    art = _saved(str(path), weights.stat().st_mtime if weights.exists() else 0.0)
    if isinstance(art.model, Ensemble):
        raise ConfigError(f"finetune.init_from: {cfg.finetune.init_from} is an ensemble of "
                          f"{len(art.model.members)} models; fine-tune one of them (a trial's directory, "
                          "RUN/trials/N)")
    return art


def adopt(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the saved model's architecture and scaler method (what a fine-tuned run trains and saves)."""
    if cfg.finetune.init_from is None:
        return cfg
    art = saved_model(cfg)
    return apply_overrides(cfg, {"model": art.config.model.model_dump(mode="json"),
                                 "preprocess.scaler": art.scaler.method})


def check_out(cfg: RunConfig, out: Path | None) -> None:
    """Refuse a run directory whose ``best/`` is the model being fine-tuned (it would be replaced mid-run)."""
    if cfg.finetune.init_from is not None and out is not None and \
            (Path(out) / "best").resolve() == Path(cfg.finetune.init_from).resolve():
        raise ConfigError(f"--out {out}: its best/ is the model --init-from starts from; write to another directory")


def saved_scaler(cfg: RunConfig) -> Scaler:
    """The saved model's fitted scaler: fine-tuning sees the inputs as the saved model learned them."""
    return saved_model(cfg).scaler


def head_differs(art: artifacts.Artifact, ds: Dataset) -> bool:
    """True when the output layer must be replaced: another task, or other classes."""
    return art.task != ds.task or (ds.task == "classification" and art.class_names != ds.class_names)


def start_model(cfg: RunConfig, ds: Dataset) -> nn.Module:
    """A copy of the saved model ready to fine-tune on ``ds``: its weights, a new seeded output layer when
    :func:`head_differs`, and the configured layers frozen."""
    import copy

    art = saved_model(cfg)
    expected = tuple(art.data["input_shape"])
    if tuple(ds.input_shape) != expected:
        raise DataError(f"{ds.name}: samples have shape {tuple(ds.input_shape)}, but the model in "
                        f"{cfg.finetune.init_from} takes {expected}; fine-tuning keeps the saved input shape")
    if art.data.get("table") != (ds.table.to_dict() if ds.table is not None else None):
        raise DataError(f"{ds.name}: its columns (or their categories and missing values) differ from those the model "
                        f"in {cfg.finetune.init_from} was trained on; fine-tuning keeps the saved table encoding")
    model = copy.deepcopy(art.model).cpu()
    if head_differs(art, ds):
        old = model.out
        gen = torch.Generator().manual_seed(cfg.seed)
        model.out = nn.Linear(old.in_features, ds.n_outputs)
        nn.init.xavier_uniform_(model.out.weight, generator=gen)
        nn.init.zeros_(model.out.bias)
    ft = cfg.finetune
    if ft.freeze is not None:
        freeze(model, ft.freeze)
    elif ft.freeze_all_but_last is not None:
        freeze(model, all_but_last=ft.freeze_all_but_last)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("finetune: every layer is frozen, so nothing would train; leave at least the last group "
                          "trainable (--freeze-all-but-last 1 or more, or a narrower --freeze pattern)")
    return model


def param_groups(model: nn.Module, lr: float, lr_mult: float) -> list[dict]:
    """One optimizer group per layer group, input to output; the last gets ``lr``, each earlier one ``lr_mult``
    times the LR of the one after it. Every parameter is in a group, frozen or not."""
    groups = layer_groups(model)
    out = []
    for i, group in enumerate(groups):
        params = [p for _, m in group for p in m.parameters(recurse=False)]
        out.append({"params": params, "lr": lr * lr_mult ** (len(groups) - 1 - i)})
    return out


class GradualUnfreeze(Callback):
    """Every ``every`` epochs, the frozen layer group nearest the output trains again (one group at a time, from
    the head down, as in fastai); the history row of that epoch lists the layers under ``unfrozen``."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.frozen: list[list[tuple[str, nn.Module]]] = []

    def on_train_begin(self, trainer) -> None:
        self.frozen = [g for g in layer_groups(trainer.model)
                       if not any(p.requires_grad for _, m in g for p in m.parameters(recurse=False))]

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        if epoch % self.every or not self.frozen:
            return
        group = self.frozen.pop()
        for _, module in group:
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
        trainer.history[-1]["unfrozen"] = [name for name, _ in group]


def frozen_defaults(cfg: RunConfig, n_train: int) -> tuple[RunConfig, dict[str, Any]]:
    """With saved layers frozen for the whole run (``freeze`` or ``freeze_all_but_last``, no gradual unfreezing) what
    trains is a head on fixed features, nearly a convex fit, so the settings left at their defaults change: the LR
    comes from the range test on the layers that train, early stopping is off (a few validation samples stop such a
    fit long before it converges) and training lasts at least ``MIN_STEPS`` optimizer steps. Measured on the issue's
    case (head-only on 105 samples, 5 seeds; ``bench/finetune_probe.py``): 0.524 with the defaults, 0.932 with
    these, where a linear probe on the same features scores 0.940. ``nntune train`` applies it (a search samples
    these settings instead). Returns the config and the keys it set."""
    ft = cfg.finetune
    if ft.init_from is None or ft.unfreeze_after is not None or (ft.freeze is None and ft.freeze_all_but_last is None):
        return cfg, {}
    over: dict[str, Any] = {}
    if not (cfg.is_given("train.lr") or cfg.is_given("train.lr_auto")):
        over["train.lr_auto"] = True
    if not cfg.is_given("train.early_stopping"):  # any early-stopping setting given: the user wants it as set
        over["train.early_stopping.enabled"] = False
    if not cfg.is_given("train.epochs"):
        over["train.epochs"] = max(cfg.train.epochs, math.ceil(MIN_STEPS / math.ceil(n_train / cfg.train.batch_size)))
    return (apply_overrides(cfg, over), over) if over else (cfg, over)


def describe(cfg: RunConfig, ds: Dataset) -> dict | None:
    """What a fine-tuned run started from (for result.json and the report); None when it did not."""
    ft = cfg.finetune
    if ft.init_from is None:
        return None
    art = saved_model(cfg)
    return {"init_from": str(ft.init_from), "source": art.data.get("name"), "head_replaced": head_differs(art, ds),
            "source_classes": art.class_names, "freeze": ft.freeze, "freeze_all_but_last": ft.freeze_all_but_last,
            "unfreeze_after": ft.unfreeze_after, "lr_mult": ft.lr_mult}
