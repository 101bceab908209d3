"""The sections after the ten questions: the test result, how the search went, its Pareto front, the diagnostics
and the configuration to reproduce the model.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from nntune.reporting import plots
from nntune.reporting.evidence_blocks import findings_html
from nntune.reporting.html import Figures, Section, escape, table
from nntune.reporting.run_view import RunView


def extra_sections(view: RunView, figs: Figures) -> list[Section]:
    """Test result, the search (for ``tune``), the Pareto front (multi-objective), diagnostics and configuration."""
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
        out.append(_search_section(view, figs))
    if view.result.get("pareto"):
        out.append(_pareto_section(view, figs))
    findings = view.findings()
    out.append(Section("Diagnostics", "Findings on the best model, with advice.",
                       [findings_html(findings) if findings else "<p>No problems found.</p>"]))
    config_yaml = yaml.safe_dump(view.config.to_dict(), sort_keys=False)
    out.append(Section("Configuration to reproduce", "<code>nntune train --config best_config.yaml</code> "
                       "retrains this model (for a train run: <code>config.yaml</code>).",
                       [f"<pre>{escape(config_yaml)}</pre>"]))
    return out


def _search_section(view: RunView, figs: Figures) -> Section:
    """The optimization history, the importances, the trials best first, the defaults' baseline and the finalists."""
    done = sorted(view.complete, key=lambda t: t.number)
    body = [figs.embed(plots.optimization_history([t.number for t in done], [t.value for t in done],
                                                  view.maximize, f"val {view.metric}"),
                       "optimization_history", "Optimization history")]
    importances = view.importances()
    if importances:
        body.append(figs.embed(plots.importances_bar(importances), "importances",
                               "Hyper-parameter importances (fANOVA)"))
    n = view.result["trials"]
    rows = [{"#": t.number, "state": t.state, "value": t.value, "seconds": t.attrs.get("seconds"),
             "stop": t.attrs.get("stop_reason") or t.attrs.get("fail_reason"),
             **{_column(k): v for k, v in t.params.items()}} for t in view.trials]
    rows.sort(key=lambda r: (r["value"] is None, -(r["value"] or 0) if view.maximize else (r["value"] or 0)))
    cols = ["#", "state", "value", "seconds", "stop", "family", "activation", "lr", "schedule", "scaler", "augment"]
    body.append(f"<p>{n['complete']} complete, {n['pruned']} pruned, {n['fail']} failed trials "
                f"(sampler {view.result['study']['sampler']}, pruner {view.result['study']['pruner']}), "
                "best first:</p>" + table(rows, cols, limit=30))
    defaults = [t for t in view.trials if t.attrs.get("default")]
    if defaults:
        scores = ", ".join(f"{t.params.get('model.family', view.config.model.family)} (trial {t.number}) "
                           + (f"{t.value:.4f}" if t.value is not None else t.state.lower()) for t in defaults)
        body.append(f"<p>nntune's default configurations ran first, as the baseline the search must beat: "
                    f"{escape(scores)}.</p>")
    body += _budget_and_finalists_html(view.result)
    return Section("The search", "How the search went and which settings mattered.", body)


def _budget_and_finalists_html(result: dict) -> list[str]:
    """What ended the search, and the finalists' scores over seeds (the choice is by their mean)."""
    out = []
    b = result.get("budget")
    if b:
        limit = f" of {b['timeout']:.0f} s" if b.get("timeout") else ""
        out.append(f"<p>The search was stopped by <b>{escape(str(b['stopped_by']))}</b> after "
                   f"{b['search_seconds']:.0f} s{limit}; the whole run took {b['seconds']:.0f} s.</p>")
    fin = result.get("finalists") or {}
    if fin.get("finalists"):
        rows = [{"trial": r["trial"], "chosen": "yes" if r["trial"] == fin["chosen"] else "",
                 "mean": r["mean"], "std": r["std"], "scores": ", ".join(f"{v:.4f}" for v in r["scores"]),
                 "seeds": ", ".join(str(x) for x in r["seeds"])} for r in fin["finalists"]]
        out.append(f"<p>Finalists, each re-trained with other seeds and chosen by {escape(fin['by'])} "
                   "(so the final model is not one lucky seed):</p>" + table(rows))
    elif fin.get("skipped"):
        out.append(f"<p>No finalist re-runs: {escape(fin['skipped'])}; the best trial was chosen on one "
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
    body = [figs.embed(plots.pareto_plot(everyone, front, label[other], label["score"]), "pareto",
                       f"Every complete trial, and the Pareto front ({label['score']} vs {label[other]})")]
    rows = [{"trial": p["trial"], **{label[n]: p["values"][n] for n in names},
             "reproduce": f"nntune train --config {Path(p['config']).relative_to(view.directory)}"
             if Path(p["config"]).is_relative_to(view.directory) else f"nntune train --config {p['config']}"}
            for p in points]
    chosen = view.result["best_trial"]
    text = (f"No trial on the front is better in one objective without being worse in another. The final model "
            f"(<code>best/</code>) is trial {chosen}, the front's best {label['score']}; to ship another trade-off, "
            "train its configuration (each point's config is saved in <code>pareto/</code>).")
    return Section("Trade-offs: the Pareto front", text, [table(rows)] + body)
