"""Search space: what to search, as a mapping from config key to a fixed value, a range or a choice.

A parameter is written as (YAML or Python):

- a fixed value: ``model.activation: relu``
- a choice: ``model.activation: {choice: [relu, gelu]}``
- a range: ``train.lr: {low: 1.0e-4, high: 1.0e-1, log: true}`` (int when both ends are ints; optional ``step``)
- any of these with a condition: ``{..., when: {model.family: cnn}}`` (a value or a list of allowed values)

Keys are dotted RunConfig keys plus two virtual keys, ``model.dropout_placement`` (none, after_pool, before_fc,
after_fc, or places joined by ``+``) and ``model.dropout_rate``, which set the CNN's three dropout rates. Every range
is checked before any trial runs, and errors name the key path.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import optuna

from nntune import dotted, registry
from nntune.config import DROPOUT_PLACES, RunConfig, apply_overrides
from nntune.data.scalers import resolve_method
from nntune.errors import ConfigError, did_you_mean
from nntune.models.inspect import layer_groups
from nntune.search import halving
from nntune.training.finetune import saved_model
from nntune.training.population.structure import MEMBER_KEYS

VIRTUAL = {"model.dropout_placement", "model.dropout_rate"}
MLP, CNN, RNN = {"model.family": "mlp"}, {"model.family": "cnn"}, {"model.family": "rnn"}
SCHEDULE_WITH_GAMMA = ["step", "exponential"]


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # fixed | choice | int | float
    value: Any = None
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    when: tuple[tuple[str, tuple], ...] = ()

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) in allowed for k, allowed in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self, points: int = 4) -> list:
        """Discrete values for the grid sampler (float ranges are cut into ``points`` values)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            values = list(range(int(self.low), int(self.high) + 1, step))
            return values if len(values) <= points else [values[round(i * (len(values) - 1) / (points - 1))]
                                                         for i in range(points)]
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            return [math.exp(a + (b - a) * i / (points - 1)) for i in range(points)]
        return [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)]


def trial_epochs(n_train: int) -> int:
    """Maximum epochs per trial from the training-set size: about 50,000 sample visits (some 800 steps at batch 64),
    at least 12 and at most 60 epochs; early stopping ends most trials sooner."""
    return int(min(60, max(12, round(50_000 / max(1, n_train)))))


