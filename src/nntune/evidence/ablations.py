"""The controlled variants per question around a chosen configuration: change one thing, keep everything else.

:func:`variants` lists, for each of the seed's questions, the alternatives worth measuring against the chosen
configuration, each with a rank (0 = most informative) so that a budget spends itself on the first alternatives of
every question before the later ones. A question that cannot be tested on this model or data gets the reason instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nntune import registry
from nntune.config import DROPOUT_PLACES, ModelConfig, RunConfig, ScheduleConfig, apply_overrides
from nntune.data.scalers import resolve_method

ACTIVATIONS = registry.evidence_order(registry.ACTIVATIONS)
SCALERS = {"tabular": ("none", "zscore", "minmax", "robust", "unit"),
           "signal": ("none", "channel", "zscore", "minmax", "robust", "unit"),
           "image": ("none", "channel", "zscore", "minmax", "robust", "unit")}
SCHEDULE_ORDER = registry.evidence_order(registry.SCHEDULES)
NO_DROPOUT_RATE = 0.25  # the rate placements are compared at when the chosen model has no dropout


@dataclass
class Variant:
    """One alternative to the chosen configuration: its question, a readable name and the config changes."""

    question: str
    name: str
    overrides: dict[str, Any]
    rank: int
    config: RunConfig | None = field(default=None, repr=False)

    def key(self) -> str:
        """The variant's configuration, as text (two variants with the same key are the same experiment)."""
        return json.dumps(self.config.to_dict(), sort_keys=True)


def chosen_names(cfg: RunConfig, kind: str) -> dict[str, str]:
    """How each question's chosen setting reads in a verdict."""
    m, t, p = cfg.model, cfg.train, cfg.preprocess
    s = t.schedule
    ft = cfg.finetune
    frozen = (f"layers matching {ft.freeze!r} frozen" if ft.freeze else
              f"the last {ft.freeze_all_but_last} groups training" if ft.freeze_all_but_last is not None
              else "every layer training")
    return {
        "trainable": "model" if ft.init_from is None else frozen + (
            f", one more every {ft.unfreeze_after} epochs" if ft.unfreeze_after else "")
        + (f", LR ×{ft.lr_mult:g} per earlier group" if ft.lr_mult != 1 else ""),
        "dropout": _dropout_name(cfg),
        "depth": {"cnn": _count(m.conv_blocks, "conv block"), "rnn": _count(m.rnn_layers, "recurrent layer")}.get(
            m.family, _count(len(m.hidden_widths()), "hidden layer")),
        "width": {"cnn": f"filters {m.filters}, FC {m.fc_units}", "rnn": f"{m.rnn_units} units"}.get(
            m.family, "widths " + "-".join(map(str, m.hidden_widths()))),
        "lr": f"lr {t.lr:.3g}",
        "activation": m.activation,
        "normalization": resolve_method(p.scaler, kind),
        "augmentation": "none" if p.augment == "none" else f"{p.augment} at {p.augment_strength:.2f}",
        "schedule": s.name + (f" + {s.warmup_epochs} warmup" if s.warmup_epochs else ""),
        "early_stopping": "",
    }


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _dropout_name(cfg: RunConfig) -> str:
    m = cfg.model
    if m.family == "rnn":
        between = m.rnn_dropout if m.rnn_layers > 1 else 0.0  # one layer: nothing is between layers
        places = [f"{name} {rate:.2f}" for name, rate in (("between recurrent layers", between),
                                                          ("after FC", m.dropout_after_fc)) if rate > 0]
        return "+".join(places) if places else "no dropout"
    if m.family == "mlp":
        return f"dropout {m.dropout:.2f}" if m.dropout else "no dropout"
    places = [f"{p} {getattr(m, f'dropout_{p}'):.2f}" for p in DROPOUT_PLACES if getattr(m, f"dropout_{p}") > 0]
    return "+".join(places) if places else "no dropout"


