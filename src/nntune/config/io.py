"""Reading and writing run configs: from dicts and YAML files, dotted ``key=value`` overrides, durations; every
error is one line naming the file, key or flag."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from nntune import dotted
from nntune.atomic import write_text
from nntune.config.schema import RunConfig
from nntune.errors import ConfigError, did_you_mean
from nntune.redact import redact
from nntune.registry import MODEL_PRESETS


def _format_error(err: ValidationError, where: str, labels: dict[str, str] | None = None) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(root)"
    if labels and key in labels:  # a value that came from a CLI flag: name the flag with its config key
        value = first.get("input")
        return f"{labels[key]}: {first['msg']}" + ("" if isinstance(value, dict) else f" (got {value!r})")
    if first["type"] == "extra_forbidden":  # a typo: say which keys that section has
        section: Any = RunConfig
        for part in first["loc"][:-1]:
            section = section.model_fields[part].annotation
        return (f"{where}: unknown key {key!r}; valid keys here: {', '.join(section.model_fields)}"
                f"{did_you_mean(str(first['loc'][-1]), section.model_fields)}")
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{where}: {key}: {first['msg']}{shown}"


def build_config(data: dict[str, Any] | None = None, where: str = "config",
                 labels: dict[str, str] | None = None) -> RunConfig:
    """Validate a plain dict into a RunConfig; errors name the key path (or its label, e.g. the CLI flag)."""
    try:
        return RunConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_error(err, where, labels)) from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run config; unknown keys and bad values are errors naming the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(err)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(raw).__name__}")
    return build_config(raw, where=str(path))


def yaml_problem(err: yaml.YAMLError) -> str:
    """What a YAML parser error says, with the line and column it points at (1-based), in one line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the config as YAML (atomically)."""
    write_text(path, yaml.safe_dump(redact(config.to_dict()), sort_keys=False))


def apply_overrides(config: RunConfig, overrides: list[str] | dict[str, Any],
                    labels: dict[str, str] | None = None) -> RunConfig:
    """Return a copy with dotted overrides applied, e.g. ``["train.lr=0.01", "model.widths=[64,32]"]``.

    Values are parsed as YAML scalars/lists so numbers, booleans and lists work from a shell; an invalid value's
    error names ``labels[key]`` (e.g. the CLI flag it came from) when given, else the key. A ``model.preset``
    override sets the preset's model settings first, so the other overrides in the same call win over them.
    """
    data, full = config.to_dict(given=True), config.to_dict()  # only what was given stays "given"
    items = list(overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides))
    preset = dict(items).get("model.preset")
    if preset in MODEL_PRESETS:  # an unknown name fails below, in validation, naming the key
        data.setdefault("model", {}).update(MODEL_PRESETS[preset])
    for key, value in items:
        try:
            node, last = dotted.parent(full, key)
        except KeyError as err:
            raise ConfigError(f"override {key}: unknown section {err.args[0]!r}{did_you_mean(err.args[0], full)}"
                              ) from None
        if last not in node:
            raise ConfigError(f"override {key}: unknown key {last!r}{did_you_mean(last, node)}")
        target = data
        for part in key.split(".")[:-1]:
            target = target.setdefault(part, {})
        target[last] = value
    return build_config(data, where="override", labels=labels)


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def parse_duration(text: str | float | None, flag: str = "--timeout") -> float | None:
    """``90``, ``90s``, ``10m``, ``1.5h`` -> seconds; errors name ``flag``."""
    if text is None or isinstance(text, (int, float)):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ConfigError(f"{flag}: expected a duration like 90s, 10m or 1h, got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
