"""Evidence blocks shared by the question sections: the controlled verdict, the search's observational comparisons
and the diagnostics' findings.

Controlled evidence (``nntune explain``) comes first in each section; the trials' own comparisons are confounded.
"""

from __future__ import annotations

import json
import statistics

from nntune.reporting import plots
from nntune.reporting.html import Figures, escape, table
from nntune.reporting.run_view import RunView


def evidence_html(view: RunView, figs: Figures, number: int, key: str) -> list[str]:
    """A question's controlled evidence: the verdict, a forest plot and the variants' table (or how to get it)."""
    evidence = view.result.get("evidence") or {}
    entry = evidence.get(key)
    if entry is None:
        command = f"<code>nntune explain {escape(str(view.directory))}</code>"
        why = ("not part of this evidence run" if evidence else
               f"no controlled evidence in this run yet: {command} trains each alternative with several seeds "
               "and reports the effect with its confidence interval")
        return [f"<p class='note'>Controlled evidence: {why}.</p>"]
    setup = evidence["setup"]
    points = setup.get("points", False)
    scale, unit = (100.0, " (points)") if points else (1.0, "")
    metric = setup["metric"]
    label = "Parameter summary" if entry.get("kind") == "parameter summary" else "Measured"
    out = [f"<p class='verdict'><b>{label}:</b> {escape(entry['verdict'])}</p>"]
    rows = entry["variants"]
    if any(r.get("diff") is not None for r in rows):
        label = f"difference in {metric}{unit}, variant − chosen"
        out.append(figs.embed(plots.forest_plot(rows, entry["chosen"], label, scale, entry.get("margin")),
                              f"q{number}_evidence", f"Q{number}: each variant against the chosen "
                              f"{entry['chosen']}, {setup['method']}"))
        variants = []
        for r in rows:
            ci = (f"{scale * r['ci_low']:+.2f} .. {scale * r['ci_high']:+.2f}" if r.get("ci_low") is not None
                  else "")
            row = {"variant": r["name"], f"mean {metric}": r["mean"],
                   f"difference{unit}": None if r.get("diff") is None else round(scale * r["diff"], 3),
                   "95 % CI": ci, "n": r["n"], "verdict": _row_verdict(r)}
            if "epochs" in r:
                row.update({"epochs": r["epochs"], "epochs saved": r["epochs_saved"]})
            else:
                row["seconds"] = r["seconds"]
            variants.append(row)
        chosen_mean = entry.get("chosen_mean")
        head = (f"<p>Chosen: <b>{escape(entry['chosen'])}</b>"
                + (f", mean {metric} {chosen_mean:.4f}" if chosen_mean is not None else "")
                + f"; seeds {', '.join(map(str, setup['seeds']))}; {escape(setup['score'])}.</p>")
        out += [head, table(variants)]
        if setup.get("rule"):
            out.append(f"<p class='note'>{escape(setup['rule'])}</p>")
    if entry.get("skipped"):
        out.append("<p class='note'>Not run: " + "; ".join(f"{escape(s['name'])} ({escape(s['reason'])})"
                                                           for s in entry["skipped"]) + ".</p>")
    return out


def _row_verdict(row: dict) -> str:
    """A variant's verdict with its adjusted p-value, or what would decide it (empty for evidence recorded before
    verdicts existed)."""
    kind = row.get("verdict")
    if kind is None:
        return ""
    if kind == "inconclusive":
        more = row.get("more_seeds")
        return f"inconclusive (~{more} more seeds)" if more else "inconclusive"
    p = row["p_equivalent_adjusted"] if kind == "equivalent" else row["p_adjusted"]
    return f"{kind} (p={p:.2g})"


def observational(view: RunView) -> str:
    """The heading and caveat before a search's own comparisons (nothing for a single run)."""
    return ("<h3>Observational: what the search's own trials show</h3><p class='note'>These trials differ in many "
            "settings at once and ran once each, so the comparisons below are confounded; the measured answer is "
            "above.</p>") if view.kind == "tune" else ""


def no_search(view: RunView) -> str:
    """A note that a single training run has no trials to compare (nothing for a search)."""
    return ("<p class='note'>This is a single training run, so there is no comparison across trials; "
            "<code>nntune tune</code> measures the alternatives.</p>") if view.kind == "train" else ""


def rank_text(view: RunView, groups: dict[str, list[float]], what: str) -> str:
    """The groups ranked by their best val metric, with median and count (nothing without groups)."""
    if not groups:
        return ""
    pick = max if view.maximize else min
    ranked = sorted(groups.items(), key=lambda kv: pick(kv[1]), reverse=view.maximize)
    parts = [f"<b>{escape(k)}</b> best {pick(v):.4f}, median {statistics.median(v):.4f} (n={len(v)})"
             for k, v in ranked]
    return f"<p>Val {view.metric} by {what} across complete trials: " + "; ".join(parts) + ".</p>"


def category_evidence(view: RunView, figs: Figures, key: str, what: str, name: str) -> list[str]:
    """Ranking text and a box plot of the val metric by a categorical parameter (nothing without trials)."""
    groups = view.groups(key)
    if not groups:
        return []
    return [rank_text(view, groups, what),
            figs.embed(plots.by_category(groups, what, f"val {view.metric}"), name, f"Val metric by {what}")]


def numeric_evidence(view: RunView, figs: Figures, keys_by_family: dict[str, str], what: str, name: str,
                     log: bool = False) -> list[str]:
    """A scatter of the val metric against a numeric parameter, one colour per model family."""
    series = view.series(keys_by_family)
    if not series:
        return []
    return [figs.embed(plots.vs_numeric(series, what, f"val {view.metric}", log=log), name,
                       f"Val metric vs {what}")]


def findings_html(findings: list[dict]) -> str:
    """The diagnostics' findings as a table: code, severity, advice and their scalar evidence."""
    rows = []
    for f in findings:
        evidence = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f["evidence"].items()
                    if not isinstance(v, (list, dict))}
        rows.append({"finding": f["code"], "severity": f["severity"], "advice": f["message"],
                     "evidence": json.dumps(evidence)})
    return table(rows)
