"""What a search process sets up before its first trial: the data, the LR range test, the resolved space.

:class:`Search` is the run context (:mod:`nntune.training.context`) plus what the search loop, the finalists and the
final fit need: the run directory, the space, the tracker and the Ctrl-C record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nntune import rundir
from nntune.config import RunConfig
from nntune.data.sources import Dataset
from nntune.search import halving
from nntune.search.space import Param, resolve_space, trial_epochs
from nntune.tracking import Tracker
from nntune.training.callbacks import Interrupts
from nntune.training.context import RunContext
from nntune.training.finetune import adopt
from nntune.training.pipeline import data_source, prepare_data, resolve_lr


@dataclass
class Search(RunContext):
    """Everything a worker needs to run trials of one study."""

    out: Path = Path(".")
    params: list[Param] = field(default_factory=list)
    lr_find: dict | None = None
    tracker: Tracker = field(default_factory=Tracker)  # TensorBoard / MLflow logging of trials (none by default)
    interrupts: Interrupts | None = None  # the Ctrl-C record of the running search loop
    fingerprint: dict = field(default_factory=dict)  # the data's identity (nntune.rundir), checked on resume

    @property
    def trial_epochs(self) -> int:
        return self.cfg.search.epochs or trial_epochs(len(self.base_data.split.train))

    @property
    def halving(self) -> bool:
        return self.cfg.search.pruner == "halving"

    @property
    def sampled_epochs(self) -> int:
        """The epochs a sampled trial is configured for: its schedule's horizon (the top rung under halving)."""
        return halving.sampled_epochs(self.cfg.search, self.trial_epochs)


def prepare_search(cfg: RunConfig, out: Path, dataset: Dataset | None = None) -> Search:
    """Load the data once (``dataset``, else the config's source), run the LR range test when asked, and resolve the
    search space (fine-tuning: with the saved model's architecture and scaler)."""
    cfg = adopt(cfg)
    data = prepare_data(cfg, dataset)
    lr_info = None
    if cfg.train.lr_auto:
        _, found = resolve_lr(cfg, data)
        lr_info = found.to_dict()
        center = found.suggestion
    else:
        center = None
    table = data.dataset.table
    missing_numbers = table is not None and any(c.kind == "numeric" and c.missing for c in table.columns)
    params = resolve_space(cfg, data.dataset.kind, data.dataset.input_shape, center, len(data.split.train),
                           missing_numbers)
    return Search(cfg, data, out=out, params=params, lr_find=lr_info,
                  fingerprint=rundir.fingerprint(data.dataset, data_source(cfg, dataset)))
