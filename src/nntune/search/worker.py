"""One worker of a shared study: more trials for a study that other processes (``nntune tune``, other workers) run
too, through one storage URL. Optuna coordinates them; a worker runs trials only (no finalists, no final fit, no
result.json), so it is the search loop of :func:`nntune.search.study.tune` without what follows it. A Ray worker
(:mod:`nntune.cluster.ray`) runs the same loop, :func:`work`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from nntune.config import RunConfig
from nntune.errors import NNTuneError
from nntune.search.budget import Budget, count
from nntune.search.setup import Search, prepare_search
from nntune.search.study import open_study
from nntune.search.trials import run_trials
from nntune.tracking import Tracker


def run_worker(cfg: RunConfig, out: str | Path, progress: bool = False, log: Sequence[str] = ()) -> dict[str, Any]:
    """Run trials of the study ``cfg.search.study_name`` in ``cfg.search.storage`` (required) until the budget
    (``search.trials`` finished in the study, ``search.timeout`` from now) ends; ``out`` keeps this worker's trial
    weights, ``log`` names loggers (``tensorboard``, ``mlflow``). Returns the study's name, its ``finished`` trials
    (complete or pruned, every worker's), what stopped this worker (``stopped_by``) and its ``seconds``."""
    if not cfg.search.storage:
        raise NNTuneError("--storage: a worker needs the shared study's URL, e.g. postgresql://user@host/db")
    out = Path(out)
    budget = Budget.from_config(cfg.search)
    out.mkdir(parents=True, exist_ok=True)
    search = prepare_search(cfg, out)
    return work(search, open_study(search, resume=True, worker=True), budget, progress, log)


def work(search: Search, study: optuna.Study, budget: Budget, progress: bool = False,
         log: Sequence[str] = ()) -> dict[str, Any]:
    """The loop of every worker (``nntune worker``, a Ray worker): trials of the open ``study`` until ``budget``
    ends, with this worker's trials logged to ``log``; returns what :func:`run_worker` does."""
    with Tracker(log, search.out, name=f"worker {study.study_name}", config=search.cfg.to_dict(),
                 command="worker") as search.tracker:
        run_trials(search, study, budget, progress=progress)
    return {"study": study.study_name, "finished": count(study), "stopped_by": budget.stopped_by,
            "seconds": budget.elapsed()}
