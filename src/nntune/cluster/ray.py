"""A search's workers as Ray tasks on a cluster (the optional extra: ``pip install 'nntune[ray]'``).

Ray places the workers (CPUs and GPUs per worker, fractions of a card included) and starts a worker again when its
process or its node dies; the trials themselves are coordinated by the study's storage exactly as for ``nntune
worker`` processes started by hand (:func:`nntune.search.worker.work` is the loop of both), so there is no scheduler
of ours and nothing finished is lost: a dead worker's running trials go stale and are retried by the heartbeat rule.
The launching process ships its prepared search (data, space, LR range test) to the workers once through Ray's
object store, shows the live table while they run, and publishes when the search must end in the study (its
estimate of what the finalists and the final fit will take shrinks as trials are measured), so the workers stop in
time for it to finish the run as ``tune`` does on one machine.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nntune.errors import NNTuneError
from nntune.redact import redact
from nntune.search.budget import FINISHED, Budget, count
from nntune.search.progress import LiveTrials
from nntune.search.setup import Search
from nntune.storage import fail_stale_trials, study_url
from nntune.tracking import Tracker
from nntune.training.callbacks import Interrupts

INSTALL = "pip install 'nntune[ray]'"
ENDS_KEY = "search_ends_at"  # the study's user attribute holding when the workers' search must end (Unix time)
WORKER_RETRIES = 3  # times Ray starts a worker again after its process or node died
POLL_SECONDS = 1.0  # how often the launcher refreshes the table and the published end
CANCEL_GRACE = 30.0  # seconds the workers get to record their trials after a Ctrl-C or a missed deadline
READ_EVERY = 2.0  # seconds a worker keeps the published end before reading it again
MAX_ROUNDS = 3  # rounds of workers: the first, and up to two more for trial slots that dead workers held


def import_ray():
    """The ``ray`` module, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise NNTuneError(f"--ray: Ray is not installed; {INSTALL} (on this machine and every node)") from None
    return ray


