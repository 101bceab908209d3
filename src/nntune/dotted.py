"""Dotted keys over nested dicts (``"train.schedule.name"``): the one flattening and path walk the config, the
search space, the population's structure key and the trackers use."""

from __future__ import annotations

from typing import Any


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``: every non-dict leaf under its dotted key."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parent(data: dict, key: str) -> tuple[dict, str]:
    """(the dict holding ``key``'s last part, that part); a KeyError names the first part that is not a section."""
    *path, last = key.split(".")
    node = data
    for part in path:
        if not isinstance(node.get(part), dict):
            raise KeyError(part)
        node = node[part]
    return node, last