def variants(chosen: RunConfig, kind: str, lr_suggestion: float | None = None) -> dict[str, list[Variant] | str]:
    """Per question with experiments, the variants to run (or why there are none); see :func:`build` for their
    configurations. Questions 1 (trainable) and 10 (early stopping) need no variants of their own."""
    if chosen.finetune.init_from is not None:  # the saved model fixes the architecture and the scaler
        fixed = "Not testable here: a fine-tuned model keeps the saved model's architecture and scaler."
        return {"trainable": _freezing(chosen), "dropout": fixed, "depth": fixed, "width": fixed,
                "lr": _lr(chosen, lr_suggestion), "activation": fixed, "normalization": fixed,
                "augmentation": _augmentation(chosen, kind), "schedule": _schedule(chosen)}
    return {"dropout": _dropout(chosen), "depth": _depth(chosen) + _families(chosen, kind), "width": _width(chosen),
            "lr": _lr(chosen, lr_suggestion), "activation": _activation(chosen),
            "normalization": _normalization(chosen, kind), "augmentation": _augmentation(chosen, kind),
            "schedule": _schedule(chosen)}


def _freezing(cfg: RunConfig) -> list[Variant]:
    """Question 1 when fine-tuning: train every layer, the head alone, one group more or less, gradual unfreezing
    on or off, one LR for all groups or smaller ones for earlier groups."""
    ft = cfg.finetune
    plain = {"finetune.freeze": None, "finetune.unfreeze_after": None}
    out = [_v("trainable", "every layer trains", {**plain, "finetune.freeze_all_but_last": None}, 0),
           _v("trainable", "the head alone trains", {**plain, "finetune.freeze_all_but_last": 1}, 1)]
    k = ft.freeze_all_but_last
    if k is not None:
        out += [_v("trainable", f"the last {k + 1} groups train", {"finetune.freeze_all_but_last": k + 1}, 2)]
        if k > 1:
            out.append(_v("trainable", f"the last {k - 1} groups train", {"finetune.freeze_all_but_last": k - 1}, 3))
    if ft.unfreeze_after:
        out.append(_v("trainable", "no gradual unfreezing", {"finetune.unfreeze_after": None}, 2))
    elif ft.freeze is not None or k is not None:
        out.append(_v("trainable", "unfreeze a group every 2 epochs", {"finetune.unfreeze_after": 2}, 4))
    out.append(_v("trainable", "one LR for every group" if ft.lr_mult != 1 else "earlier groups at ½ the LR",
                  {"finetune.lr_mult": 1.0 if ft.lr_mult != 1 else 0.5}, 5))
    return out


def _v(question: str, name: str, overrides: dict[str, Any], rank: int) -> Variant:
    return Variant(question, name, overrides, rank)


def _dropout(cfg: RunConfig) -> list[Variant] | str:
    m = cfg.model
    if m.family == "rnn":  # between recurrent layers (with two or more) and after the FC head's layers
        active = {"model.rnn_dropout": 0.0} if m.rnn_layers > 1 else {}
        out = [_v("dropout", "no dropout", {**active, "model.dropout_after_fc": 0.0}, 0)]
        if m.rnn_layers > 1:
            out += [_v("dropout", f"between recurrent layers {r:.2f}", {"model.rnn_dropout": r}, i)
                    for i, r in ((1, 0.2), (2, 0.4)) if abs(r - m.rnn_dropout) > 1e-9]
        if m.fc_layers:
            out += [_v("dropout", f"after FC {r:.2f}", {"model.dropout_after_fc": r}, 3) for r in (0.3,)
                    if abs(r - m.dropout_after_fc) > 1e-9]
        return out
    if m.family == "mlp":
        r = m.dropout
        if r > 0:
            return [_v("dropout", "no dropout", {"model.dropout": 0.0}, 0),
                    _v("dropout", f"rate ×½ ({r / 2:.2f})", {"model.dropout": r / 2}, 1),
                    _v("dropout", f"rate ×2 ({min(2 * r, 0.9):.2f})", {"model.dropout": min(2 * r, 0.9)}, 2)]
        return [_v("dropout", f"dropout {x:.2f}", {"model.dropout": x}, i) for i, x in enumerate((0.1, 0.25, 0.5))]
    rates = {p: getattr(m, f"dropout_{p}") for p in DROPOUT_PLACES}
    rate = max(rates.values()) or NO_DROPOUT_RATE
    out = []
    places = DROPOUT_PLACES
    combos = [()] + [(p,) for p in places] + [(a, b) for i, a in enumerate(places) for b in places[i + 1:]] + [places]
    for i, combo in enumerate(combos):
        name = "no dropout" if not combo else "+".join(combo) + f" {rate:.2f}"
        rank = 0 if not combo else (2 + i if len(combo) == 1 else 6 + i)
        out.append(_v("dropout", name, {f"model.dropout_{p}": rate if p in combo else 0.0 for p in places}, rank))
    if any(rates.values()):
        for factor, label, rank in ((0.5, "×½", 1), (2.0, "×2", 2)):
            scaled = {f"model.dropout_{p}": min(0.9, v * factor) for p, v in rates.items()}
            shown = "+".join(f"{p} {min(0.9, v * factor):.2f}" for p, v in rates.items() if v)
            out.append(_v("dropout", f"rate {label} ({shown})", scaled, rank))
    return out


