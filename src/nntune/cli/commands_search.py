"""The commands that search and measure: ``tune`` (an Optuna search, then the final model), ``worker`` (more trials
for a shared study) and ``explain`` (the evidence for a finished run).

The search itself is :func:`nntune.search.study.tune` and :func:`nntune.search.worker.run_worker`, the evidence
:func:`nntune.evidence.explain.explain`; these commands parse flags, call them and show the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from nntune.cli import clock
from nntune.cli.flags import evidence_flags, flag_names, search_config
from nntune.cli.options import (DATA_OPTIONS, EVIDENCE_OPTIONS, FINETUNE_OPTIONS, JSON_OPTION, LOG_OPTION,
                                RAY_OPTIONS, SEARCH_OPTIONS, SPACE_OPTION, TRAIN_OPTIONS, add_options, common)
from nntune.cli.render import emit_json, out_console, print_evidence, print_tune_summary, write_report
from nntune.config import RunConfig, apply_overrides


@click.command("tune")
@common
@add_options(DATA_OPTIONS)
@add_options(SEARCH_OPTIONS)
@add_options(RAY_OPTIONS)
@add_options(TRAIN_OPTIONS)
@add_options(FINETUNE_OPTIONS)
@add_options(EVIDENCE_OPTIONS)
@SPACE_OPTION
@click.option("--evidence", is_flag=True, help="after the final fit, measure each question's alternatives around the "
              "chosen configuration (as nntune explain does)")
@click.option("--resume", is_flag=True, help="continue the study of the same name; finished trials are kept")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/tune"), show_default=True,
              help="run directory: study.db, trials.csv, trials/, best/, result.json")
@click.option("--quiet", is_flag=True, help="no live table")
@LOG_OPTION
@JSON_OPTION
def tune_cmd(evidence: bool, resume: bool, out: Path, quiet: bool, log: tuple[str, ...], json_out: str | None,
             **kwargs: Any) -> None:
    """Search architecture and training settings with Optuna, then fit and test the best model."""
    from nntune.artifacts import write_result
    from nntune.evidence.explain import explain
    from nntune.search.budget import with_report
    from nntune.search.study import tune

    started = clock.STARTED  # --timeout covers the whole command: start-up, imports and the report included
    cfg = search_config(kwargs)
    result = tune(cfg, out, resume=resume, progress=not quiet, log=log, started=started)
    if evidence:  # the evidence has its own budget (--evidence-budget)
        result["evidence"] = explain(out, progress=not quiet)
    reporting = time.monotonic()
    report = write_report(out, quiet or json_out == "-", result)
    result["budget"] = with_report(result["budget"], time.monotonic() - reporting)
    result["seconds"] = result["budget"]["seconds"]
    write_result(out, result)
    if json_out != "-":
        print_tune_summary(result, out)
        if evidence:
            print_evidence(result["evidence"])
        out_console.print(f"report: {report}")
    emit_json(result, json_out)


@click.command("worker")
@common
@add_options(DATA_OPTIONS)
@add_options(SEARCH_OPTIONS)
@add_options(TRAIN_OPTIONS)
@add_options(FINETUNE_OPTIONS)
@SPACE_OPTION
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/worker"), show_default=True,
              help="where this worker keeps its trials' weights")
@click.option("--quiet", is_flag=True, help="no live table")
@LOG_OPTION
def worker_cmd(out: Path, quiet: bool, log: tuple[str, ...], **kwargs: Any) -> None:
    """Run trials of a shared study (use the same --config and --storage on every machine)."""
    from nntune.search.worker import run_worker

    done = run_worker(search_config(kwargs), out, progress=not quiet, log=log)
    out_console.print(f"worker done ({done['stopped_by']}, {done['seconds']:.0f} s): the study "
                      f"{done['study']!r} has {done['finished']} finished trials")


@click.command("explain")
@click.argument("run_dir", type=click.Path(path_type=Path))
@add_options(EVIDENCE_OPTIONS)
@click.option("--quiet", is_flag=True, help="no progress bar")
@JSON_OPTION
def explain_cmd(run_dir: Path, quiet: bool, json_out: str | None, **kwargs: Any) -> None:
    """Answer the ten questions for a finished tune or train run by measurement: train controlled variants of the
    chosen configuration (one change each) with several seeds and report each effect with its 95 % CI.

    The evidence goes into RUN_DIR/result.json (key "evidence") and the rebuilt RUN_DIR/report.html."""
    from nntune.evidence.explain import explain

    flags = evidence_flags(kwargs)
    seeds, max_seeds = kwargs.pop("evidence__seeds", None), kwargs.pop("evidence__max_seeds", None)
    given = {k: v for k, v in (("evidence.seeds", seeds), ("evidence.max_seeds", max_seeds)) if v is not None}
    if given:  # checked here, so that an error names the flag
        apply_overrides(RunConfig(), given, labels=flag_names())
    evidence = explain(run_dir, seeds=seeds, budget=flags.get("evidence.budget"),
                       questions=flags.get("evidence.questions"), progress=not quiet and json_out != "-",
                       max_seeds=max_seeds)
    report = write_report(run_dir, quiet or json_out == "-")
    if json_out != "-":
        print_evidence(evidence)
        out_console.print(f"report: {report}")
    emit_json(evidence, json_out)
