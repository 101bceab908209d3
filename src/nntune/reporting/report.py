"""The HTML report: one section per seed question, each with this dataset's answer and its evidence.

Built from a run directory alone (``result.json``, the study in its storage, ``best/``), so ``nntune report DIR``
rebuilds it without retraining. Figures are embedded as data URIs, so ``report.html`` is one self-contained file
that opens offline; the same figures are also written as PNG files under ``DIR/figures/``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nntune import atomic
from nntune.artifacts import read_result
from nntune.config import EVIDENCE_QUESTIONS, RunConfig, build_config
from nntune.search.objectives import is_multi, score
from nntune.storage import load_recorded_study

QUESTIONS = [
    "Which parameters train, and which stay frozen?",
    "Where does dropout go, and how much?",
    "How many hidden layers (or conv blocks)?",
    "How many units or filters per layer?",
    "What initial learning rate?",
    "Which activation?",
    "How to normalize the data?",
    "Which image augmentations?",
    "How to decay the learning rate?",
    "When to stop training?",
]


@dataclass
class Trial:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    attrs: dict[str, Any]


@dataclass
class RunView:
    """What the report needs from a run directory, for a search (``tune``) or a single run (``train``)."""

    directory: Path
    result: dict
    kind: str
    config: RunConfig
    task: str
    metric: str
    trials: list[Trial] = field(default_factory=list)
    maximize: bool = True
    study: Any = None  # the optuna.Study of a search, opened once

    @property
    def complete(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value)]

    @property
    def best_trial(self) -> Trial | None:
        number = self.result.get("best_trial")
        return next((t for t in self.trials if t.number == number), None)

    def history(self) -> tuple[list[dict], int, int, str]:
        """Learning curves of the best model: (history, best epoch, stopped epoch, stop reason)."""
        if self.kind == "train":
            r = self.result
            return r["history"], r["best_epoch"], r["stopped_epoch"], r["stop_reason"]
        t = self.best_trial
        if t is None:
            return [], 0, 0, ""
        a = t.attrs
        return a.get("history", []), a.get("best_epoch", 0), a.get("stopped_epoch", 0), a.get("stop_reason", "")

    def findings(self) -> list[dict]:
        if self.kind == "train":
            return self.result.get("findings", [])
        t = self.best_trial
        return (t.attrs.get("findings", []) if t else []) + self.result.get("final", {}).get("findings", [])

    def model_summary(self) -> dict:
        return self.result["model"] if self.kind == "train" else self.result["final"]["model"]


def load_run(directory: str | Path) -> RunView:
    """Read a run directory written by ``nntune train`` or ``nntune tune``."""
    directory = Path(directory)
    path = directory / "result.json"
    result = read_result(directory)
    kind = "tune" if "study" in result else "train"
    config = build_config(result["config"] if kind == "train" else result["final"]["config"], where=str(path))
    task = result["data"]["task"]
    if kind == "tune":  # the study's objective, e.g. accuracy, or loss (MSE) for regression
        metric = result["study"]["objective"].removeprefix("val_")
    else:
        metric = "accuracy" if task == "classification" else "mae"
    view = RunView(directory, result, kind, config, task, metric)
    if kind == "tune":
        view.study = load_recorded_study(result["study"])
        view.maximize = result["study"]["direction"] == "maximize"
        view.trials = [Trial(t.number, t.state.name, score(t), dict(t.params), dict(t.user_attrs))
                       for t in view.study.get_trials(deepcopy=False)]
    return view


# --- evidence helpers -------------------------------------------------------------------------------------------

def _groups(view: RunView, key: str) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = {}
    for t in view.complete:
        value = t.params.get(key)
        if value is None:
            continue
        groups.setdefault(str(value), []).append(t.value)
    return groups


def _series(view: RunView, keys_by_family: dict[str, str]) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for t in view.complete:
        for family, key in keys_by_family.items():
            fam = t.params.get("model.family", view.config.model.family)
            if fam == family and key in t.params:
                xs, ys = out.setdefault(f"{family}: {key.split('.')[-1]}", ([], []))
                xs.append(t.params[key])
                ys.append(t.value)
    return out


def _rank_text(view: RunView, groups: dict[str, list[float]], what: str) -> str:
    if not groups:
        return ""
    pick = max if view.maximize else min
    ranked = sorted(groups.items(), key=lambda kv: pick(kv[1]), reverse=view.maximize)
    parts = [f"<b>{html.escape(k)}</b> best {pick(v):.4f}, median {statistics.median(v):.4f} (n={len(v)})"
             for k, v in ranked]
    return f"<p>Val {view.metric} by {what} across complete trials: " + "; ".join(parts) + ".</p>"


def _category_evidence(view: RunView, figs: Figures, key: str, what: str, name: str) -> list[str]:
    """Ranking text and a box plot of the val metric by a categorical parameter (nothing without trials)."""
    groups = _groups(view, key)
    if not groups:
        return []
    return [_rank_text(view, groups, what),
            figs.embed(_plots().by_category(groups, what, f"val {view.metric}"), name, f"Val metric by {what}")]


def _numeric_evidence(view: RunView, figs: Figures, keys_by_family: dict[str, str], what: str, name: str,
                      log: bool = False) -> list[str]:
    """A scatter of the val metric against a numeric parameter, one colour per model family."""
    series = _series(view, keys_by_family)
    if not series:
        return []
    return [figs.embed(_plots().vs_numeric(series, what, f"val {view.metric}", log=log), name,
                       f"Val metric vs {what}")]


@dataclass
class Section:
    title: str
    answer: str
    body: list[str] = field(default_factory=list)


class Figures:
    """Collects figures: saves each as PNG under ``figures/`` and returns an embedded ``<img>``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "figures"
        self.directory.mkdir(parents=True, exist_ok=True)

    def embed(self, fig, name: str, alt: str) -> str:
        data = _plots().png(fig, dpi=100)
        atomic.write_bytes(self.directory / f"{name}.png", data)
        return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,'
                f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(alt)}</figcaption></figure>')