def _depth(cfg: RunConfig) -> list[Variant]:
    m = cfg.model
    out = []
    if m.family == "rnn":
        for n, rank in ((m.rnn_layers - 1, 0), (m.rnn_layers + 1, 1)):
            if 1 <= n <= 8:  # from one layer, the dropout between layers that had no effect stays off
                extra = {"model.rnn_dropout": 0.0} if m.rnn_layers == 1 else {}
                out.append(_v("depth", _count(n, "recurrent layer"), {"model.rnn_layers": n, **extra}, rank))
        if m.bidirectional:
            out.append(_v("depth", "one direction", {"model.bidirectional": False}, 2))
        return out
    if m.family == "cnn":
        for n, rank in ((m.conv_blocks - 1, 0), (m.conv_blocks + 1, 1)):
            if 1 <= n <= 16:
                out.append(_v("depth", _count(n, "conv block"), {"model.conv_blocks": n}, rank))
        return out
    widths = m.hidden_widths()
    fewer, more = widths[:-1], widths + [widths[-1]]
    if fewer:
        out.append(_v("depth", _count(len(fewer), "hidden layer"), {"model.widths": fewer}, 0))
    if len(more) <= 64:
        out.append(_v("depth", _count(len(more), "hidden layer"), {"model.widths": more}, 1))
    return out


FAMILIES = {"tabular": ("mlp",), "image": ("mlp", "cnn"), "signal": ("mlp", "cnn", "rnn")}


def _families(cfg: RunConfig, kind: str) -> list[Variant]:
    """Family against family: nntune's default architecture of each other family the data allows, with the chosen
    training settings (after the depth variants: a bigger change, so it runs once they have)."""
    return [_v("depth", f"{family.upper()} (nntune's default architecture)",
               {"model": ModelConfig(family=family).model_dump(mode="json")}, 5 + i)
            for i, family in enumerate(f for f in FAMILIES[kind] if f != cfg.model.family)]


def _width(cfg: RunConfig) -> list[Variant]:
    m = cfg.model
    out = []
    for factor, label, rank in ((0.5, "×½", 0), (2.0, "×2", 1)):
        if m.family == "rnn":
            u = max(1, round(m.rnn_units * factor))
            out.append(_v("width", f"width {label} ({u} units)", {"model.rnn_units": u}, rank))
        elif m.family == "cnn":
            f, fc = max(1, round(m.filters * factor)), max(1, round(m.fc_units * factor))
            out.append(_v("width", f"width {label} (filters {f}, FC {fc})",
                          {"model.filters": f, "model.fc_units": fc}, rank))
        else:
            widths = [max(1, round(w * factor)) for w in m.hidden_widths()]
            out.append(_v("width", f"width {label} ({'-'.join(map(str, widths))})", {"model.widths": widths}, rank))
    return out


def _lr(cfg: RunConfig, suggestion: float | None) -> list[Variant]:
    lr = cfg.train.lr
    out = [_v("lr", f"lr ×⅓ ({lr / 3:.3g})", {"train.lr": lr / 3}, 0),
           _v("lr", f"lr ×3 ({min(10.0, 3 * lr):.3g})", {"train.lr": min(10.0, 3 * lr)}, 1)]
    if suggestion:
        out.append(_v("lr", f"range test ({suggestion:.3g})", {"train.lr": min(10.0, float(suggestion))}, 2))
    return out


def _activation(cfg: RunConfig) -> list[Variant]:
    others = [a for a in ACTIVATIONS if a != cfg.model.activation]
    return [_v("activation", a, {"model.activation": a}, i) for i, a in enumerate(others)]


