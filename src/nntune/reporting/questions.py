"""The ten question sections, keyed by the evidence's question names (``EVIDENCE_QUESTIONS``), each with its title.

A section states this run's answer, then its controlled evidence, then what the search's own trials show.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from nntune.config import EVIDENCE_QUESTIONS, build_config
from nntune.data.preview import augment_preview
from nntune.reporting import plots
from nntune.reporting.evidence_blocks import (category_evidence, evidence_html, no_search,
                                              numeric_evidence, observational, rank_text)
from nntune.reporting.html import Figures, Section, escape, table
from nntune.reporting.run_view import RunView
from nntune.training.schedules import lr_values

Answer = Callable[[RunView, Figures], tuple[str, list[str]]]  # a question's answer (HTML) and its body blocks


class Question(NamedTuple):
    """A question's heading and the function that answers it for a run."""

    title: str
    answer: Answer


SECTIONS: dict[str, Question] = {}


def _question(name: str, title: str) -> Callable[[Answer], Answer]:
    """Register ``fn`` as the section of the evidence question ``name``."""
    def register(fn: Answer) -> Answer:
        SECTIONS[name] = Question(title, fn)
        return fn
    return register


@_question("trainable", "Which parameters train, and which stay frozen?")
def _trainable(view: RunView, figs: Figures) -> tuple[str, list[str]]:
    s = view.model_summary()
    frozen = [r["name"] for r in s["layers"] if r["trainable"] == 0 and r["non_trainable"] > 0
              and r["type"] not in ("BatchNorm1d", "BatchNorm2d")]
    answer = (f"The model has <b>{s['trainable']:,}</b> trainable and <b>{s['non_trainable']:,}</b> non-trainable "
              f"parameters (non-trainable = frozen weights plus batch-norm running statistics, Keras's convention). "
              + (f"Frozen layers: {', '.join(frozen)}." if frozen else "No layer is frozen: everything trains."))
    rows = [{"layer": r["name"], "type": r["type"], "output": "x".join(map(str, r["output_shape"][1:])),
             "trainable": r["trainable"], "non-trainable": r["non_trainable"]} for r in s["layers"]]
    return answer + _finetune_text(view), [table(rows), *_freezing_schedule(view)]


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
    counts = [{"epoch": h["epoch"], "trainable": h["trainable"], "non-trainable": h["non_trainable"],
               "unfrozen after this epoch": ", ".join(h.get("unfrozen", []))} for h in rows]
    return ["<h4>Trainable parameters over the epochs</h4>", table(counts)]


@_question("dropout", "Where does dropout go, and how much?")
def _dropout(view: RunView, figs: Figures) -> tuple[str, list[str]]:
    m = view.config.model
    if m.family == "cnn":
        places = [p for p in ("after_pool", "before_fc", "after_fc") if getattr(m, f"dropout_{p}") > 0]
        chosen = ", ".join(f"{p} ({getattr(m, f'dropout_{p}'):.2f})" for p in places) or "none"
    else:
        chosen = f"after each hidden layer ({m.dropout:.2f})" if m.dropout > 0 else "none"
    body = [no_search(view)]
    body += category_evidence(view, figs, "model.dropout_placement", "dropout placement (CNN trials)",
                              "q2_dropout_placement")
    body += numeric_evidence(view, figs, {"mlp": "model.dropout", "cnn": "model.dropout_rate"}, "dropout rate",
                             "q2_dropout_rate")
    return f"The chosen model ({m.family.upper()}) uses dropout: <b>{chosen}</b>.", body


@_question("depth", "How many hidden layers (or conv blocks)?")
def _depth(view: RunView, figs: Figures) -> tuple[str, list[str]]:
    m = view.config.model
    depth = {"cnn": f"{m.conv_blocks} conv blocks of {m.convs_per_block} conv(s), {m.fc_layers} FC layer(s)",
             "rnn": f"{m.rnn_layers} {m.cell.upper()} layer(s)" + (", bidirectional" if m.bidirectional else "")
             + f", {m.fc_layers} FC layer(s)"}.get(m.family, f"{len(m.hidden_widths())} hidden layers")
    body = [no_search(view)]
    body += numeric_evidence(view, figs, {"mlp": "model.hidden_layers", "cnn": "model.conv_blocks",
                                          "rnn": "model.rnn_layers"},
                             "depth (hidden layers / conv blocks / recurrent layers)", "q3_depth")
    body.append(rank_text(view, view.groups("model.hidden_layers"), "hidden layers (MLP)"))
    body.append(rank_text(view, view.groups("model.conv_blocks"), "conv blocks (CNN)"))
    body.append(rank_text(view, view.groups("model.rnn_layers"), "recurrent layers (RNN)"))
    body += category_evidence(view, figs, "model.family", "model family", "q3_family")
    return f"Depth of the chosen model: <b>{depth}</b>.", body