def _table(rows: list[dict], columns: list[str] | None = None, limit: int | None = None) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows[:limit]:
        cells = []
        for c in columns:
            v = r.get(c, "")
            text = f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p><i>{len(rows) - limit} more rows in trials.csv</i></p>" if limit and len(rows) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _no_search(view: RunView) -> str:
    return ("<p class='note'>This is a single training run, so there is no comparison across trials; "
            "<code>nntune tune</code> measures the alternatives.</p>") if view.kind == "train" else ""


# --- the ten sections -------------------------------------------------------------------------------------------

def _q1(view: RunView, figs: Figures) -> Section:
    s = view.model_summary()
    frozen = [r["name"] for r in s["layers"] if r["trainable"] == 0 and r["non_trainable"] > 0
              and r["type"] not in ("BatchNorm1d", "BatchNorm2d")]
    answer = (f"The model has <b>{s['trainable']:,}</b> trainable and <b>{s['non_trainable']:,}</b> non-trainable "
              f"parameters (non-trainable = frozen weights plus batch-norm running statistics, Keras's convention). "
              + (f"Frozen layers: {', '.join(frozen)}." if frozen else "No layer is frozen: everything trains."))
    rows = [{"layer": r["name"], "type": r["type"], "output": "x".join(map(str, r["output_shape"][1:])),
             "trainable": r["trainable"], "non-trainable": r["non_trainable"]} for r in s["layers"]]
    return Section(QUESTIONS[0], answer + _finetune_text(view), [_table(rows), *_freezing_schedule(view)])


