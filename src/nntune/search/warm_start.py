"""Warm-started searches: the best configurations of an earlier study become the first trials of a new one.

The earlier study is named by its run directory (its ``result.json``, or ``study.db`` with the study name) or by a
storage URL and study name. Its top complete trials (``search.warm_start_top``, default 5) are enqueued with the
values that fit the new search space: a parameter the new space does not search, a choice it does not offer or a
number outside its range is left to the sampler; a trial with no fitting value at all is skipped. Optuna's
``enqueue_trial`` does the rest (the sampler completes the missing values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from nntune.artifacts import read_result
from nntune.errors import ConfigError
from nntune.search.objectives import ranked, score
from nntune.search.space import Param
from nntune.storage import make_storage, study_url


def source_study(source: str) -> optuna.Study:
    """The earlier study: a run directory (``result.json`` names its storage; else ``study.db``) or a storage URL
    with the study name after ``#`` (``postgresql://host/db#exp1``; default ``nntune``)."""
    path = Path(source)
    study_name = "nntune"
    if "://" in source:
        url, _, name = source.partition("#")
        name = name or study_name
    elif (path / "result.json").is_file():
        study = read_result(path).get("study")
        if not study:
            raise ConfigError(f"--warm-start {source}: a train run has no study; give a tune run directory")
        url, name = study["storage"], study["name"]
    elif (path / "study.db").is_file():
        url, name = study_url(None, path), study_name
    else:
        raise ConfigError(f"--warm-start {source}: not a tune run directory (no result.json or study.db) and not a "
                          "storage URL")
    try:
        return optuna.load_study(study_name=name, storage=make_storage(url))
    except KeyError:
        raise ConfigError(f"--warm-start {source}: no study named {name!r} in {url}") from None


def fits(param: Param, value: Any) -> bool:
    """Whether ``value`` is one the new space could have proposed for ``param``."""
    if param.kind == "choice":
        return value in param.choices
    if param.kind in ("int", "float"):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        whole = param.kind == "float" or (number and float(value).is_integer())
        return number and whole and param.low <= value <= param.high
    return False  # a fixed parameter is not sampled


def warm_trials(study: optuna.Study, params: list[Param], top: int) -> list[dict[str, Any]]:
    """The values of ``study``'s ``top`` best complete trials that fit ``params``, best first (ties by validation
    loss, as every choice among trials: :func:`nntune.search.objectives.ranked`)."""
    by_key = {p.key: p for p in params}
    out = []
    for trial in ranked(study)[:top]:
        values = {k: v for k, v in trial.params.items() if k in by_key and fits(by_key[k], v)}
        if values:
            out.append({"values": values, "number": trial.number, "value": score(trial)})
    return out