def _normalization(cfg: RunConfig, kind: str) -> list[Variant]:
    chosen = resolve_method(cfg.preprocess.scaler, kind)
    others = [s for s in SCALERS[kind] if s != chosen]
    return [_v("normalization", s, {"preprocess.scaler": s}, i) for i, s in enumerate(others)]


def _augmentation(cfg: RunConfig, kind: str) -> list[Variant] | str:
    if kind == "tabular":
        return "Not applicable: the data is a table; augmentation applies to images and signals."
    p = cfg.preprocess
    if p.augment == "none":
        presets = ("light", "signal") if kind == "signal" else ("light", "digits", "natural")
        return [_v("augmentation", f"{name} at 0.50", {"preprocess.augment": name, "preprocess.augment_strength": 0.5},
                   i) for i, name in enumerate(presets)]
    table = registry.AUGMENT_PRESETS["signal" if kind == "signal" else "image"]
    ops = p.augment_ops if p.augment == "custom" else table[p.augment]
    out = [_v("augmentation", "none", {"preprocess.augment": "none", "preprocess.augment_ops": None}, 0)]
    for i, op in enumerate(ops):
        rest = [o for j, o in enumerate(ops) if j != i]
        change = ({"preprocess.augment": "custom", "preprocess.augment_ops": rest} if rest
                  else {"preprocess.augment": "none", "preprocess.augment_ops": None})
        out.append(_v("augmentation", f"without {op['op']}", change, 1 + i))
    return out


def schedule_defaults(name: str, epochs: int, warmup: int) -> dict[str, Any]:
    """A schedule at its default parameters, with the step-based ones scaled to the run's epochs (a step every
    quarter, milestones at one half and three quarters)."""
    quarter = max(1, epochs // 4)
    return {**ScheduleConfig().model_dump(mode="json"), "name": name, "warmup_epochs": warmup,
            "step_size": quarter, "milestones": sorted({max(1, epochs // 2), max(1, 3 * epochs // 4)}),
            "restart_period": quarter}


def _schedule(cfg: RunConfig) -> list[Variant]:
    s, epochs = cfg.train.schedule, cfg.train.epochs
    warm = s.warmup_epochs or min(3, max(1, epochs // 5))
    if warm >= epochs:
        warm = 0
    out = []
    if warm:  # the chosen schedule with its warmup toggled, the most direct question
        toggled = 0 if s.warmup_epochs else warm
        out.append(_v("schedule", s.name + (f" + {toggled} warmup" if toggled else " without warmup"),
                      {"train.schedule.warmup_epochs": toggled}, 0))
    for i, name in enumerate(SCHEDULE_ORDER):
        if name != s.name:
            out.append(_v("schedule", name, {"train.schedule": schedule_defaults(name, epochs, 0)}, 1 + i))
            if warm and name != "none":
                out.append(_v("schedule", f"{name} + {warm} warmup",
                              {"train.schedule": schedule_defaults(name, epochs, warm)}, 1 + len(SCHEDULE_ORDER) + i))
    return out


def build(chosen: RunConfig, made: list[Variant]) -> tuple[list[Variant], list[dict]]:
    """Each variant's configuration; (valid variants, skipped ones with the reason). Duplicates of the chosen
    configuration or of an earlier variant are dropped silently."""
    seen = {json.dumps(chosen.to_dict(), sort_keys=True)}
    ok, skipped = [], []
    for v in made:
        try:
            v.config = apply_overrides(chosen, v.overrides)
        except Exception as err:  # a ConfigError naming the key; the variant cannot exist
            skipped.append({"name": v.name, "reason": f"invalid: {err}"})
            continue
        key = v.key()
        if key not in seen:
            seen.add(key)
            ok.append(v)
    return ok, skipped


def order(valid: dict[str, list[Variant]], questions: Sequence[str]) -> list[Variant]:
    """Most informative first: every question's first remaining variant (in ``questions`` order), then every
    question's second, and so on; a question whose first variants were dropped does not wait behind the others."""
    rounds = []
    for q, vs in valid.items():
        for i, v in enumerate(sorted(vs, key=lambda v: v.rank)):
            rounds.append((i, questions.index(q), v))
    return [v for _, _, v in sorted(rounds, key=lambda t: (t[0], t[1]))]