def _finetune_text(view: RunView) -> str:
    ft = view.result.get("finetune") or (view.result.get("final") or {}).get("finetune")
    if not ft:
        return ""
    head = ("its output layer was replaced (other task or classes: "
            f"{', '.join(map(str, ft['source_classes'])) or 'regression'} before)") if ft["head_replaced"] \
        else "its output layer was kept"
    frozen = (f"layers matching {ft['freeze']!r} frozen" if ft["freeze"] else
              f"all but the last {ft['freeze_all_but_last']} layer group(s) frozen"
              if ft["freeze_all_but_last"] is not None else "nothing frozen")
    unfreeze = (f", one group unfrozen every {ft['unfreeze_after']} epoch(s) from the head down"
                if ft["unfreeze_after"] else "")
    mult = f"; each earlier group trained at {ft['lr_mult']:g}× the LR of the next" if ft["lr_mult"] != 1 else ""
    return (f" <br>Fine-tuned from <code>{ft['init_from']}</code> (trained on {ft['source']}): {head}; "
            f"{frozen}{unfreeze}{mult}.")


def _freezing_schedule(view: RunView) -> list[str]:
    """Trainable and non-trainable counts over the epochs where they changed (a freezing schedule at work)."""
    history = view.history()[0]
    if not history or "trainable" not in history[0]:
        return []
    rows = [h for i, h in enumerate(history)
            if i == 0 or h.get("unfrozen") or h["trainable"] != history[i - 1]["trainable"]]
    if len(rows) < 2 and not rows[0].get("unfrozen") and not view.result.get("finetune"):
        return []
    table = [{"epoch": h["epoch"], "trainable": h["trainable"], "non-trainable": h["non_trainable"],
              "unfrozen after this epoch": ", ".join(h.get("unfrozen", []))} for h in rows]
    return ["<h4>Trainable parameters over the epochs</h4>", _table(table)]


def _q2(view: RunView, figs: Figures) -> Section:
    m = view.config.model
    if m.family == "cnn":
        places = [p for p in ("after_pool", "before_fc", "after_fc") if getattr(m, f"dropout_{p}") > 0]
        chosen = ", ".join(f"{p} ({getattr(m, f'dropout_{p}'):.2f})" for p in places) or "none"
    else:
        chosen = f"after each hidden layer ({m.dropout:.2f})" if m.dropout > 0 else "none"
    body = [_no_search(view)]
    body += _category_evidence(view, figs, "model.dropout_placement", "dropout placement (CNN trials)",
                               "q2_dropout_placement")
    body += _numeric_evidence(view, figs, {"mlp": "model.dropout", "cnn": "model.dropout_rate"}, "dropout rate",
                              "q2_dropout_rate")
    return Section(QUESTIONS[1], f"The chosen model ({m.family.upper()}) uses dropout: <b>{chosen}</b>.", body)


def _q3(view: RunView, figs: Figures) -> Section:
    m = view.config.model
    depth = {"cnn": f"{m.conv_blocks} conv blocks of {m.convs_per_block} conv(s), {m.fc_layers} FC layer(s)",
             "rnn": f"{m.rnn_layers} {m.cell.upper()} layer(s)" + (", bidirectional" if m.bidirectional else "")
             + f", {m.fc_layers} FC layer(s)"}.get(m.family, f"{len(m.hidden_widths())} hidden layers")
    body = [_no_search(view)]
    body += _numeric_evidence(view, figs, {"mlp": "model.hidden_layers", "cnn": "model.conv_blocks",
                                           "rnn": "model.rnn_layers"},
                              "depth (hidden layers / conv blocks / recurrent layers)", "q3_depth")
    body.append(_rank_text(view, _groups(view, "model.hidden_layers"), "hidden layers (MLP)"))
    body.append(_rank_text(view, _groups(view, "model.conv_blocks"), "conv blocks (CNN)"))
    body.append(_rank_text(view, _groups(view, "model.rnn_layers"), "recurrent layers (RNN)"))
    body += _category_evidence(view, figs, "model.family", "model family", "q3_family")
    return Section(QUESTIONS[2], f"Depth of the chosen model: <b>{depth}</b>.", body)