def default_space(kind: str, input_shape: tuple[int, ...], lr_center: float | None = None,
                  max_epochs: int = 30, n_train: int = 1000, missing_numbers: bool = False) -> dict[str, Any]:
    """The default space for the seed's questions, adapted to the data; the rules, in one place:

    - tables: MLP only, scalers zscore/minmax/robust, no augmentation; median or mean imputation when a numeric
      column has missing values (``missing_numbers``);
    - 1-D signals (C, L): MLP, CNN or RNN; up to log2(L/4) conv blocks (at most 4, so the pooled length stays >= 4);
      kernel 3, 5, 7 (and 9 from L >= 64); flatten or global-average head; GRU or LSTM with 1-3 layers of 16-256
      units, optionally bidirectional, with a conv front-end of 0/16/32 filters, last/mean/attention pooling and
      dropout between recurrent layers; augmentation none/light/signal (shift, amplitude, noise); scalers
      channel/zscore/minmax;
    - images (C, H, W): MLP or CNN; up to log2(min(H, W)) - 1 conv blocks (at most 4); kernel 3; flatten or GAP head;
      augmentation none/light and digits (one channel) or natural (RGB);
    - batch sizes 16-64 below 1,000 training samples, else 32-128; the step of a step schedule at most half the
      trial's epochs, warmup at most 3 and always leaving epochs for the schedule;
    - the LR range is 1e-4..3e-2, or a decade either side of the LR range test's suggestion when it ran.
    """
    lr = _lr_range(lr_center)
    space: dict[str, Any] = {
        "model.family": {"choice": ["mlp", "cnn"]} if kind != "tabular" else "mlp",
        "model.hidden_layers": {"low": 1, "high": 4, "when": MLP},
        "model.units": {"low": 16 if kind == "tabular" else 32, "high": 512, "log": True, "when": MLP},
        "model.funnel": {"low": 0.25, "high": 1.0, "when": MLP},
        "model.dropout": {"low": 0.0, "high": 0.5, "when": MLP},
        "model.activation": {"choice": registry.searched(registry.ACTIVATIONS)},
        "model.batch_norm": {"choice": [False, True]},
        "train.lr": lr,
        "train.optimizer": {"choice": registry.searched(registry.OPTIMIZERS)},
        "train.weight_decay": {"low": 1e-6, "high": 1e-1, "log": True},
        "train.batch_size": {"choice": [16, 32, 64] if n_train < 1000 else [32, 64, 128]},
        "train.schedule.name": {"choice": registry.searched(registry.SCHEDULES)},
        "train.schedule.gamma": {"low": 0.5, "high": 0.98, "when": {"train.schedule.name": SCHEDULE_WITH_GAMMA}},
        "train.schedule.step_size": {"low": 2, "high": max(3, max_epochs // 2), "when": {"train.schedule.name":
                                                                                         ["step"]}},
        "train.schedule.warmup_epochs": {"low": 0, "high": max(0, min(3, max_epochs - 2)),
                                         "when": {"train.schedule.name": ["none", "cosine", "step", "exponential"]}},
        "train.early_stopping.patience": {"low": 3, "high": 10},
        "preprocess.scaler": {"choice": ["zscore", "minmax", "robust"] if kind == "tabular"
                              else ["channel", "zscore", "minmax"]},
    }
    if kind == "tabular":
        if missing_numbers:
            space["preprocess.impute"] = {"choice": ["median", "mean"]}
        return space
    if kind == "signal":
        length = input_shape[-1]
        max_blocks = max(1, min(4, int(math.log2(max(1, length / 4)))))
        kernels, augment = [3, 5, 7, 9] if length >= 64 else [3, 5, 7], ["none", "light", "signal"]
        space["model.family"] = {"choice": ["mlp", "cnn", "rnn"]}
        space.update({
            "model.cell": {"choice": ["gru", "lstm"], "when": RNN},
            "model.rnn_layers": {"low": 1, "high": 3, "when": RNN},
            "model.rnn_units": {"low": 16, "high": 256, "log": True, "when": RNN},
            "model.bidirectional": {"choice": [False, True], "when": RNN},
            "model.pooling": {"choice": ["last", "mean", "attention"], "when": RNN},
            "model.frontend_filters": {"choice": [0, 16, 32], "when": RNN},
            "model.rnn_dropout": {"low": 0.0, "high": 0.4, "when": {"model.family": "rnn", "model.rnn_layers": [2, 3]}},
        })
    else:
        max_blocks = max(1, min(4, int(math.log2(min(input_shape[1:]))) - 1))
        kernels, augment = 3, ["none", "light", "natural" if input_shape[0] == 3 else "digits"]
    if kind == "signal":  # the record holders' vocabulary: dilated convolutions (a TCN), pooling or none
        space.update({
            "model.dilation_growth": {"choice": [1, 2], "when": CNN},
            "model.pool": {"choice": ["max", "avg", "none"], "when": CNN},
        })
    space.update({
        "model.residual": {"choice": [False, True], "when": CNN},
        "model.convs_per_block": {"choice": [1, 2], "when": CNN},
        "model.conv_blocks": {"low": 1, "high": max_blocks, "when": CNN} if max_blocks > 1 else 1,
        "model.kernel_size": {"choice": kernels, "when": CNN} if isinstance(kernels, list) else kernels,
        "model.filters": {"low": 8, "high": 64, "log": True, "when": CNN},
        "model.filter_multiplier": {"choice": [1.0, 1.5, 2.0], "when": CNN},
        "model.head": {"choice": ["flatten", "gap"], "when": CNN},
        "model.fc_units": {"low": 32, "high": 256, "log": True, "when": {"model.family": ["cnn", "rnn"]}},
        "model.dropout_placement": {"choice": ["none", "after_pool", "before_fc", "after_fc",
                                               "after_pool+after_fc"], "when": CNN},
        "model.dropout_rate": {"low": 0.1, "high": 0.5, "when": {
            "model.dropout_placement": ["after_pool", "before_fc", "after_fc", "after_pool+after_fc"]}},
        "preprocess.augment": {"choice": augment},
        "preprocess.augment_strength": {"low": 0.1, "high": 1.0, "when": {"preprocess.augment": augment[1:]}},
    })
    return space


