"""Callbacks: small objects with hooks the training loops call (early stopping, checkpoints, pruning, progress,
time limits) and the Ctrl-C/SIGTERM record that stops a run between results."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import save_file

from nntune.atomic import staged
from nntune.training.monitor import is_improvement, monitor_mode

if TYPE_CHECKING:
    from nntune.training.single import Trainer


class Callback:
    """Override any hook. ``on_epoch_end`` may call ``trainer.stop(reason)`` to end training after this epoch."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        """Called after each epoch with its logged values (epoch counted from 1)."""

    def on_epochs_logged(self, trainer: Trainer, epoch: int) -> None:
        """Called after every run trained together (the members of a population) has had ``on_epoch_end`` for this
        epoch, right after it for a lone Trainer: where a decision compares the runs (successive halving's rungs)."""

    def on_batch_end(self, trainer: Trainer) -> None:
        """Called after each training step, only for callbacks that override it; ``trainer.stop(reason)`` here cuts
        the epoch short (it is validated and recorded on the batches done)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Called once after the last epoch, also when training was stopped or interrupted."""


class StopRequest:
    """What callbacks stop training through (``trainer.stop(reason)``), shared by the Trainer and each member of a
    population: the first reason given is kept in ``stop_reason``."""

    stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """Ask training to end after the current epoch (the first reason given is kept)."""
        self.stop_reason = self.stop_reason or reason

    @property
    def stop_requested(self) -> bool:
        return self.stop_reason is not None


class ProgressBar(Callback):
    """A rich progress bar over epochs showing the latest losses and metric."""

    def __init__(self, description: str = "training") -> None:
        self.description = description
        self._progress: Progress | None = None
        self._task = None

    def on_train_begin(self, trainer: Trainer) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"), transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=trainer.epochs, status="")

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in logs.items()
                          if k in ("loss", "val_loss", f"val_{trainer.metric_name}"))
        self._progress.update(self._task, completed=epoch, status=shown)

    def on_train_end(self, trainer: Trainer) -> None:
        if self._progress is not None:
            self._progress.stop()


class BestCheckpoint(Callback):
    """Save the weights (safetensors) whenever the monitored value improves, so a crash loses nothing."""

    def __init__(self, path: str | Path, monitor: str = "val_loss", mode: str = "auto") -> None:
        self.path = Path(path)
        self.monitor = monitor
        self.mode = monitor_mode(monitor, mode)
        self.best: float | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        value = logs.get(self.monitor)
        if value is None or value != value:
            return
        if is_improvement(value, self.best, self.mode):
            self.best = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
            with staged(self.path) as tmp:
                save_file(state, str(tmp), metadata={"epoch": str(epoch), self.monitor: repr(value)})


class StopAtEpoch(Callback):
    """End training after a fixed epoch while the schedule keeps its full horizon (used for the final retrain)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if epoch >= self.epoch:
            trainer.stop(f"fixed length: {self.epoch} epochs")


def batch_callbacks(callbacks: list[Callback]) -> list[Callback]:
    """The callbacks that watch every training step (most watch epochs only, and cost nothing per step)."""
    return [cb for cb in callbacks if type(cb).on_batch_end is not Callback.on_batch_end]


class TimeLimit(Callback):
    """End training after the epoch during which a time budget ran out (``seconds_left`` is asked each epoch)."""

    DEFAULT = "time budget"  # the stop reason's first words

    def __init__(self, seconds_left: Callable[[], float], what: str = DEFAULT) -> None:
        self.seconds_left = seconds_left
        self.what = what

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.seconds_left() <= 0:
            trainer.stop(f"{self.what} at epoch {epoch}")


class Deadline(TimeLimit):
    """A hard deadline: ``seconds_left`` is also asked after every training step, and training ends at the first
    step past it; the epoch it cut short is validated and recorded on the batches done. The search's time budget
    (``tune --timeout``) is one."""

    def on_batch_end(self, trainer: Trainer) -> None:
        if self.seconds_left() <= 0:
            trainer.stop(f"{self.what} at epoch {len(trainer.history) + 1}")


class Interrupts(Callback):
    """Ctrl-C and SIGTERM (``docker stop``, Slurm, ``timeout``) that cannot be lost, and never cost a finished trial.

    Python drops an exception raised inside a garbage-collection callback (SQLAlchemy registers weakref callbacks
    that run all the time), so a KeyboardInterrupt raised by the default handler can vanish and the search would go
    on. This handler records the signal before raising; the search loop and every trial's epoch end raise again while
    it is recorded. Inside :meth:`deferred` (a trial's result being recorded) a signal is only recorded, and raised
    when the block ends: the result is written first, then the search stops."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.seen = False
        self._deferring = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.seen = True
        if not self._deferring:
            raise KeyboardInterrupt

    def __enter__(self) -> Interrupts:
        # signal handlers live in the main thread; a process started with a signal ignored keeps ignoring it
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) not in (signal.SIG_IGN, None):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Record, do not raise, signals that arrive inside the block; raise at its end if one came."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        self.check()

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt

    def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
        self.check()