def _q4(view: RunView, figs: Figures) -> Section:
    m = view.config.model
    width = {"cnn": f"filters {' → '.join(map(str, m.block_filters()))} (×{m.filter_multiplier:g} per block), "
                    f"FC {m.fc_units} units",
             "rnn": f"{m.rnn_units} units per recurrent layer" + (" and direction" if m.bidirectional else "")
                    + (f", FC {m.fc_units} units" if m.fc_layers else "")}.get(m.family,
                                                      f"hidden widths {' → '.join(map(str, m.hidden_widths()))}")
    body = [_no_search(view)]
    body += _numeric_evidence(view, figs, {"mlp": "model.units", "cnn": "model.filters", "rnn": "model.rnn_units"},
                              "first-layer units / base filters / recurrent units", "q4_width", log=True)
    body += _category_evidence(view, figs, "model.filter_multiplier", "filter multiplier per block (CNN)",
                               "q4_filter_progression")
    return Section(QUESTIONS[3], f"Widths of the chosen model: <b>{width}</b>.", body)


def _q5(view: RunView, figs: Figures) -> Section:
    lr = view.config.train.lr
    body = []
    found = view.result.get("lr_find")
    if found:
        body.append(figs.embed(_plots().lr_find_plot(found), "q5_lr_find",
                               "LR range test: smoothed loss vs LR, suggestions marked"))
        body.append("<p>Range test suggestions: " + ", ".join(f"{k} {v:.3g}" for k, v in
                                                              found["suggestions"].items()) + ".</p>")
    else:
        body.append("<p class='note'>No LR range test in this run (use <code>--lr auto</code>).</p>")
    body.append(_no_search(view))
    body += _numeric_evidence(view, figs, {"mlp": "train.lr", "cnn": "train.lr"}, "initial learning rate",
                              "q5_lr_trials", log=True)
    return Section(QUESTIONS[4], f"Initial learning rate: <b>{lr:.3g}</b> ({view.config.train.optimizer}).", body)


def _q6(view: RunView, figs: Figures) -> Section:
    act = view.config.model.activation
    body = [_no_search(view)]
    body += _category_evidence(view, figs, "model.activation", "activation", "q6_activation")
    related = [f for f in view.findings() if f["code"] in ("dead_relu", "saturated_units", "activations_ok",
                                                          "vanishing_gradients", "exploding_gradients")]
    if related:
        body.append("<p>Diagnostics of the chosen model:</p>" + _findings_html(related))
    return Section(QUESTIONS[5], f"Activation: <b>{act}</b>.", body)


def _q7(view: RunView, figs: Figures) -> Section:
    method = view.result.get("data", {}).get("scaler") or view.config.preprocess.scaler
    body = [_no_search(view)]
    body += _category_evidence(view, figs, "preprocess.scaler", "normalization (fitted on train only)",
                               "q7_normalization")
    return Section(QUESTIONS[6], f"Normalization: <b>{method}</b> (statistics fitted on the training split only).",
                   body)


def _q8(view: RunView, figs: Figures) -> Section:
    p = view.config.preprocess
    body = []
    kind = view.result["data"].get("kind")
    if kind == "tabular":
        return Section(QUESTIONS[7], "Not applicable: the data is a table, not images or signals.", body)
    try:
        from nntune.data.augment import build_augmenter, preview_grid
        from nntune.data.splits import split_dataset
        from nntune.data.sources import load_configured

        ds = load_configured(view.config.data)
        d = view.config.data
        train_x = ds.x[split_dataset(ds, d.val_fraction, d.test_fraction, view.config.seed).train]
        preset = p.augment if p.augment != "none" else "light"
        aug = build_augmenter(preset, p.augment_strength if p.augment != "none" else 0.5, ds.input_shape, train_x,
                              p.custom_ops())
        grid = preview_grid(train_x[:6], aug, copies=6, seed=view.config.seed)
        title = (f"chosen pipeline: {p.augment}, strength {p.augment_strength:.2f}" if p.augment != "none"
                 else "no augmentation chosen; preview of 'light' at 0.5 for comparison")
        body.append(figs.embed(_plots().augment_grid(grid, title), "q8_augment_preview", title))
    except Exception as err:  # the data may no longer be at its path; the rest of the report still stands
        body.append(f"<p class='note'>Preview unavailable: {html.escape(str(err))}</p>")
    body.append(_no_search(view))
    body += _category_evidence(view, figs, "preprocess.augment", "augmentation preset", "q8_augment_preset")
    strength = "preprocess.augment_strength"
    body += _numeric_evidence(view, figs, {"mlp": strength, "cnn": strength}, "augmentation strength",
                              "q8_augment_strength")
    chosen = "none" if p.augment == "none" else f"{p.augment} at strength {p.augment_strength:.2f}"
    return Section(QUESTIONS[7], f"Augmentation: <b>{chosen}</b> (training split only).", body)


