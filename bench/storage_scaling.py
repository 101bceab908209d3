"""How far one shared study scales (issue 27): N workers run nntune's real worker loop against one PostgreSQL server,
with a stand-in for training, and each storage call is timed.

Every worker runs :func:`nntune.search.worker.work` (ask, enqueue the population's members, heartbeats, report and
prune every epoch, save the weights, tell) on its own storage connection pool, as a separate machine would; only
``fit_population`` is replaced: it sleeps ``--epoch-seconds`` per epoch and reports a synthetic validation score (a
function of the sampled LR and the epoch, so the pruner prunes). To fit 64 workers on a small machine, workers are
threads, ``--per-process`` to a process (each its own connection pool and copy of the search). For each N it
prints one JSON line: finished trials per second, p50/p99 latency (ms) of each storage call and of all of them,
the server's CPU seconds per finished trial (PostgreSQL's processes' utime+stime over the measured window, and the
proxy's with ``--grpc``), the
workers' CPU use, and the projection: how many real workers one server core holds at half load for trials of 10 s,
60 s and 300 s (``trial seconds / server CPU per trial / 2``). With ``--grpc`` the workers reach the server
through Optuna's gRPC storage proxy (one proxy process in front of PostgreSQL) instead.

    bash scripts/with_postgres.sh .venv/bin/python bench/storage_scaling.py --workers 8 32 64 --seconds 60
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import platform
import socket
import time
import uuid
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
# the storage calls that reach the database (the storage's other methods answer from memory)
QUERIES = ("create_new_study", "get_study_id_from_name", "get_study_user_attrs", "get_study_system_attrs",
           "get_study_directions", "get_all_studies", "set_study_user_attr", "set_study_system_attr",
           "create_new_trial", "set_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
           "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials",
           "get_trial_id_from_study_id_trial_number", "record_heartbeat", "_get_stale_trial_ids")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (those that ended count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def postgres_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "postgres":
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def fresh_database(url: str) -> str:
    import psycopg

    name = f"scaling_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def stand_in(epochs: int, epoch_seconds: float):
    """A fit_population that sleeps for the epochs and reports a synthetic score; real models, for the weights."""
    import math

    from nntune.models.builders import build_model
    from nntune.training.epoch import FitResult

    class Member:
        def __init__(self) -> None:
            self.stopped: str | None = None

        def stop(self, reason: str) -> None:
            self.stopped = self.stopped or reason

    def fit_population(cfgs, data, callbacks=None, **_):
        ds = data.dataset
        members = [Member() for _ in cfgs]
        fits = [FitResult(initial_val_loss=2.3) for _ in cfgs]
        for epoch in range(1, epochs + 1):
            live = [i for i, m in enumerate(members) if m.stopped is None]
            if not live:
                break
            time.sleep(epoch_seconds)
            for i in live:
                lr = cfgs[i].train.lr
                score = 0.97 - 0.3 * abs(math.log10(lr) + 2.5) / 2 - 0.3 / epoch
                row = {"epoch": epoch, "loss": 1 - score, "accuracy": score, "val_loss": 1 - score,
                       "val_accuracy": score, "lr": lr, "seconds": epoch_seconds}
                fits[i].history.append(row)
                if score >= fits[i].best.get("val_accuracy", -1):
                    fits[i].best_epoch = epoch
                for cb in callbacks[i]:
                    cb.on_epoch_end(members[i], epoch, row)
                fits[i].stopped_epoch = epoch
                if members[i].stopped:
                    fits[i].stop_reason = members[i].stopped
        return [(build_model(c.model, ds.input_shape, ds.n_outputs, seed=c.seed), f) for c, f in zip(cfgs, fits)]

    return fit_population


def timed_storage(calls: dict[str, list[float]], grpc: bool) -> None:
    """Time every public call of the storage class the workers use (RDBStorage, or the gRPC proxy's client)."""
    from optuna.storages import GrpcStorageProxy, RDBStorage

    cls = GrpcStorageProxy if grpc else RDBStorage
    for name in QUERIES:
        if not hasattr(cls, name):
            continue
        original = getattr(cls, name)

        def wrapper(*a, _f=original, _n=name, **k):
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                calls[_n].append(time.perf_counter() - t)

        setattr(cls, name, wrapper)


def process_main(url: str, grpc: str | None, threads: int, seconds: float, epochs: int, epoch_seconds: float,
                 out: str, queue) -> None:
    """One process: ``threads`` workers of the study, each with its own storage, for ``seconds``."""
    import dataclasses
    import threading

    import nntune.search.trials as trials_module
    import nntune.storage as storage_module
    from nntune.config import RunConfig, apply_overrides
    from nntune.search.budget import Budget
    from nntune.search.setup import prepare_search
    from nntune.search.study import open_study
    from nntune.search.worker import work

    calls: dict[str, list[float]] = collections.defaultdict(list)
    timed_storage(calls, grpc is not None)
    trials_module.fit_population = stand_in(epochs, epoch_seconds)
    if grpc is not None:
        from optuna.storages import GrpcStorageProxy

        host, port = grpc.rsplit(":", 1)
        storage_module.make_storage = lambda url, heartbeat=10: GrpcStorageProxy(host=host, port=int(port))
        import nntune.search.study as study_module
        study_module.make_storage = storage_module.make_storage
    cfg = apply_overrides(RunConfig(), {"data.dataset": "digits", "search.storage": url, "search.study_name": "scale",
                                        "search.population": 4, "search.epochs": epochs, "train.lr_auto": False,
                                        "search.space": {"model.family": "mlp"}})
    base = prepare_search(cfg, Path(out))
    done = []

    def one(i: int) -> None:
        search = dataclasses.replace(base, prepared=dict(base.prepared))
        study = open_study(search, resume=True, worker=True)
        done.append(work(search, study, Budget(None, seconds))["stopped_by"])

    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put({"calls": dict(calls), "stopped": done})


def grpc_proxy(url: str, port: int) -> None:
    """Optuna's gRPC storage proxy in front of the PostgreSQL study."""
    from optuna.storages import run_grpc_proxy_server

    from nntune.storage import make_storage

    run_grpc_proxy_server(make_storage(url), host="127.0.0.1", port=port)


def measure(url: str, n: int, per_process: int, seconds: float, epochs: int, epoch_seconds: float, warmup: float,
            grpc: bool) -> dict:
    import tempfile

    import optuna

    from nntune.storage import make_storage

    db = fresh_database(url)
    ctx = mp.get_context("spawn")
    proxy, address = None, None
    if grpc:  # on a free port: gRPC lets a second server share a port, so a stale proxy would take connections
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proxy = ctx.Process(target=grpc_proxy, args=(db, port), daemon=True)
        proxy.start()
        address = f"127.0.0.1:{port}"
        time.sleep(3)
    queue = ctx.Queue()
    sizes = [per_process] * (n // per_process) + ([n % per_process] if n % per_process else [])
    out = tempfile.mkdtemp(prefix="nntune-scaling-")
    procs = [ctx.Process(target=process_main, args=(db, address, k, seconds, epochs, epoch_seconds, out, queue))
             for k in sizes]
    try:
        started = time.time()
        for p in procs:
            p.start()
        time.sleep(warmup)
        clients, proxies = [p.pid for p in procs], [proxy.pid] if proxy else []
        pg0, cl0, t0 = cpu_seconds(postgres_pids() + proxies), cpu_seconds(clients), time.time()
        time.sleep(max(1.0, started + seconds - 5 - time.time()))
        pg1, cl1, t1 = cpu_seconds(postgres_pids() + proxies), cpu_seconds(clients), time.time()
        reports = [queue.get(timeout=seconds + 300) for _ in procs]
        for p in procs:
            p.join()
    finally:  # no process outlives the measurement (a proxy left running would serve the next one)
        for p in [*procs, *([proxy] if proxy else [])]:
            if p.is_alive():
                p.kill()
    study = optuna.load_study(study_name="scale", storage=make_storage(db))
    from datetime import datetime
    window = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None and t.state.name in
              ("COMPLETE", "PRUNED") and t0 <= datetime.timestamp(t.datetime_complete) <= t1]
    calls: dict[str, list[float]] = collections.defaultdict(list)
    for r in reports:
        for name, values in r["calls"].items():
            calls[name].extend(values)
    everything = sorted(v for values in calls.values() for v in values)

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 2) if values else None

    finished = len(window)
    server = (pg1 - pg0) / finished if finished else None
    return {
        "workers": n, "grpc_proxy": grpc, "window_s": round(t1 - t0, 1), "finished_in_window": finished,
        "trials_per_s": round(finished / (t1 - t0), 2),
        "ideal_trials_per_s": round(n * 4 / (epochs * epoch_seconds), 2),  # every population at full length
        "pruned_share": round(sum(t.state.name == "PRUNED" for t in window) / max(1, finished), 2),
        "calls_per_trial": round(sum(len(v) for v in calls.values()) / max(1, len(study.trials)), 1),
        "latency_ms": {"all": {"p50": pct(everything, 0.5), "p99": pct(everything, 0.99)},
                       **{name: {"n": len(v), "p50": pct(v, 0.5), "p99": pct(v, 0.99)}
                          for name, v in sorted(calls.items(), key=lambda kv: -sum(kv[1]))[:8]}},
        "server_cpu_s_per_trial": round(server, 5) if server else None,
        "server_cpu_share": round((pg1 - pg0) / (t1 - t0), 2),
        "workers_cpu_share": round((cl1 - cl0) / (t1 - t0), 2),
        "workers_per_server_core_at_half_load": {f"{s}s_trials": int(s / server / 2) for s in (10, 60, 300)}
        if server else None,
        "stopped_by": collections.Counter(s for r in reports for s in r["stopped"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=os.environ.get("NNTUNE_TEST_POSTGRES_URL"),
                        help="a PostgreSQL server URL (default: the one scripts/with_postgres.sh starts)")
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--per-process", type=int, default=8, help="worker threads per process")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each worker runs")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the measured window opens")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--epoch-seconds", type=float, default=0.3)
    parser.add_argument("--grpc", action="store_true", help="through Optuna's gRPC storage proxy")
    args = parser.parse_args()
    if not args.storage:
        parser.error("--storage: no PostgreSQL URL (run through scripts/with_postgres.sh, or give one)")
    print(json.dumps({"benchmark": "storage_scaling", "machine": f"{platform.node()} ({os.cpu_count()} cores)",
                      "epochs": args.epochs, "epoch_seconds": args.epoch_seconds, "population": 4}), flush=True)
    for n in args.workers:
        print(json.dumps(measure(args.storage, n, args.per_process, args.seconds, args.epochs, args.epoch_seconds,
                                 args.warmup, args.grpc)), flush=True)


if __name__ == "__main__":
    main()