NOT_SEARCHABLE = ("data.", "search.", "evidence.", "seed", "train.epochs", "train.lr_auto", "train.device",
                  "train.threads", "finetune.init_from")


def _lr_range(lr_center: float | None) -> dict[str, Any]:
    """The searched LR: 1e-4..3e-2, or a decade either side of the range test's suggestion when it ran."""
    return ({"low": lr_center / 10, "high": min(lr_center * 10, 1.0), "log": True} if lr_center
            else {"low": 1e-4, "high": 3e-2, "log": True})


def finetune_space(groups: int, lr_center: float | None = None, max_epochs: int = 30) -> dict[str, Any]:
    """The space of a fine-tuning search (the architecture is the saved model's): how many of its ``groups`` layer
    groups train from the start (all, down to the head alone), gradual unfreezing (off, or one group every 1 to a
    quarter of the trial's epochs), the LR and the per-group LR multiplier."""
    lr = _lr_range(lr_center)
    return {
        "finetune.freeze_all_but_last": {"low": 1, "high": max(1, groups)} if groups > 1 else 1,
        "finetune.unfreeze_after": {"choice": [None, *sorted({1, 2, max(2, max_epochs // 4)})]},
        "finetune.lr_mult": {"low": 0.1, "high": 1.0, "log": True},
        "train.lr": lr,
    }


def _known_key(key: str) -> bool:
    """A searchable RunConfig field (or a virtual key); data, search, seed and run-level settings are not."""
    if key in VIRTUAL:
        return True
    if key.startswith(NOT_SEARCHABLE):
        return False
    node: Any = RunConfig
    for part in key.split("."):
        fields = getattr(node, "model_fields", None)
        if fields is None or part not in fields:
            return False
        node = fields[part].annotation
    return not hasattr(node, "model_fields")


def _searchable_keys() -> list[str]:
    return [k for k in [*dotted.flatten(RunConfig().to_dict()), *VIRTUAL] if _known_key(k)]


def parse_space(spec: dict[str, Any], where: str = "search.space") -> list[Param]:
    """Validate a space spec into Params (in order); impossible ranges fail here, naming the key path."""
    params = []
    for key, raw in spec.items():
        path = f"{where}.{key}"
        if not _known_key(key):
            fixed = key.startswith(NOT_SEARCHABLE)
            why = "is fixed for the whole search" if fixed else "is not a config key"
            hint = "" if fixed else did_you_mean(key, _searchable_keys())
            raise ConfigError(f"{path}: {key!r} {why}; searchable keys are model.*, train.*, preprocess.*{hint}")
        when: tuple = ()
        if isinstance(raw, dict) and "when" in raw:
            raw = dict(raw)
            cond = raw.pop("when")
            if not isinstance(cond, dict) or not cond:
                raise ConfigError(f"{path}.when: expected a mapping of key: value(s)")
            unknown = [k for k in cond if not _known_key(k)]
            if unknown:
                raise ConfigError(f"{path}.when: unknown key {unknown[0]!r}"
                                  f"{did_you_mean(unknown[0], _searchable_keys())}")
            when = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else (v,)) for k, v in cond.items())
        if isinstance(raw, list):
            raw = {"choice": raw}
        if not isinstance(raw, dict):
            params.append(Param(key, "fixed", value=raw, when=when))
            continue
        if "choice" in raw:
            extra = set(raw) - {"choice"}
            if extra:
                raise ConfigError(f"{path}: unexpected {sorted(extra)[0]!r} beside 'choice'")
            choices = raw["choice"]
            if not isinstance(choices, (list, tuple)) or not choices:
                raise ConfigError(f"{path}: choice must be a non-empty list")
            params.append(Param(key, "choice", choices=tuple(choices), when=when))
            continue
        extra = set(raw) - {"low", "high", "log", "step"}
        if extra or not {"low", "high"} <= set(raw):
            bad = sorted(extra)[0] if extra else "low/high"
            raise ConfigError(f"{path}: a range needs low and high (optional log, step); got {bad!r}")
        low, high, log, step = raw["low"], raw["high"], bool(raw.get("log", False)), raw.get("step")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise ConfigError(f"{path}: low and high must be numbers, got {low!r} and {high!r}")
        if low > high:
            raise ConfigError(f"{path}: low {low} > high {high}")
        if log and low <= 0:
            raise ConfigError(f"{path}: a log range needs low > 0, got {low}")
        if step is not None and (step <= 0 or log):
            raise ConfigError(f"{path}: step must be > 0 and cannot combine with log")
        kind = "int" if isinstance(low, int) and isinstance(high, int) and (step is None or float(step).is_integer()) \
            else "float"
        params.append(Param(key, kind, low=low, high=high, log=log, step=step, when=when))
    _check_values(params, where)
    return params


def _check_values(params: list[Param], where: str) -> None:
    """Try the extreme values of every parameter against the config schema, so bad values fail before trials."""
    for p in params:
        candidates = ([p.value] if p.kind == "fixed" else list(p.choices) if p.kind == "choice" else [p.low, p.high])
        for value in candidates:
            probe = {p.key: value}
            if p.key == "model.dropout_rate":  # a rate only lands in the config with a placement
                probe["model.dropout_placement"] = "+".join(DROPOUT_PLACES)
            if p.key.startswith("finetune."):  # freezing settings exist for a saved model only
                probe["finetune.init_from"] = "saved-model"
            try:
                to_config(RunConfig(), probe)
            except ConfigError as err:
                raise ConfigError(f"{where}.{p.key}: value {value!r} is invalid ({err})") from None


def to_config(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """Apply sampled values (translating the virtual dropout keys) to a copy of ``base``."""
    values = dict(values)
    placement = values.pop("model.dropout_placement", None)
    rate = values.pop("model.dropout_rate", 0.0)
    if placement is not None:
        places = [] if placement == "none" else placement.split("+")
        for place in places:
            if place not in DROPOUT_PLACES:
                raise ConfigError(f"model.dropout_placement: unknown place {place!r} (use {', '.join(DROPOUT_PLACES)})")
        for place in DROPOUT_PLACES:
            values[f"model.dropout_{place}"] = rate if place in places else 0.0
    return apply_overrides(base, values) if values else base


def sample(trial: optuna.Trial, params: list[Param], base: RunConfig) -> tuple[RunConfig, dict[str, Any]]:
    """Suggest every active parameter (in order, so conditions see earlier choices); return config and values."""
    flat = dotted.flatten(base.to_dict())
    values: dict[str, Any] = {}
    for p in params:
        if p.active({**flat, **values}):
            values[p.key] = p.suggest(trial)
    return to_config(base, values), values


def resolve_space(cfg: RunConfig, kind: str, input_shape: tuple[int, ...], lr_center: float | None = None,
                  n_train: int = 1000, missing_numbers: bool = False) -> list[Param]:
    """The default space, with the config's ``search.space`` entries overriding (or adding) keys."""
    # schedule ranges on the horizon the sampled trials train under
    epochs = halving.sampled_epochs(cfg.search, cfg.search.epochs or trial_epochs(n_train))
    given = copy.deepcopy(cfg.search.space or {})
    if cfg.finetune.init_from is not None:
        fixed = [k for k in given if k.startswith("model.") or k == "preprocess.scaler"]
        if fixed:
            raise ConfigError(f"search.space: {fixed[0]} cannot be searched when fine-tuning (--init-from): the "
                              "saved model fixes the architecture and the scaler")
        space = finetune_space(len(layer_groups(saved_model(cfg).model)), lr_center, epochs)
        if cfg.finetune.freeze is not None:  # frozen by name: the group count is not searched
            space.pop("finetune.freeze_all_but_last")
    else:
        space = default_space(kind, input_shape, lr_center, epochs, n_train, missing_numbers)
    for key, value in given.items():
        space[key] = value
    return parse_space(space)


def is_member_key(key: str) -> bool:
    """Whether members of one population may differ in ``key`` (LR, weight decay, dropout rate, ...); every other
    searched key is structure, fixed for a whole population."""
    return key == "model.dropout_rate" or key in MEMBER_KEYS


def structure_values(values: dict[str, Any]) -> dict[str, Any]:
    """The structure part of a trial's sampled values."""
    return {k: v for k, v in values.items() if not is_member_key(k)}


TCN_DEFAULT_KERNEL = 7  # the TCN default trial's kernel (see default_trials)
# the image default beside the plain CNN (see default_trials); its augmentation is the space's image preset
REGULARIZED_CNN = {"model.family": "cnn", "model.batch_norm": True, "model.dropout_before_fc": 0.3}
IMAGE_AUGMENTS = ("digits", "natural")  # the image presets the space offers: one channel, RGB


def default_trials(params: list[Param], base: RunConfig, kind: str) -> list[dict[str, Any]]:
    """nntune's default configuration, one per family the space offers, as values of the searched parameters (so a
    study can enqueue them): each parameter takes ``base``'s value, clamped into a range it falls outside of; a choice
    that does not list it is left to the sampler. Fixed parameters are not sampled, so they stay as the user set them.
    For signals whose space searches dilation, the TCN preset is a default too: untuned, it scored 0.845 on the
    signals data against the default CNN's 0.730 (3 seeds, docs/benchmarks.md), so the floor includes it. The space
    holds 4 of its 5 blocks, so it takes kernel 7 (receptive field 181 steps, against 61 with the preset's 3): on
    signals 0.884 vs 0.826, on the long-range ``delays`` task 0.90 vs 0.47 (2 seeds, docs/benchmarks.md).
    For images the third default is the CNN regularized: batch norm, dropout 0.3 before the FC layer and the space's
    augmentation preset (digits or natural); untuned it scored 0.983 on mnist5k and 0.996 on digits against the
    plain CNN's 0.972 and 0.984 (3 seeds each, docs/benchmarks.md). A key the space fixes keeps its value, and a
    default equal to another is asked once.
    """
    by_key = {p.key: p for p in params}
    family = by_key.get("model.family")
    families = ([family.value] if family.kind == "fixed" else list(family.choices)) if family else [base.model.family]
    if len(families) > 1:  # the RNN is offered to the sampler, not run as a default: on a CPU a recurrent trial
        families = [f for f in families if f != "rnn"] or families  # costs some 15 CNN trials (docs/search.md)
    starts = [{"model.family": fam} for fam in families]
    if kind == "signal" and "cnn" in families and "model.dilation_growth" in by_key:
        starts.append({"model.family": "cnn", "model.preset": "tcn", "model.kernel_size": TCN_DEFAULT_KERNEL})
    if kind == "image" and "cnn" in families:
        augment = by_key.get("preprocess.augment")
        preset = [a for a in augment.choices if a in IMAGE_AUGMENTS] if augment and augment.kind == "choice" else []
        starts.append({**REGULARIZED_CNN, **({"preprocess.augment": preset[0]} if preset else {})})
    trials = []
    for start in starts:
        cfg = apply_overrides(base, start)
        flat = dotted.flatten(cfg.to_dict())
        flat["preprocess.scaler"] = resolve_method(cfg.preprocess.scaler, kind)
        rates = {place: flat[f"model.dropout_{place}"] for place in DROPOUT_PLACES}
        flat["model.dropout_placement"] = "+".join(p for p in DROPOUT_PLACES if rates[p] > 0) or "none"
        flat["model.dropout_rate"] = max(rates.values())
        values: dict[str, Any] = {}
        for p in params:
            if p.kind == "fixed" or not p.active({**flat, **values}):
                continue
            value = flat[p.key]
            if p.kind == "choice":
                if value in p.choices:
                    values[p.key] = value
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # e.g. no gradient clipping (None) by default: the sampler picks
            value = min(max(value, p.low), p.high)
            if p.step:  # the nearest point of the step grid that is inside the range
                value = p.low + min(round((value - p.low) / p.step), math.floor((p.high - p.low) / p.step)) * p.step
            values[p.key] = int(round(value)) if p.kind == "int" else float(value)
        trials.append(values)
    return trials