def _q9(view: RunView, figs: Figures) -> Section:
    from nntune.training.schedules import lr_values

    t = view.config.train
    sched = t.schedule
    n_train = view.result["data"].get("n_train", 1000)
    steps = max(1, math.ceil(n_train / t.batch_size))
    per_step = sched.name == "onecycle"
    values = lr_values(sched, t.lr, t.epochs, steps if per_step else 1)
    warmup = f" after {sched.warmup_epochs} warmup" if sched.warmup_epochs else ""
    body = [figs.embed(_plots().schedule_plot(values, per_step, f"{sched.name} over {t.epochs} epochs{warmup}"),
                       "q9_schedule", "The chosen LR schedule over the final run"), _no_search(view)]
    body += _category_evidence(view, figs, "train.schedule.name", "LR schedule", "q9_schedule_trials")
    return Section(QUESTIONS[8], f"LR schedule: <b>{sched.name}</b>"
                   + (f" with {sched.warmup_epochs} warmup epoch(s)" if sched.warmup_epochs else "") + ".", body)


def _q10(view: RunView, figs: Figures) -> Section:
    history, best, stopped, reason = view.history()
    body = []
    if history:
        body.append(figs.embed(_plots().learning_curves(history, view.metric, best, stopped), "q10_learning_curves",
                               "Learning curves of the best model, best and stop epochs marked"))
    if view.kind == "tune":
        reasons: dict[str, int] = {}
        for tr in view.trials:
            r = tr.attrs.get("stop_reason")
            if r:
                key = r.split(":")[0].split(" at ")[0]
                reasons[key] = reasons.get(key, 0) + 1
        body.append("<p>How trials ended: " + ", ".join(f"{k}: {v}" for k, v in reasons.items()) + ".</p>")
        final = view.result["final"]
        if final["mode"] == "retrain":
            body.append(f"<p>The final model was retrained on train+val for {final['epochs']} epochs, the best "
                        "trial's best epoch, since no validation data is left to stop on.</p>")
        else:
            body.append(f"<p>The final model is the best trial's own, at its best epoch {final['epochs']}.</p>")
    es = view.config.train.early_stopping
    if view.kind == "tune":
        es = build_config(view.best_trial.attrs["config"]).train.early_stopping if view.best_trial else es
    restore = "restores the best weights" if es.restore_best_weights else "keeps the last weights"
    policy = (f"early stopping monitors {es.monitor} with patience {es.patience} and {restore}" if es.enabled
              else "early stopping was off")
    answer = (f"Best epoch <b>{best}</b>, stopped at <b>{stopped or 'the last epoch'}</b> ({html.escape(reason)}); "
              f"{policy}.")
    return Section(QUESTIONS[9], answer, body)


