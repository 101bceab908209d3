"""The ``nntune`` command. Every subcommand has --help, prints a readable summary and can write JSON.

User errors (:class:`nntune.errors.NNTuneError`) print one line and exit 2; ``--debug`` shows the traceback. This
module is the entry point (:func:`main`: the error boundary, SIGTERM and warnings); the package's other modules are
the option tables (:mod:`~nntune.cli.options`), flags to config (:mod:`~nntune.cli.flags`), what is shown
(:mod:`~nntune.cli.render`), the command start time (:mod:`~nntune.cli.clock`) and the commands
(:mod:`~nntune.cli.commands` and the ``commands_*`` modules). Nothing below the CLI imports it.
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from typing import Any

import click
from rich.markup import escape

from nntune.cli import clock
from nntune.cli.commands import cli
from nntune.cli.flags import flag_names
from nntune.cli.render import console
from nntune.errors import NNTuneError
from nntune.redact import redact

__all__ = ["STARTED", "cli", "flag_names", "main"]


def __getattr__(name: str) -> Any:
    """``nntune.cli.STARTED``: the live value of :data:`nntune.cli.clock.STARTED`, which :func:`main` resets."""
    if name == "STARTED":
        return clock.STARTED
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line errors with exit code 2 unless --debug; SIGTERM (``docker stop``,
    Slurm, ``timeout``) is handled like Ctrl-C; warnings are one line each."""
    # the console script and `python -m nntune` own their process, so its start-up counts; a call from Python
    # (argv given) starts now
    clock.start(own_process=argv is None)
    args = sys.argv[1:] if argv is None else argv
    terminate = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if terminate:
        signal.signal(signal.SIGTERM, _terminate)
    shown = warnings.showwarning
    if "--debug" not in args:
        warnings.showwarning = _show_warning
    try:
        _run(args)
    finally:
        warnings.showwarning = shown
        if terminate:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a command as Ctrl-C does: cleanly, with what finished kept


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    console.print(f"[yellow]warning:[/] {escape(redact(str(message)))}", highlight=False, soft_wrap=True)


def _run(args: list[str]) -> None:
    try:
        cli.main(args=args, prog_name="nntune", standalone_mode=False)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except NNTuneError as err:
        if "--debug" in args:
            raise
        console.print(f"[red]error:[/] {escape(redact(str(err)))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except OSError as err:  # a full disk, a permission, a path that is a file: the file and the reason
        if "--debug" in args:
            raise
        where = f"{err.filename}: " if err.filename else ""
        console.print(f"[red]error:[/] {escape(where + (err.strerror or str(err)))}", highlight=False, soft_wrap=True)
        sys.exit(2)