@_question("width", "How many units or filters per layer?")
def _width(view: RunView, figs: Figures) -> tuple[str, list[str]]:
    m = view.config.model
    width = {"cnn": f"filters {' → '.join(map(str, m.block_filters()))} (×{m.filter_multiplier:g} per block), "
                    f"FC {m.fc_units} units",
             "rnn": f"{m.rnn_units} units per recurrent layer" + (" and direction" if m.bidirectional else "")
                    + (f", FC {m.fc_units} units" if m.fc_layers else "")}.get(m.family,
                                                      f"hidden widths {' → '.join(map(str, m.hidden_widths()))}")
    body = [no_search(view)]
    body += numeric_evidence(view, figs, {"mlp": "model.units", "cnn": "model.filters", "rnn": "model.rnn_units"},
                             "first-layer units / base filters / recurrent units", "q4_width", log=True)
    body += category_evidence(view, figs, "model.filter_multiplier", "filter multiplier per block (CNN)",
                              "q4_filter_progression")
    return f"Widths of the chosen model: <b>{width}</b>.", body


@_question("lr", "What initial learning rate?")
def _lr(view: RunView, figs: Figures) -> tuple[str, list[str]]:
    lr = view.config.train.lr
    body = []
    found = view.result.get("lr_find")
    if found:
        body.append(figs.embed(plots.lr_find_plot(found), "q5_lr_find",
                               "LR range test: smoothed loss vs LR, suggestions marked"))
        body.append("<p>Range test suggestions: " + ", ".join(f"{k} {v:.3g}" for k, v in
                                                              found["suggestions"].items()) + ".</p>")
    else:
        body.append("<p class='note'>No LR range test in this run (use <code>--lr auto</code>).</p>")
    body.append(no_search(view))
    body += numeric_evidence(view, figs, {"mlp": "train.lr", "cnn": "train.lr"}, "initial learning rate",
                             "q5_lr_trials", log=True)
    return f"Initial learning rate: <b>{lr:.3g}</b> ({view.config.train.optimizer}).", body


@_question("activation", "Which activation?")
def _activation(view: RunView, figs: Figures) -> tuple[str, list[str]]:
    act = view.config.model.activation
    body = [no_search(view)]
    body += category_evidence(view, figs, "model.activation", "activation", "q6_activation")
    related = [f for f in view.findings() if f["code"] in ("dead_relu", "saturated_units", "activations_ok",
                                                          "vanishing_gradients", "exploding_gradients")]
    if related:  # named here; their table is the Diagnostics section's (one table, not two)
        body.append("<p>Diagnostics of the chosen model: " + ", ".join(f"{f['code']} ({f['severity']})"
                                                                      for f in related) + " (see Diagnostics).</p>")
    return f"Activation: <b>{act}</b>.", body


@_question("normalization", "How to normalize the data?")
def _normalization(view: RunView, figs: Figures) -> tuple[str, list[str]]:
    method = view.result.get("data", {}).get("scaler") or view.config.preprocess.scaler
    body = [no_search(view)]
    body += category_evidence(view, figs, "preprocess.scaler", "normalization (fitted on train only)",
                              "q7_normalization")
    return f"Normalization: <b>{method}</b> (statistics fitted on the training split only).", body


@_question("augmentation", "Which image augmentations?")
def _augmentation(view: RunView, figs: Figures) -> tuple[str, list[str]]:
    p = view.config.preprocess
    body = []
    kind = view.result["data"].get("kind")
    if kind == "tabular":
        return "Not applicable: the data is a table, not images or signals.", body
    try:
        preset = p.augment if p.augment != "none" else "light"
        grid = augment_preview(view.config, preset, p.augment_strength if p.augment != "none" else 0.5, 6, 6).grid
        title = (f"chosen pipeline: {p.augment}, strength {p.augment_strength:.2f}" if p.augment != "none"
                 else "no augmentation chosen; preview of 'light' at 0.5 for comparison")
        body.append(figs.embed(plots.augment_grid(grid, title), "q8_augment_preview", title))
    except Exception as err:  # the data may no longer be at its path; the rest of the report still stands
        body.append(f"<p class='note'>Preview unavailable: {escape(str(err))}</p>")
    body.append(no_search(view))
    body += category_evidence(view, figs, "preprocess.augment", "augmentation preset", "q8_augment_preset")
    strength = "preprocess.augment_strength"
    body += numeric_evidence(view, figs, {"mlp": strength, "cnn": strength}, "augmentation strength",
                             "q8_augment_strength")
    chosen = "none" if p.augment == "none" else f"{p.augment} at strength {p.augment_strength:.2f}"
    return f"Augmentation: <b>{chosen}</b> (training split only).", body