def _evidence_html(view: RunView, figs: Figures, number: int, key: str) -> list[str]:
    """A question's controlled evidence: the verdict, a forest plot and the variants' table (or how to get it)."""
    evidence = view.result.get("evidence") or {}
    entry = evidence.get(key)
    if entry is None:
        command = f"<code>nntune explain {html.escape(str(view.directory))}</code>"
        why = ("not part of this evidence run" if evidence else
               f"no controlled evidence in this run yet: {command} trains each alternative with several seeds "
               "and reports the effect with its confidence interval")
        return [f"<p class='note'>Controlled evidence: {why}.</p>"]
    setup = evidence["setup"]
    points = setup.get("points", False)
    scale, unit = (100.0, " (points)") if points else (1.0, "")
    metric = setup["metric"]
    out = [f"<p class='verdict'><b>Measured:</b> {html.escape(entry['verdict'])}</p>"]
    rows = entry["variants"]
    if any(r.get("diff") is not None for r in rows):
        label = f"difference in {metric}{unit}, variant − chosen"
        out.append(figs.embed(_plots().forest_plot(rows, entry["chosen"], label, scale, setup.get("maximize", True)),
                              f"q{number}_evidence", f"Q{number}: each variant against the chosen "
                              f"{entry['chosen']}, {setup['method']}"))
        table = []
        for r in rows:
            ci = (f"{scale * r['ci_low']:+.2f} .. {scale * r['ci_high']:+.2f}" if r.get("ci_low") is not None
                  else "")
            row = {"variant": r["name"], f"mean {metric}": r["mean"],
                   f"difference{unit}": None if r.get("diff") is None else round(scale * r["diff"], 3),
                   "95 % CI": ci, "n": r["n"]}
            if "epochs" in r:
                row.update({"epochs": r["epochs"], "epochs saved": r["epochs_saved"]})
            else:
                row["seconds"] = r["seconds"]
            table.append(row)
        chosen_mean = entry.get("chosen_mean")
        head = (f"<p>Chosen: <b>{html.escape(entry['chosen'])}</b>"
                + (f", mean {metric} {chosen_mean:.4f}" if chosen_mean is not None else "")
                + f"; seeds {', '.join(map(str, setup['seeds']))}; {html.escape(setup['score'])}.</p>")
        out += [head, _table(table)]
    if entry.get("skipped"):
        out.append("<p class='note'>Not run: " + "; ".join(f"{html.escape(s['name'])} ({html.escape(s['reason'])})"
                                                           for s in entry["skipped"]) + ".</p>")
    return out


def _observational(view: RunView) -> str:
    return ("<h3>Observational: what the search's own trials show</h3><p class='note'>These trials differ in many "
            "settings at once and ran once each, so the comparisons below are confounded; the measured answer is "
            "above.</p>") if view.kind == "tune" else ""


def _findings_html(findings: list[dict]) -> str:
    rows = []
    for f in findings:
        evidence = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f["evidence"].items()
                    if not isinstance(v, (list, dict))}
        rows.append({"finding": f["code"], "severity": f["severity"], "advice": f["message"],
                     "evidence": json.dumps(evidence)})
    return _table(rows)


def _plots():
    from nntune.reporting import plots

    return plots


# --- extras and page --------------------------------------------------------------------------------------------

