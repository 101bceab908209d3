"""What the commands show a person (rich tables on stdout, status spinners and messages on stderr) and the JSON they
write for programs. Everything here reads a result dict the library returned; nothing computes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from nntune import atomic
from nntune.redact import redact

if TYPE_CHECKING:
    from nntune.models.inspect import Summary

console = Console(stderr=True)  # progress, warnings and errors
out_console = Console()  # the summaries


def emit_json(payload: dict, json_out: str | None) -> None:
    """``--json -`` prints JSON to stdout; ``--json FILE`` writes it there."""
    if json_out is None:
        return
    text = json.dumps(redact(payload), indent=2)
    if json_out == "-":
        click.echo(text)
    else:
        atomic.write_text(json_out, text)


def write_report(out: Path, quiet: bool, result: dict | None = None) -> Path:
    """Write RUN_DIR/report.html (with a spinner unless ``quiet``); with a ``result`` logged to MLflow, attach the
    report to its run too."""
    from nntune.reporting.report import build_report
    from nntune.tracking import attach_to_run

    if quiet:
        path = build_report(out)
    else:
        with console.status("writing the report"):
            path = build_report(out)
    attach_to_run((result or {}).get("tracking"), [path, out / "figures"])
    return path


def print_model_summary(s: Summary, family: str, shape: list[int], n_out: int) -> None:
    """A model's layers with trainable / non-trainable parameter counts, then the totals."""
    table = Table(title=f"{family.upper()} for input {tuple(shape)} -> {n_out} outputs")
    for col, justify in (("layer", "left"), ("type", "left"), ("output", "left"),
                         ("trainable", "right"), ("non-trainable", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in s.layers:
        table.add_row(r.name, r.type, "x".join(str(d) for d in r.output_shape[1:]), f"{r.trainable:,}",
                      f"{r.non_trainable:,}")
    out_console.print(table)
    out_console.print(f"total {s.total:,}  trainable {s.trainable:,}  non-trainable {s.non_trainable:,}  "
                      f"parameters {s.param_mb:.3f} MB  activations/sample {s.activation_mb:.3f} MB")


def print_lr_find(result: dict, method: str, plot: Path) -> None:
    """The LR range test's suggestions (the chosen method marked), its warnings and the plot's path."""
    table = Table(title="LR range test", show_header=False)
    for name, lr in result["suggestions"].items():
        table.add_row(name + (" (chosen)" if name == method else ""), f"{lr:.3g}")
    out_console.print(table)
    for w in result["warnings"]:
        out_console.print(f"[yellow]warning[/] {w}")
    out_console.print(f"suggested lr: {result['suggestion']:.3g}   plot: {plot}")


def _summary_table(command: str, result: dict) -> tuple[str, Table]:
    """The headline metric for the task and an empty two-column summary table titled for the run."""
    metric = "accuracy" if result["data"]["task"] == "classification" else "r2"
    table = Table(title=f"nntune {command}: {result['data']['name']} ({result['data']['task']})", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    return metric, table


def print_train_summary(result: dict, out: Path) -> None:
    """A train run: parameters, epochs, stop reason, val/test metric, warnings found, the run directory."""
    metric, table = _summary_table("train", result)
    m = result["model"]
    table.add_row("parameters (trainable / non-trainable)", f"{m['trainable']:,} / {m['non_trainable']:,}")
    table.add_row("best epoch / stopped", f"{result['best_epoch']} / {result['stopped_epoch'] or '-'}")
    table.add_row("stop reason", result["stop_reason"])
    if result.get("lr_find"):  # --lr auto: the LR the range test chose, which the run trained at
        table.add_row("learning rate (range test)", f"{result['lr_find']['suggestion']:.3g}")
    ft = result.get("finetune")
    if ft:
        head = "replaced" if ft["head_replaced"] else "kept"
        table.add_row("fine-tuned from", f"{ft['init_from']} (output layer {head})")
    table.add_row(f"val {metric}", f"{result['val'].get(metric, float('nan')):.4f}")
    table.add_row(f"test {metric}", f"{result['test'][metric]:.4f}")
    table.add_row("seconds", f"{result['seconds']:.1f}")
    out_console.print(table)
    for f in result["findings"]:
        if f["severity"] == "warning":
            out_console.print(f"[yellow]finding[/] {f['code']}: {f['message']}")
    out_console.print(f"run directory: {out}")


def print_tune_summary(result: dict, out: Path) -> None:
    """A tune run: trials, budget, the chosen trial and finalists, the final model's test metric, the chosen
    configuration and (multi-objective) the Pareto front."""
    metric, table = _summary_table("tune", result)
    n = result["trials"]
    table.add_row("trials (complete / pruned / failed)", f"{n['complete']} / {n['pruned']} / {n['fail']}")
    b = result["budget"]
    used = f"{b['seconds']:.0f} s" + (f" of {b['timeout']:.0f} s, {100 * b['fraction_used']:.0f}%" if b["timeout"]
                                      else "")
    table.add_row("search stopped by", f"{b['stopped_by']}; run took {used}")
    if result.get("cluster"):
        c = result["cluster"]
        hosts = len({r["host"] for r in c["ran"]})
        lost = (f", {c['lost']} lost" if c["lost"] else "") + (f", {len(c['errors'])} failed (result.json: "
                                                                 "cluster.errors)" if c["errors"] else "")
        table.add_row("trials ran on", f"Ray ({c['address']}): {c['workers']} workers on {hosts} of {c['nodes']} "
                                       f"nodes{lost}")
    table.add_row("chosen trial", str(result["best_trial"]))
    table.add_row(f"its {result['study']['objective'].replace('_', ' ')}", f"{result['best_value']:.4f}")
    fin = result.get("finalists") or {}
    for row in fin.get("finalists", []):
        spread = f"{row['mean']:.4f} ± {row['std']:.4f}" if row["mean"] is not None else "diverged on a seed"
        mark = " (chosen)" if row["trial"] == fin["chosen"] else ""
        table.add_row(f"finalist trial {row['trial']}{mark}, {len(row['scores'])} seeds", spread)
    final = result["final"]
    e = final.get("ensemble")
    if e:
        verdict = "taken" if final["mode"] == "ensemble" else "not taken"
        if e.get("chosen_at"):
            verdict += f" at {e['chosen_at']['size']} seeds, {e['chosen_at']['ensemble']:.4f}"
        table.add_row(f"ensemble of {e['size']} seeds, val {e['monitor'].removeprefix('val_')} ({verdict})",
                      f"{e['ensemble']:.4f} (seeds alone: {', '.join(f'{v:.4f}' for v in e['members'])})")
        pool = e.get("pool")
        if pool:
            table.add_row(f"with finalist trials {', '.join(map(str, pool['trials']))}: {pool['size']} models, val "
                          f"loss ({'taken' if pool['taken'] else 'not taken'})",
                          f"{pool['loss']:.4f} (the seeds alone: {pool['seeds_loss']:.4f})")
    table.add_row(f"final model ({final['mode']}, {final['epochs']} epochs) test {metric}",
                  f"{result['test'][metric]:.4f}")
    if result.get("ensemble"):
        e = result["ensemble"]
        table.add_row(f"ensemble of top {e['k']} test {metric}", f"{e['test'][metric]:.4f}")
    table.add_row("seconds", f"{result['seconds']:.1f}")
    out_console.print(table)
    params = Table(title="chosen configuration", show_header=False)
    for k, v in result["best_params"].items():
        params.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    out_console.print(params)
    if result.get("pareto"):
        names = result["study"]["objectives"]
        front = Table(title="Pareto front (nntune train --config CONFIG reproduces a point)")
        for col in ("trial", *names, "config"):
            front.add_column(col)
        for p in result["pareto"]:
            front.add_row(str(p["trial"]), *(f"{int(p['values'][n]):,}" if n == "params" else f"{p['values'][n]:.4g}"
                                             for n in names), p["config"])
        out_console.print(front)
    if result["interrupted"]:
        out_console.print("[yellow]interrupted:[/] the final model uses the trials finished so far")
    out_console.print(f"run directory: {out}  (resume with --resume)")


def print_evidence(evidence: dict) -> None:
    """One row per question: its verdict; then what was run and skipped."""
    setup = evidence["setup"]
    table = Table(title=f"evidence: {setup['metric']} over seeds {', '.join(map(str, setup['seeds']))} "
                        f"({setup['method']})", show_lines=True)
    table.add_column("question", no_wrap=True)
    table.add_column("verdict")
    for key, entry in evidence.items():
        if key != "setup":
            table.add_row(key, entry["verdict"])
    out_console.print(table)
    seeds = len(setup["seeds"])
    out_console.print(f"{setup['runs']} runs ({setup['runs'] // seeds} of {setup['variants'] + 1} configurations × "
                      f"{seeds} seeds) in {setup['seconds']:.0f} s of {setup['budget']:.0f} s; {setup['skipped']} "
                      "skipped"
                      + (" (interrupted)" if setup.get("interrupted") else ""))
    plan = setup.get("plan")
    if plan:
        missing = f"; not answered: {', '.join(plan['unanswered'])}" if plan["unanswered"] else ""
        out_console.print(f"plan: {plan['affordable']} of {plan['variants']} variants in an estimated "
                          f"{plan['probe_seconds'] + plan['planned_seconds']:.0f} s (took "
                          f"{plan['measured_seconds']:.0f} s){missing}")
    if setup.get("rule"):
        out_console.print(setup["rule"])
