"""Optuna samplers and pruners by name (the names are :data:`nntune.registry.SAMPLERS` and
:data:`nntune.registry.PRUNERS`)."""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from nntune.errors import ConfigError
from nntune.search.space import Param


class GridSearch(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` after the last point, which only works inside
    ``study.optimize`` (the search loop asks ``is_exhausted`` itself), and able to say how many points no trial has
    started yet (so a population does not re-run a point)."""

    def __init__(self, search_space: dict[str, list], seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        self.points = math.prod(len(v) for v in search_space.values())

    def after_trial(self, study, trial, state, values) -> None:
        return None

    def unstarted(self, study: optuna.Study) -> int:
        started = {t.system_attrs["grid_id"] for t in study.get_trials(deepcopy=False)
                   if "grid_id" in t.system_attrs and t.state != TrialState.FAIL}
        return self.points - len(started)


def make_sampler(name: str, seed: int, params: list[Param]) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return GridSearch({p.key: p.grid_values() for p in params if p.kind != "fixed"}, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ConfigError(f"search.sampler: unknown sampler {name!r}")


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2, max_resource=max_epochs)
    if name in ("none", "halving"):  # halving decides at its rungs itself (nntune.search.halving)
        return optuna.pruners.NopPruner()
    raise ConfigError(f"search.pruner: unknown pruner {name!r}")
