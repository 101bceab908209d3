"""The ``nntune`` click group: the global options (``--debug``, ``--version``) and every subcommand, registered
from the modules that define them (:mod:`~nntune.cli.commands_train`, :mod:`~nntune.cli.commands_search`,
:mod:`~nntune.cli.commands_runs`).
"""

from __future__ import annotations

import click

from nntune.cli.commands_runs import dashboard_cmd, export_cmd, predict_cmd, report_cmd
from nntune.cli.commands_search import explain_cmd, tune_cmd, worker_cmd
from nntune.cli.commands_train import augment_cmd, lr_find_cmd, summary_cmd, train_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show tracebacks instead of one-line errors")
@click.version_option(package_name="nntune")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """nntune: tune and train neural networks for your own data, by measurement."""
    ctx.obj = {"debug": debug}


for command in (summary_cmd, train_cmd, lr_find_cmd, augment_cmd, tune_cmd, worker_cmd, explain_cmd, report_cmd,
                dashboard_cmd, predict_cmd, export_cmd):
    cli.add_command(command)