def _extras(view: RunView, figs: Figures) -> list[Section]:
    out = []
    test = view.result["test"]
    lines = ["<p>Test split, evaluated once at the end: " + ", ".join(f"{k} <b>{v:.4f}</b>" for k, v in test.items())
             + ".</p>"]
    if view.result.get("ensemble"):
        e = view.result["ensemble"]
        lines.append(f"<p>Ensemble of the top {e['k']} trials: " +
                     ", ".join(f"{k} <b>{v:.4f}</b>" for k, v in e["test"].items()) + ".</p>")
    out.append(Section("Test result", "".join(lines)))
    if view.kind == "tune" and view.complete:
        done = sorted(view.complete, key=lambda t: t.number)
        body = [figs.embed(_plots().optimization_history([t.number for t in done], [t.value for t in done],
                                                         view.maximize, f"val {view.metric}"),
                           "optimization_history", "Optimization history")]
        importances = _importances(view)
        if importances:
            body.append(figs.embed(_plots().importances_bar(importances), "importances",
                                   "Hyper-parameter importances (fANOVA)"))
        n = view.result["trials"]
        rows = [{"#": t.number, "state": t.state, "value": t.value, "seconds": t.attrs.get("seconds"),
                 "stop": t.attrs.get("stop_reason") or t.attrs.get("fail_reason"),
                 **{_column(k): v for k, v in t.params.items()}} for t in view.trials]
        rows.sort(key=lambda r: (r["value"] is None, -(r["value"] or 0) if view.maximize else (r["value"] or 0)))
        cols = ["#", "state", "value", "seconds", "stop", "family", "activation", "lr", "schedule", "scaler", "augment"]
        body.append(f"<p>{n['complete']} complete, {n['pruned']} pruned, {n['fail']} failed trials "
                    f"(sampler {view.result['study']['sampler']}, pruner {view.result['study']['pruner']}), "
                    "best first:</p>" + _table(rows, cols, limit=30))
        defaults = [t for t in view.trials if t.attrs.get("default")]
        if defaults:
            scores = ", ".join(f"{t.params.get('model.family', view.config.model.family)} (trial {t.number}) "
                               + (f"{t.value:.4f}" if t.value is not None else t.state.lower()) for t in defaults)
            body.append(f"<p>nntune's default configurations ran first, as the baseline the search must beat: "
                        f"{html.escape(scores)}.</p>")
        body += _budget_and_finalists_html(view.result)
        out.append(Section("The search", "How the search went and which settings mattered.", body))
    if view.result.get("pareto"):
        out.append(_pareto_section(view, figs))
    findings = view.findings()
    out.append(Section("Diagnostics", "Findings on the best model, with advice.",
                       [_findings_html(findings) if findings else "<p>No problems found.</p>"]))
    config_yaml = yaml.safe_dump(view.config.to_dict(), sort_keys=False)
    out.append(Section("Configuration to reproduce", "<code>nntune train --config best_config.yaml</code> "
                       "retrains this model (for a train run: <code>config.yaml</code>).",
                       [f"<pre>{html.escape(config_yaml)}</pre>"]))
    return out


def _budget_and_finalists_html(result: dict) -> list[str]:
    """What ended the search, and the finalists' scores over seeds (the choice is by their mean)."""
    out = []
    b = result.get("budget")
    if b:
        limit = f" of {b['timeout']:.0f} s" if b.get("timeout") else ""
        out.append(f"<p>The search was stopped by <b>{html.escape(str(b['stopped_by']))}</b> after "
                   f"{b['search_seconds']:.0f} s{limit}; the whole run took {b['seconds']:.0f} s.</p>")
    fin = result.get("finalists") or {}
    if fin.get("finalists"):
        rows = [{"trial": r["trial"], "chosen": "yes" if r["trial"] == fin["chosen"] else "",
                 "mean": r["mean"], "std": r["std"], "scores": ", ".join(f"{v:.4f}" for v in r["scores"]),
                 "seeds": ", ".join(str(x) for x in r["seeds"])} for r in fin["finalists"]]
        out.append(f"<p>Finalists, each re-trained with other seeds and chosen by {html.escape(fin['by'])} "
                   "(so the final model is not one lucky seed):</p>" + _table(rows))
    elif fin.get("skipped"):
        out.append(f"<p>No finalist re-runs: {html.escape(fin['skipped'])}; the best trial was chosen on one "
                   "seed.</p>")
    return out


def _column(key: str) -> str:
    """Short trial-table column for a parameter key (``train.schedule.name`` -> ``schedule``)."""
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" else parts[-1]


