"""What the members of one population share (the structure) and what may differ between them (:data:`MEMBER_KEYS`).

Members share everything but the member keys: same layers and shapes, batch size, optimizer kind and device. The
search groups trials into populations by :func:`structure_key`, and its space marks member keys as such.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from nntune import dotted
from nntune.config import ModelConfig, RunConfig
from nntune.errors import SpecError

# dotted config keys that may differ between the members of one population; every other key is structure
MEMBER_KEYS = (
    "seed", "preprocess.augment_strength",
    "model.dropout", "model.dropout_after_pool", "model.dropout_before_fc", "model.dropout_after_fc",
    "train.epochs", "train.lr", "train.weight_decay", "train.momentum", "train.grad_clip", "train.label_smoothing",
    "train.schedule.warmup_epochs", "train.schedule.warmup_start_factor", "train.schedule.gamma",
    "train.schedule.step_size", "train.schedule.milestones", "train.schedule.end_factor", "train.schedule.power",
    "train.schedule.min_lr_factor", "train.schedule.restart_period", "train.schedule.restart_mult",
    "train.schedule.pct_start", "train.schedule.plateau_factor", "train.schedule.plateau_patience",
    "train.early_stopping.enabled", "train.early_stopping.monitor", "train.early_stopping.mode",
    "train.early_stopping.patience", "train.early_stopping.min_delta", "train.early_stopping.baseline",
    "train.early_stopping.start_from_epoch", "train.early_stopping.restore_best_weights",
)
DROPOUT_KEYS = tuple(k.split(".", 1)[1] for k in MEMBER_KEYS if k.startswith("model.dropout"))


def structure_key(cfg: RunConfig) -> str:
    """What members of one population must share: the config without :data:`MEMBER_KEYS` (and the search and evidence
    sections, which do not change how one model trains)."""
    data = cfg.to_dict()
    data.pop("search", None)
    data.pop("evidence", None)
    for key in MEMBER_KEYS:
        node, last = dotted.parent(data, key)
        node.pop(last, None)
    return json.dumps(data, sort_keys=True)


def check_same_structure(cfgs: Sequence[RunConfig]) -> None:
    """A SpecError naming the first key where a member's structure differs from member 0's."""
    keys = structure_key(cfgs[0])
    for i, cfg in enumerate(cfgs[1:], start=1):
        if structure_key(cfg) != keys:
            ref, other = dotted.flatten(cfgs[0].to_dict()), dotted.flatten(cfg.to_dict())
            diff = next((k for k in ref if ref[k] != other.get(k) and k not in MEMBER_KEYS
                         and not k.startswith(("search.", "evidence."))), "?")
            raise SpecError(f"population: member {i} differs from member 0 in {diff} ({other.get(diff)!r} vs "
                            f"{ref.get(diff)!r}); members may differ only in {', '.join(MEMBER_KEYS)}")


def union_model_config(cfgs: Sequence[RunConfig]) -> ModelConfig:
    """Member 0's model config with every dropout rate at its largest over the members: a model with every dropout
    layer any member has (a member whose rate is 0 gets rate 0 in that layer, the identity)."""
    return cfgs[0].model.model_copy(update={k: max(getattr(c.model, k) for c in cfgs) for k in DROPOUT_KEYS})