def run_on_ray(search: Search, study: optuna.Study, budget: Budget, progress: bool = False, log: Sequence[str] = (),
               finishing_cost: Callable[[optuna.Study], float] | None = None) -> tuple[bool, dict[str, Any]]:
    """Run the search's trials on ``search.cfg.search.ray`` with its workers and resources until ``budget`` ends
    (``finishing_cost``: study -> seconds to keep back for the finalists and the final fit). Returns False when
    Ctrl-C ended it, and what ran where (result.json's ``cluster``)."""
    ray = import_ray()
    cfg = search.cfg.search
    started_ray = _connect(ray, cfg.ray)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        sqlite = _sqlite_path(cfg.storage, search.out)
        if sqlite is not None:
            check_sqlite_host(sqlite, {n.get("NodeManagerHostname", "?") for n in nodes}, socket.gethostname())
        n = cfg.workers or capacity(nodes, cfg.cpus_per_worker, cfg.gpus_per_worker)
        check_fits(nodes, cfg.cpus_per_worker, cfg.gpus_per_worker)
        end = PublishedEnd(study)
        end.publish(budget, finishing_cost)
        options: dict[str, Any] = {"num_cpus": cfg.cpus_per_worker, "num_gpus": cfg.gpus_per_worker,
                                   "max_retries": WORKER_RETRIES, "retry_exceptions": False}
        if not cfg.gpus_per_worker:  # Ray leaves the node's GPUs visible to a task that asked for none
            options["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}
        task = ray.remote(_ray_worker).options(**options)
        args = (ray.put(_for_workers(search)), budget.trials, (socket.gethostname(), sqlite) if sqlite else None,
                _version(), list(log))
        rounds, workers = Rounds(), n
        while workers:
            completed = _wait(ray, [task.remote(*args) for _ in range(workers)], study, budget, progress,
                              lambda: end.publish(budget, finishing_cost), rounds)
            try:
                more = completed and rounds.count < MAX_ROUNDS and not rounds.errors
                workers = _still_missing(study, budget, n, cfg.heartbeat) if more else 0
            except KeyboardInterrupt:  # while waiting for a dead worker's trials to go stale
                completed, workers = False, 0
    finally:
        if started_ray:
            ray.shutdown()
    rounds.check()
    budget.end_search(rounds.stopped_by(completed))
    info = {"engine": "ray", "address": redact(cfg.ray), "workers": n, "cpus_per_worker": cfg.cpus_per_worker,
            "gpus_per_worker": cfg.gpus_per_worker, "nodes": len(nodes), "rounds": rounds.count,
            "lost": rounds.lost, "errors": rounds.errors,
            "ran": [{k: r[k] for k in ("host", "pid", "seconds", "stopped_by")} for r in rounds.ran]}
    return completed, info


class Rounds:
    """What the workers of every round reported: their runs, how many were lost, their errors."""

    def __init__(self) -> None:
        self.count, self.ran, self.lost, self.errors = 0, [], 0, []
        self.first_error: BaseException | None = None

    def add(self, ray, ref) -> None:
        """Collect one finished worker: its report, or that it was lost (its process or node died more often than
        Ray retries), or its error (the other workers go on: a worker started by hand fails alone too)."""
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        try:
            self.ran.append(ray.get(ref))
        except TaskCancelledError:  # cancelled before it started
            pass
        except RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            self.first_error = self.first_error or cause
            self.errors.append(f"{cause.__class__.__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
        except RayError:
            self.lost += 1

    def check(self) -> None:
        """Raise when no worker ran to its end: the first worker error, or that every worker died."""
        if self.ran:
            return
        if isinstance(self.first_error, NNTuneError):
            raise NNTuneError(f"every Ray worker failed; the first: {self.first_error}") from None
        if self.first_error is not None:
            raise self.first_error
        if self.lost:
            raise NNTuneError(f"every Ray worker died ({self.lost}, each started {WORKER_RETRIES + 1} times); the "
                              "finished trials are kept in the study: --resume continues")

    def stopped_by(self, completed: bool) -> str:
        """What ended the search: the workers' first reason of timeout, trials, grid (a worker the launcher stopped
        at the deadline counts as timeout)."""
        if not completed:
            return "interrupted"
        reasons = {r["stopped_by"] for r in self.ran}
        return next((r for r in ("timeout", "trials", "grid") if r in reasons), "timeout")


def _still_missing(study: optuna.Study, budget: Budget, n: int, heartbeat: float) -> int:
    """Workers for another round: a worker that died holds its running trials' slots of ``--trials`` until they go
    stale, so the workers left may have stopped short of the cap. Wait for those trials to go stale (they are failed
    and retried), and return how many workers the missing trials need (0: none, or no time or rounds left)."""
    if budget.trials is None or count(study) >= budget.trials or budget.search_left() <= 0:
        return 0
    if count(study, (TrialState.RUNNING,)):
        time.sleep(2 * heartbeat + 1)  # the storage's grace period, from the last heartbeat at the latest
        fail_stale_trials(study)
    missing = budget.trials - count(study, (*FINISHED, TrialState.RUNNING))
    return min(n, missing) if missing > 0 and budget.search_left() > 0 else 0


def _connect(ray, address: str | None) -> bool:
    """Join the cluster at ``address`` (or start a local one for ``local``); True when this call started Ray, which
    then ends with the search. A process already connected (``ray.init()`` in a notebook) keeps its connection."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address == "local":
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except Exception as err:  # ConnectionError, a bad address, token authentication refused
        detail = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise NNTuneError(f"--ray {address}: cannot join the Ray cluster ({detail}); start one with `ray start "
                          "--head` (with token authentication, RAY_AUTH_MODE=token here too), or use --ray local")\
            from None
    return True


def _sqlite_path(storage: str | None, out: Path) -> str | None:
    """The study's SQLite file (the default storage, or a sqlite:// URL), or None for a database server."""
    url = study_url(storage, out)
    return url.split(":///", 1)[1] if url.startswith("sqlite") else None


def check_sqlite_host(path: str, hosts: set[str], here: str) -> None:
    """A SQLite study is a file on the launcher's machine (``here``): refuse nodes on other hosts."""
    others = sorted(h for h in hosts if h != here)
    if others:
        raise NNTuneError(f"--ray: the study is a SQLite file on this machine ({path}), which the cluster's other "
                          f"nodes ({', '.join(others[:3])}) cannot share; pass --storage postgresql://user@host/db, a "
                          "server every node reaches")


def capacity(nodes: list[dict], cpus: float, gpus: float) -> int:
    """How many workers the cluster holds at once: per node, its CPUs (and GPUs, when workers ask for them)
    divided by what one worker asks; at least one."""
    total = 0
    for node in nodes:
        res = node.get("Resources", {})
        fit = math.floor(res.get("CPU", 0) / cpus + 1e-9)
        if gpus:
            fit = min(fit, math.floor(res.get("GPU", 0) / gpus + 1e-9))
        total += fit
    return max(1, total)


def check_fits(nodes: list[dict], cpus: float, gpus: float) -> None:
    """Refuse resources no node has (Ray would wait for them forever), naming what the cluster offers."""
    if any(n.get("Resources", {}).get("CPU", 0) >= cpus and n.get("Resources", {}).get("GPU", 0) >= gpus
           for n in nodes):
        return
    most_cpu = max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0)
    most_gpu = max((n.get("Resources", {}).get("GPU", 0) for n in nodes), default=0)
    raise NNTuneError(f"--cpus-per-worker {cpus:g} --gpus-per-worker {gpus:g}: no node of the Ray cluster has that "
                      f"much (the largest: {most_cpu:g} CPUs, {most_gpu:g} GPUs); ask for less per worker")


class PublishedEnd:
    """When the workers' search must end, kept in the study (:data:`ENDS_KEY`): the launcher publishes it, each
    worker's :class:`~nntune.search.budget.Budget` reads it (at most every :data:`READ_EVERY` seconds)."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.value, self.read_at, self.shown = math.inf, -math.inf, None

    def publish(self, budget: Budget, finishing_cost: Callable[[optuna.Study], float] | None) -> None:
        """The launcher's side: keep back what the finishing steps will take, publish the search's end when it
        moved by a second or more."""
        if budget.timeout is None:  # no end (and none left from an earlier, timed run of the study)
            if self.shown is None:
                self.study.set_user_attr(ENDS_KEY, None)
                self.shown = math.inf
            return
        if finishing_cost is not None and count(self.study, (TrialState.COMPLETE,)):
            budget.keep_back(finishing_cost(self.study))  # before any trial completes, the initial reserve stays
        ends = time.time() + budget.search_left()
        if self.shown is None or abs(ends - self.shown) >= 1.0:
            self.study.set_user_attr(ENDS_KEY, ends)
            self.shown = ends

    def __call__(self) -> float:
        """The worker's side: the published end (inf while none is)."""
        now = time.monotonic()
        if now - self.read_at >= READ_EVERY:
            self.value = float(self.study.user_attrs.get(ENDS_KEY) or math.inf)
            self.read_at = now
        return self.value


def _for_workers(search: Search) -> Search:
    """The search as the workers get it: paths absolute (a worker's directory is not this one), no tracker or
    Ctrl-C record of this process."""
    cfg = search.cfg
    if cfg.finetune.init_from is not None:
        cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(
            update={"init_from": Path(cfg.finetune.init_from).resolve()})})
    return dataclasses.replace(search, cfg=cfg, out=Path(search.out).resolve(), tracker=Tracker(), interrupts=None)