def _pareto_section(view: RunView, figs: Figures) -> Section:
    """The trade-off of a multi-objective search: every complete trial, the Pareto front, and a config per point."""
    names = view.result["study"]["objectives"]
    points = view.result["pareto"]
    label = {"score": f"val {view.metric}", "params": "parameters", "latency": "latency (ms per sample)"}
    index = {"params": "params", "latency": "latency_ms"}
    other = names[1]
    everyone = [(t.attrs.get(index[other]), t.value) for t in view.complete if t.attrs.get(index[other]) is not None]
    front = [(p["values"][other], p["values"]["score"]) for p in points]
    body = [figs.embed(_plots().pareto_plot(everyone, front, label[other], label["score"]), "pareto",
                       f"Every complete trial, and the Pareto front ({label['score']} vs {label[other]})")]
    rows = [{"trial": p["trial"], **{label[n]: p["values"][n] for n in names},
             "reproduce": f"nntune train --config {Path(p['config']).relative_to(view.directory)}"
             if Path(p["config"]).is_relative_to(view.directory) else f"nntune train --config {p['config']}"}
            for p in points]
    chosen = view.result["best_trial"]
    text = (f"No trial on the front is better in one objective without being worse in another. The final model "
            f"(<code>best/</code>) is trial {chosen}, the front's best {label['score']}; to ship another trade-off, "
            "train its configuration (each point's config is saved in <code>pareto/</code>).")
    return Section("Trade-offs: the Pareto front", text, [_table(rows)] + body)


def _importances(view: RunView) -> dict[str, float]:
    if len(view.complete) < 4:
        return {}
    import optuna

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        target = score if is_multi(view.study) else None  # importance for the score
        return dict(optuna.importance.get_param_importances(view.study, evaluator=evaluator, target=target))
    except (ValueError, RuntimeError):  # too few trials or a degenerate space
        return {}


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.answer{background:#f3f7fb;border-left:4px solid #3b82c4;padding:.6em .9em}
.note{color:#666;font-style:italic}figure{margin:1em 0}img{max-width:100%}
figcaption{color:#555;font-size:.85em}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left}th{background:#f5f5f5}
.verdict{background:#f1f8f1;border-left:4px solid #3c9a3c;padding:.6em .9em}
h3{font-size:1em;margin-top:1.4em}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em}nav ol{columns:2}
"""


def build_report(directory: str | Path) -> Path:
    """Write ``DIR/report.html`` (self-contained) and ``DIR/figures/*.png`` from a run directory."""
    view = load_run(directory)
    figs = Figures(view.directory)
    sections = [q(view, figs) for q in (_q1, _q2, _q3, _q4, _q5, _q6, _q7, _q8, _q9, _q10)]
    for i, (section, key) in enumerate(zip(sections, EVIDENCE_QUESTIONS), 1):
        section.body = _evidence_html(view, figs, i, key) + [_observational(view)] + section.body
    extras = _extras(view, figs)
    data = view.result["data"]
    title = f"nntune report: {data['name']} ({data['task']})"
    nav = "".join(f'<li><a href="#q{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections, 1))
    nav += "".join(f'<li><a href="#x{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(extras, 1))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{'Search' if view.kind == 'tune' else 'Single training run'} on {data.get('n_train', '?')} "
             f"training, {data.get('n_val', '?')} validation and {data.get('n_test', '?')} test samples; input "
             f"{'x'.join(map(str, data['input_shape']))}. Test {view.metric}: "
             f"<b>{view.result['test'].get(view.metric, float('nan')):.4f}</b>.</p><nav><ol>{nav}</ol></nav>"]
    for i, s in enumerate(sections, 1):
        parts.append(f"<section id='q{i}'><h2>{i}. {html.escape(s.title)}</h2><div class='answer'>{s.answer}</div>"
                     + "".join(s.body) + "</section>")
    for i, s in enumerate(extras, 1):
        parts.append(f"<section id='x{i}'><h2>{html.escape(s.title)}</h2><div class='answer'>{s.answer}</div>"
                     + "".join(s.body) + "</section>")
    parts.append("</body></html>")
    path = view.directory / "report.html"
    atomic.write_text(path, "\n".join(parts))
    return path
