"""The run context: what every training of one run shares, whoever runs it (the search or the evidence).

The prepared data split, its copies per scaler method (each prepared once), the population size measured once per
model family (per cell and size for recurrent models), and the metric a run is judged by. The search's orchestrator
adds its space and study on top (:class:`nntune.search.setup.Search`); the evidence uses this alone.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from nntune.config import RunConfig
from nntune.data.scalers import resolve_method
from nntune.data.sources import Dataset
from nntune.data.splits import redraw
from nntune.training.pipeline import (
    PreparedData,
    measure_population_size,
    prepare_data,
    stackable,
)


def objective(task: str) -> tuple[str, str]:
    """(monitored history key, direction) a run of ``task`` is judged by: validation accuracy, or loss."""
    return ("val_accuracy", "maximize") if task == "classification" else ("val_loss", "minimize")


def preprocessing_key(cfg: RunConfig, ds: Dataset) -> str:
    """What a prepared copy of the data depends on: the resolved scaler method, and for a table with an encoder its
    imputation."""
    method = resolve_method(cfg.preprocess.scaler, ds.kind)
    return method if ds.table is None else f"{method}+{cfg.preprocess.impute}"


REDRAWN_KEPT = 8  # redrawn splits kept prepared at once (the evidence uses a few seeds at a time)


def size_class(cfg: RunConfig) -> str:
    """Which configurations share one measured population size: a model family; for a recurrent model its cell and
    hidden size too (to the nearest power of two), as a block-diagonal layer's step grows with K·units where a lone
    layer's does not: stacking pays at 16 units and loses at 128 (docs/benchmarks.md, ``bench/stacked_rnn.py``)."""
    m = cfg.model
    if m.family != "rnn":
        return m.family
    return f"rnn-{m.cell}-{2 ** round(math.log2(m.rnn_units))}"


@dataclass
class RunContext:
    """The data a run's trainings share: the prepared split, its copies per scaler, population sizes."""

    cfg: RunConfig
    base_data: PreparedData
    prepared: dict[str, PreparedData] = field(default_factory=dict)  # the base split, by preprocessing_key
    redrawn: OrderedDict[tuple[str, int], PreparedData] = field(default_factory=OrderedDict)  # (that key, split seed)
    sizes: dict[str, int] = field(default_factory=dict)  # population size per size_class, measured once
    gains: dict[str, float] = field(default_factory=dict)  # ... and its measured stacking gain (see population_size)

    def __post_init__(self) -> None:
        self.prepared.setdefault(preprocessing_key(self.cfg, self.base_data.dataset), self.base_data)

    @property
    def task(self) -> str:
        return self.base_data.dataset.task

    @property
    def monitor(self) -> str:
        return objective(self.task)[0]

    def data_for(self, cfg: RunConfig, split_seed: int | None = None) -> PreparedData:
        """The search's split scaled as ``cfg`` asks, prepared once per :func:`preprocessing_key`; with
        ``split_seed``, the train/validation split redrawn with that seed (the test split kept), prepared once per
        seed and key."""
        ds = self.base_data.dataset
        method = preprocessing_key(cfg, ds)
        if split_seed is None:
            if method not in self.prepared:
                self.prepared[method] = prepare_data(cfg, ds, split=self.base_data.split)
            return self.prepared[method]
        key = (method, split_seed)
        if key not in self.redrawn:
            self.redrawn[key] = prepare_data(cfg, ds, split=redraw(ds, self.base_data.split, split_seed))
            while len(self.redrawn) > REDRAWN_KEPT:  # each is a scaled copy of the data: keep the latest few
                self.redrawn.popitem(last=False)
        self.redrawn.move_to_end(key)
        return self.redrawn[key]

    def population_size(self, cfg: RunConfig, seconds: float = math.inf) -> int:
        """Members per population for ``cfg``'s :func:`size_class`: ``search.population``, else measured on the first
        configuration of that class (see :func:`nntune.training.pipeline.measure_population_size`) in at most
        ``seconds`` (0: do not measure, 1 until measured); after running out of memory, half the size that did."""
        key, fixed = size_class(cfg), self.cfg.search.population
        if not stackable(cfg):  # a saved starting model: one at a time (recorded)
            self.sizes.setdefault(key, 1)
            return 1
        if cfg.train.precision == "fp16":  # loss scaling exists for single-model training only
            return 1
        if fixed:
            return min(fixed, self.sizes.get(key, fixed))
        if key not in self.sizes:
            if seconds <= 0:
                return 1
            self.sizes[key], self.gains[key] = measure_population_size(cfg, self.data_for(cfg), seconds=seconds)
        return self.sizes[key]

    def stacking_gain(self, cfg: RunConfig) -> float | None:
        """How much faster per member ``cfg``'s size class trained at its measured population size than alone (None
        until measured, or when the size was set or halved rather than measured)."""
        return self.gains.get(size_class(cfg))

    def shrink_population(self, cfg: RunConfig, tried: int) -> None:
        """After running out of memory with ``tried`` members, use half as many for that size class."""
        self.sizes[size_class(cfg)] = max(1, tried // 2)
        self.gains.pop(size_class(cfg), None)