def _version() -> str:
    try:
        return metadata.version("nntune")
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH
        return "unknown"


def _ray_worker(search: Search, trials: int | None, sqlite: tuple[str, str] | None, version: str,
                log: list[str]) -> dict[str, Any]:
    """The body of one Ray worker, on a cluster node: join the study, run trials until the launcher's end or the
    trial cap, report where and how it ran. ``sqlite``: the launcher's host and the study's file, when a file."""
    # imported here: this function runs in a worker process on a cluster node, and search.study imports this module
    from nntune.search.study import open_study
    from nntune.search.worker import work

    if version != _version():
        raise NNTuneError(f"nntune {_version()} on node {socket.gethostname()}, {version} where the search was "
                          "launched: install the same version on every node")
    if sqlite is not None:  # (the launcher's host, the file): a node may have joined after the launcher looked
        check_sqlite_host(sqlite[1], {socket.gethostname()}, here=sqlite[0])
    search.out.mkdir(parents=True, exist_ok=True)
    study = open_study(search, resume=True, worker=True)
    done = work(search, study, Budget(trials, None, ends=PublishedEnd(study)), log=log)
    return {**done, "host": socket.gethostname(), "pid": os.getpid()}


def _wait(ray, refs: list, study: optuna.Study, budget: Budget, progress: bool, publish: Callable[[], None],
          rounds: Rounds) -> bool:
    """Wait for one round of workers with the live table, collecting each into ``rounds``; Ctrl-C (or SIGTERM) asks
    each to stop, and they record their finished trials first. Returns whether the round ended by itself."""
    live = LiveTrials(study, budget) if progress else None
    interrupts = Interrupts()
    outstanding, completed, overdue = list(refs), True, False
    rounds.count += 1
    try:
        if live:
            live.__enter__()
        interrupts.__enter__()
        while outstanding:
            interrupts.check()
            done = ray.wait(outstanding, num_returns=len(outstanding), timeout=POLL_SECONDS)[0]
            for ref in done:
                rounds.add(ray, ref)
                outstanding.remove(ref)
            if not overdue and budget.search_left() < -CANCEL_GRACE:  # far past the end: stop who has not stopped
                overdue = True
                _cancel(ray, outstanding)
            publish()
            if live:
                live.refresh()
    except KeyboardInterrupt:
        completed = False
        _cancel(ray, outstanding)
        for ref in ray.wait(outstanding, num_returns=len(outstanding), timeout=CANCEL_GRACE)[0]:
            rounds.add(ray, ref)
    finally:
        interrupts.__exit__()
        if live:
            live.__exit__(None, None, None)
    return completed


def _cancel(ray, refs: list) -> None:
    """Ask running workers to stop as Ctrl-C would (each records its finished trials, fails the rest)."""
    for ref in refs:
        ray.cancel(ref, force=False)
