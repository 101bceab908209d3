"""Command-line flags to a :class:`~nntune.config.RunConfig`: the config file (or the defaults), then the flags,
then ``--set`` overrides, with the flag-specific parsing (``--lr auto``, ``--widths 256,128``, durations, question
lists, a ``--space`` file) done here so that errors name the flag the user typed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nntune.cli.options import ALL_OPTIONS
from nntune.config import RunConfig, apply_overrides, load_config, parse_duration
from nntune.config.io import yaml_problem
from nntune.errors import NNTuneError


def config_from(kwargs: dict[str, Any]) -> RunConfig:
    """The config file (or defaults), then option flags, then --set overrides. Pops what it uses from ``kwargs``:
    ``config_file``, ``overrides``, ``seed`` and every ``section__key`` flag."""
    config_file = kwargs.pop("config_file", None)
    overrides = list(kwargs.pop("overrides", ()) or ())
    cfg = load_config(config_file) if config_file else RunConfig()
    flags: dict[str, Any] = {}
    for name, value in list(kwargs.items()):
        if "__" in name or name == "seed":
            kwargs.pop(name)
            if value is None:
                continue
            key = name.replace("__", ".")
            if key == "model.widths":
                value = int_list(value, "--widths")
            if key in ("data.drop", "data.categorical"):
                value = [c.strip() for c in value.split(",") if c.strip()]
            if key == "train.lr":
                if value == "auto":
                    flags["train.lr_auto"] = True
                    continue
                value = _float(value, "--lr")
            if key == "data.path":
                flags["data.dataset"] = None
                value = str(value)
            if key == "finetune.init_from":
                value = str(value)
            flags[key] = value
    cfg = apply_overrides(cfg, flags, labels=flag_names()) if flags else cfg
    return apply_overrides(cfg, overrides) if overrides else cfg


def flag_names() -> dict[str, str]:
    """Config key -> the CLI flag that sets it (``train.lr`` -> ``--lr``), for errors that name what the user typed."""
    return {key: f"{flag.split('/')[0]} ({key})" for table in ALL_OPTIONS for flag, key, _, _ in table}


def int_list(text: str, flag: str) -> list[int]:
    """``"256, 128"`` -> ``[256, 128]``; anything else is an error naming ``flag``."""
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise NNTuneError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise NNTuneError(f"{flag}: expected a number or 'auto', got {text!r}") from None


def evidence_flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    """--evidence-budget and --questions (popped from ``kwargs``) as config values (a duration, a list)."""
    flags: dict[str, Any] = {}
    budget = kwargs.pop("evidence__budget", None)
    if budget is not None:
        flags["evidence.budget"] = parse_duration(budget, "--evidence-budget")
    questions = kwargs.pop("evidence__questions", None)
    if questions is not None:
        flags["evidence.questions"] = [q.strip() for q in questions.split(",") if q.strip()]
    return flags


def search_config(kwargs: dict[str, Any]) -> RunConfig:
    """:func:`config_from` for the search commands: also ``--timeout`` and ``--evidence-budget`` as durations,
    ``--questions`` as a list and ``--space FILE`` merged into ``search.space``."""
    space_file = kwargs.pop("space_file", None)
    timeout = kwargs.pop("search__timeout", None)
    evidence = evidence_flags(kwargs)
    cfg = config_from(kwargs)
    if evidence:
        cfg = apply_overrides(cfg, evidence, labels=flag_names())
    if timeout is not None:
        cfg = apply_overrides(cfg, {"search.timeout": parse_duration(timeout)}, labels=flag_names())
    if space_file is not None:
        cfg = apply_overrides(cfg, {"search.space": {**(cfg.search.space or {}), **_read_space(space_file)}})
    return cfg


def _read_space(space_file: Path) -> dict:
    try:
        space = yaml.safe_load(Path(space_file).read_text())
    except yaml.YAMLError as err:
        raise NNTuneError(f"{space_file}: not valid YAML ({yaml_problem(err)})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise NNTuneError(f"{space_file}: cannot read the search space ({err.__class__.__name__})") from None
    if not isinstance(space, dict):
        raise NNTuneError(f"{space_file}: a search space must be a mapping of config keys")
    return space