@_question("schedule", "How to decay the learning rate?")
def _schedule(view: RunView, figs: Figures) -> tuple[str, list[str]]:
    t = view.config.train
    sched = t.schedule
    n_train = view.result["data"].get("n_train", 1000)
    steps = max(1, math.ceil(n_train / t.batch_size))
    per_step = sched.name == "onecycle"
    values = lr_values(sched, t.lr, t.epochs, steps if per_step else 1)
    trained = _final_epochs(view) or t.epochs
    values = values[:trained * (steps if per_step else 1)]  # what the final model went through
    warmup = f" after {sched.warmup_epochs} warmup" if sched.warmup_epochs else ""
    horizon = f"{sched.name} over {t.epochs} epochs{warmup}"
    title = horizon if trained >= t.epochs else f"{horizon}: the final model's {trained} epochs"
    body = [figs.embed(plots.schedule_plot(values, per_step, title), "q9_schedule",
                       f"The chosen LR schedule over the final run ({title})"), no_search(view)]
    body += category_evidence(view, figs, "train.schedule.name", "LR schedule", "q9_schedule_trials")
    return (f"LR schedule: <b>{sched.name}</b>"
            + (f" with {sched.warmup_epochs} warmup epoch(s)" if sched.warmup_epochs else "") + "."), body


def _final_epochs(view: RunView) -> int | None:
    """The epochs the final model trained: the final retrain's for a tune, the run's for a train."""
    if view.kind == "tune":
        final = view.result.get("final") or {}
        history = final.get("history")
        return len(history) if history else final.get("epochs")
    return len(view.result.get("history") or []) or None


@_question("early_stopping", "When to stop training?")
def _early_stopping(view: RunView, figs: Figures) -> tuple[str, list[str]]:
    history, best, stopped, reason = view.history()
    body = []
    if history:
        body.append(figs.embed(plots.learning_curves(history, view.metric, best, stopped), "q10_learning_curves",
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
        elif final["mode"] == "ensemble":
            e = final["ensemble"]
            alone = ", ".join(f"{v:.4f}" for v in e["members"])
            pooled = " and the other finalists' models" if (e.get("pool") or {}).get("taken") else ""
            body.append(f"<p>The final model is the ensemble of the chosen configuration's {e['size']} seeds (mean "
                        f"of their predictions){pooled}: the seeds "
                        f"scored {e['monitor']} {e['ensemble']:.4f} on validation together, against {alone} for "
                        "each seed alone.</p>")
            if e.get("chosen_at"):
                c = e["chosen_at"]
                body.append(f"<p>It was chosen over the retrain with the finalists' {c['size']} seeds ({e['monitor']} "
                            f"{c['ensemble']:.4f}) and then grew by more seeds in the time the retrain would have "
                            f"taken, to {e['grown']}.</p>")
            pool = e.get("pool")
            if pool:
                trials = ", ".join(map(str, pool["trials"]))
                verdict = (f"so they are part of the final model, which averages all {pool['size']} models' "
                           "predictions" if pool["taken"] else "so the final model is the seeds alone")
                body.append(f"<p>Pooled with the other finalists' models (trials {trials}: their trials and seed "
                            f"runs), the {pool['size']} models had a validation loss of {pool['loss']:.4f} against "
                            f"{pool['seeds_loss']:.4f} for the seeds alone ({pool['monitor']} {pool['score']:.4f}), "
                            f"{verdict}.</p>")
        else:
            body.append(f"<p>The final model is the best trial's own, at its best epoch {final['epochs']}.</p>")
        if final["mode"] != "ensemble" and (final.get("ensemble") or {}).get("size"):
            e = final["ensemble"]
            body.append(f"<p>The ensemble of its {e['size']} seeds was measured and not taken: {e['monitor']} "
                        f"{e['ensemble']:.4f} on validation, not better than its seeds alone on average "
                        f"({sum(e['members']) / len(e['members']):.4f}).</p>")
    es = view.config.train.early_stopping
    if view.kind == "tune":
        es = build_config(view.best_trial.attrs["config"]).train.early_stopping if view.best_trial else es
    restore = "restores the best weights" if es.restore_best_weights else "keeps the last weights"
    policy = (f"early stopping monitors {es.monitor} with patience {es.patience} and {restore}" if es.enabled
              else "early stopping was off")
    answer = (f"Best epoch <b>{best}</b>, stopped at <b>{stopped or 'the last epoch'}</b> ({escape(reason)}); "
              f"{policy}.")
    return answer, body


QUESTIONS = [SECTIONS[name].title for name in EVIDENCE_QUESTIONS]  # the titles, in the evidence's order


def question_sections(view: RunView, figs: Figures) -> list[Section]:
    """The ten sections in the evidence's order, each: answer, controlled evidence, then the trials' comparisons."""
    sections = []
    for number, name in enumerate(EVIDENCE_QUESTIONS, 1):
        question = SECTIONS[name]
        answer, body = question.answer(view, figs)
        sections.append(Section(question.title, answer,
                                evidence_html(view, figs, number, name) + [observational(view)] + body))
    return sections
