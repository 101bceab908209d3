"""Search quality at a fixed wall-clock budget: nntune's search against its own other settings, its untuned defaults,
Keras Tuner's Hyperband and (for tables) scikit-learn references. Prints one JSON line per run and a JSON summary
(mean ± std of test accuracy per dataset and arm) at the end.

Arms (for one seed every arm sees the same split: 70 % train, 15 % validation, 15 % test, stratified, split by the
seed as nntune does; the test split is used once):
- ``nntune``: ``nntune tune --timeout B`` (populations, defaults first, finalists);
- ``nntune_pop1``: the same with ``--population 1`` (one trial at a time);
- ``nntune_halving``: the same with ``--pruner halving`` (successive halving that continues the promising trials);
- ``optuna_random``: Optuna's random sampler over nntune's space, no pruning, no populations, no defaults, no
  finalists (a plain random search);
- ``untuned_mlp`` / ``untuned_cnn`` / ``untuned_rnn``: ``nntune train`` with the default config of the family (no
  budget: it trains until early stopping); ``untuned_tcn`` / ``untuned_resnet``: the same with the named preset
  (``--preset``; the RNN and TCN on signals only, the ResNet on signals and images);
- ``nntune@REV`` (e.g. ``nntune@52330fa``): the ``nntune`` arm run by the code of commit REV (its ``src/`` from
  ``git archive``, in a child process; a built-in dataset that code lacks is handed to it as an NPZ of the same
  arrays, so its seeded split is the other arms');
- ``keras_hyperband``: Keras Tuner's Hyperband (Keras 3, torch backend) over an equivalent MLP / CNN space (and a GRU
  family on signals), stopped at the budget; its best model is tested as trained. Needs
  ``pip install keras keras-tuner`` (benchmark only);
- tables only: ``sk_hgb`` (HistGradientBoostingClassifier, defaults) and ``sk_mlp_random`` (MLPClassifier, random
  search in the budget, chosen on the validation split).

Run with ``--threads 1`` to give every arm the same single core (the other core stays free for the machine).
``--log FILE`` appends each run's row to FILE and skips the runs FILE already holds (same dataset, arm, seed and
budget), so a table of many hours is filled over several sittings; ``--keep DIR`` keeps the nntune arms' run
directories; the summary covers every row in FILE. Each row
records the commit that made it; a row of older code is kept under an arm named ``<arm>@<commit>``. The 10-minute
table of docs/benchmarks.md is filled this way:
``--budget 600 --threads 2 --log bench/results/search_quality_600s.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ARMS = ("nntune", "nntune_pop1", "nntune_halving", "optuna_random", "untuned_mlp", "untuned_cnn", "untuned_rnn",
        "untuned_tcn", "untuned_resnet", "keras_hyperband", "sk_hgb", "sk_mlp_random")
TABLES = ("breast_cancer", "wine")
SIGNALS = ("signals", "delays")


def _commit() -> str | None:
    """Which code makes a row: the short commit, ``-dirty`` if files other than the results logs differ from it."""
    here = Path(__file__).parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True,
                          cwd=here).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                              ":(exclude,top)bench/results"], check=False, capture_output=True, text=True,
                             cwd=here).stdout.strip()
    return (head + "-dirty" * bool(changed)) or None


COMMIT = _commit()
KEEP: Path | None = None  # --keep: where the nntune arms' run directories are kept (default: deleted)
NNTUNE_ARMS = {"nntune": {}, "nntune_pop1": {"search.population": 1},
               "nntune_halving": {"search.pruner": "halving"},
               "optuna_random": {"search.sampler": "random", "search.pruner": "none", "search.population": 1,
                                 "search.defaults_first": False, "search.finalists": 0}}


def _split(dataset: str, seed: int):
    """The split nntune's arms use for ``seed`` (nntune splits by the run's seed), unscaled."""
    from nntune.config import RunConfig, apply_overrides
    from nntune.training.pipeline import prepare_data

    cfg = apply_overrides(RunConfig(), {"data.dataset": dataset, "preprocess.scaler": "none", "seed": seed})
    return prepare_data(cfg)


def nntune_arm(arm: str, dataset: str, seed: int, budget: float, data: dict | None = None) -> dict:
    """``tune`` with the arm's settings on ``dataset`` (or on the ``data.*`` overrides given)."""
    from nntune.config import RunConfig, apply_overrides
    from nntune.search.study import tune

    cfg = apply_overrides(RunConfig(), {**(data or {"data.dataset": dataset}), "seed": seed, "search.timeout": budget,
                                        **NNTUNE_ARMS[arm]})
    with tempfile.TemporaryDirectory() as tmp:
        out = KEEP / f"{dataset}-{arm}-seed{seed}" if KEEP else tmp
        r = tune(cfg, out)
    return {"test_accuracy": r["test"]["accuracy"], "trials": r["trials"], "stopped_by": r["budget"]["stopped_by"],
            "family": r["final"]["config"]["model"]["family"], "population_sizes": r["study"]["population_sizes"],
            "fraction_used": r["budget"]["fraction_used"], "finalists_ran": bool((r.get("finalists") or {}).get("chosen")
                                                                                  is not None),
            "finalists_skipped": (r.get("finalists") or {}).get("skipped"), "budget_cut": r["budget"].get("cut"),
            "final_epochs": r["final"].get("epochs")}


def as_of_arm(arm: str, rev: str, dataset: str, seed: int, budget: float, threads: int) -> dict:
    """An nntune arm run by the code of commit ``rev`` (its ``src/`` taken by ``git archive``, run in a child
    process). A built-in dataset that code does not have is handed to it as an NPZ file of the same arrays, in the same
    order, so that its seeded split is the one the other arms see."""
    import numpy as np

    root = Path(__file__).resolve().parent.parent
    tree = Path(tempfile.gettempdir()) / f"nntune-src-{rev}"
    if not tree.exists():
        part = tree.with_name(tree.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        archive = subprocess.run(["git", "archive", rev, "src"], cwd=root, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(part)], input=archive, check=True)
        part.rename(tree)
    sources = (tree / "src/nntune/data/sources.py").read_text()
    with tempfile.TemporaryDirectory() as work:
        data = {"data.dataset": dataset}
        if f'"{dataset}": ' not in sources:
            from nntune.data.sources import load_dataset

            ds = load_dataset(dataset)
            data = {"data.path": str(Path(work) / f"{dataset}.npz")}
            np.savez(data["data.path"], x=ds.x.numpy(), y=ds.y.numpy())
        spec = {"arm": arm, "dataset": dataset, "seed": seed, "budget": budget, "data": data, "threads": threads}
        child = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True,
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(tree / "src")})
    return json.loads(child.stdout.strip().splitlines()[-1])


def untuned_arm(name: str, dataset: str, seed: int) -> dict | None:
    """``nntune train`` with a family's defaults (``mlp``, ``cnn``, ``rnn``) or a named preset (``tcn``, ``resnet``);
    None where the model does not fit the data."""
    from nntune.config import MODEL_PRESETS, RunConfig, apply_overrides
    from nntune.training.pipeline import train

    if (name != "mlp" and dataset in TABLES) or (name in ("rnn", "tcn") and dataset not in SIGNALS):
        return None
    model = {"model.preset": name} if name in MODEL_PRESETS else {"model.family": name}
    r = train(apply_overrides(RunConfig(), {"data.dataset": dataset, "seed": seed, **model}))
    return {"test_accuracy": r["test"]["accuracy"], "epochs": len(r["history"])}


def keras_arm(dataset: str, seed: int, budget: float, started: float) -> dict:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import keras_tuner as kt
    import numpy as np

    from nntune.search.space import trial_epochs

    d = _split(dataset, seed)
    x_tr, x_va, x_te = (t.numpy() for t in (d.x_train, d.x_val, d.x_test))
    y_tr, y_va, y_te = (t.numpy() for t in (d.y_train, d.y_val, d.y_test))
    axes = (0,) if x_tr.ndim == 2 else (0, 2) if x_tr.ndim == 3 else (0, 2, 3)
    mean, std = x_tr.mean(axis=axes, keepdims=True), x_tr.std(axis=axes, keepdims=True) + 1e-8
    x_tr, x_va, x_te = ((x - mean) / std for x in (x_tr, x_va, x_te))
    if x_tr.ndim > 2:  # Keras convolutions take channels last
        x_tr, x_va, x_te = (np.moveaxis(x, 1, -1) for x in (x_tr, x_va, x_te))
    n_classes, kind = int(y_tr.max()) + 1, {2: "tabular", 3: "signal", 4: "image"}[d.x_train.dim()]
    deadline = started + budget
    keras.utils.set_random_seed(seed)

    def build(hp):
        family = hp.Choice("family", {"tabular": ["mlp"], "image": ["mlp", "cnn"]}.get(kind, ["mlp", "cnn", "gru"]))
        act = hp.Choice("activation", ["relu", "gelu", "tanh", "elu"])
        inputs = keras.Input(x_tr.shape[1:])
        h = inputs
        if family == "cnn":
            conv, pool = (keras.layers.Conv1D, keras.layers.MaxPooling1D) if kind == "signal" else \
                (keras.layers.Conv2D, keras.layers.MaxPooling2D)
            size = x_tr.shape[1] if kind == "signal" else min(x_tr.shape[1:3])
            blocks = max(1, min(3, int(math.log2(max(2, size / 2)))))
            kernel = hp.Choice("kernel", [3, 5, 7] if kind == "signal" else [3, 5], parent_name="family",
                               parent_values=["cnn"])
            for b in range(hp.Int("blocks", 1, blocks, parent_name="family", parent_values=["cnn"])):
                h = conv(hp.Int(f"filters_{b}", 8, 64, sampling="log", parent_name="family",
                                parent_values=["cnn"]), kernel, padding="same", activation=act)(h)
                h = pool(2, padding="same")(h)
            h = keras.layers.Flatten()(h)
            h = keras.layers.Dense(hp.Int("fc_units", 32, 256, sampling="log", parent_name="family",
                                          parent_values=["cnn"]), activation=act)(h)
        elif family == "gru":
            layers = hp.Int("gru_layers", 1, 3, parent_name="family", parent_values=["gru"])
            both = hp.Boolean("bidirectional", parent_name="family", parent_values=["gru"])
            units = hp.Int("gru_units", 16, 128, sampling="log", parent_name="family", parent_values=["gru"])
            for i in range(layers):
                cell = keras.layers.GRU(units, return_sequences=i < layers - 1)
                h = keras.layers.Bidirectional(cell)(h) if both else cell(h)
        else:
            h = keras.layers.Flatten()(h)
            for i in range(hp.Int("layers", 1, 4, parent_name="family", parent_values=["mlp"])):
                h = keras.layers.Dense(hp.Int(f"units_{i}", 32, 512, sampling="log", parent_name="family",
                                              parent_values=["mlp"]), activation=act)(h)
        h = keras.layers.Dropout(hp.Float("dropout", 0.0, 0.5))(h)
        model = keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(h))
        model.compile(optimizer=keras.optimizers.Adam(hp.Float("lr", 1e-4, 3e-2, sampling="log")),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    class TimeUp(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() > deadline:
                self.model.stop_training = True

    class TimedHyperband(kt.Hyperband):
        def pre_create_trial(self):
            if time.monotonic() > deadline:
                raise kt.errors.FatalError("time budget")

    with tempfile.TemporaryDirectory() as out:
        # Hyperband's brackets again and again until the budget ends (one iteration ended a signals run at 190 s)
        tuner = TimedHyperband(build, objective="val_accuracy", max_epochs=trial_epochs(len(x_tr)), factor=3,
                               hyperband_iterations=1000, seed=seed, directory=out, project_name="b",
                               overwrite=True)
        try:
            tuner.search(x_tr, y_tr, validation_data=(x_va, y_va), batch_size=64, verbose=0,
                         callbacks=[TimeUp(), keras.callbacks.EarlyStopping(patience=5)])
        except kt.errors.FatalError:
            pass
        trials = len(tuner.oracle.trials)
        model = tuner.get_best_models(1)[0]
        acc = float((model.predict(x_te, verbose=0).argmax(-1) == y_te).mean())
    return {"test_accuracy": acc, "trials": trials}


def sklearn_arm(arm: str, dataset: str, seed: int, budget: float, started: float) -> dict | None:
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if dataset not in TABLES:
        return None
    d = _split(dataset, seed)
    x_tr, x_va, x_te = (t.numpy() for t in (d.x_train, d.x_val, d.x_test))
    y_tr, y_va, y_te = (t.numpy() for t in (d.y_train, d.y_val, d.y_test))
    if arm == "sk_hgb":
        m = HistGradientBoostingClassifier(random_state=seed).fit(np.concatenate([x_tr, x_va]),
                                                                   np.concatenate([y_tr, y_va]))
        return {"test_accuracy": float(m.score(x_te, y_te))}
    rng = np.random.default_rng(seed)
    best, best_val, trials = None, -1.0, 0
    while time.monotonic() < started + budget:
        layers = tuple(int(2 ** rng.uniform(4, 9)) for _ in range(rng.integers(1, 4)))
        m = make_pipeline(StandardScaler(), MLPClassifier(layers, alpha=10 ** rng.uniform(-6, -1),
                                                          learning_rate_init=10 ** rng.uniform(-4, -1.5),
                                                          max_iter=300, random_state=int(rng.integers(1 << 30))))
        m.fit(x_tr, y_tr)
        trials += 1
        if (v := m.score(x_va, y_va)) > best_val:
            best, best_val = m, v
    return {"test_accuracy": float(best.score(x_te, y_te)), "trials": trials}


def run(arm: str, dataset: str, seed: int, budget: float, threads: int) -> dict | None:
    started = time.monotonic()
    if "@" in arm:
        out = as_of_arm(*arm.split("@"), dataset, seed, budget, threads)
    elif arm in NNTUNE_ARMS:
        out = nntune_arm(arm, dataset, seed, budget)
    elif arm.startswith("untuned_"):
        out = untuned_arm(arm.removeprefix("untuned_"), dataset, seed)
    elif arm == "keras_hyperband":
        out = keras_arm(dataset, seed, budget, started)
    else:
        out = sklearn_arm(arm, dataset, seed, budget, started)
    if out is None:
        return None
    return {"dataset": dataset, "arm": arm, "seed": seed, "budget_s": budget, **out,
            "seconds": round(time.monotonic() - started, 1), "commit": arm.partition("@")[2] or COMMIT}


def summarize(rows: list[dict]) -> list[dict]:
    table: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        table.setdefault((r["dataset"], r["arm"]), []).append(r)
    out = []
    for (ds, arm), runs in table.items():
        accs = [r["test_accuracy"] for r in runs]
        out.append({"dataset": ds, "arm": arm, "n": len(accs), "mean": round(statistics.fmean(accs), 4),
                    "std": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
                    "mean_seconds": round(statistics.fmean(r["seconds"] for r in runs), 1)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="digits,mnist5k,signals,breast_cancer,wine")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--budget", type=float, default=60, help="wall-clock seconds per search arm and run")
    p.add_argument("--budget-for", default="", help="per-dataset budgets overriding --budget, e.g. mnist5k=120")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log", type=Path, help="append each run's JSON line here too (a partial run keeps its rows)")
    p.add_argument("--keep", type=Path, help="keep each nntune arm's run directory under this folder "
                   "(DATASET-ARM-seedN: result.json, study.db, every trial's weights) for bench/ties.py and the like")
    p.add_argument("--child", help=argparse.SUPPRESS)  # as_of_arm's child process: one nntune arm, a JSON spec
    args = p.parse_args()
    global KEEP
    KEEP = args.keep
    warnings.filterwarnings("ignore")  # sklearn's ConvergenceWarning and Keras's notices would drown the rows
    spec = json.loads(args.child) if args.child else {}
    os.environ["OMP_NUM_THREADS"] = str(spec.get("threads", args.threads))
    import torch

    torch.set_num_threads(spec.get("threads", args.threads))
    if spec:
        print(json.dumps(nntune_arm(spec["arm"], spec["dataset"], spec["seed"], spec["budget"], spec["data"])))
        return
    budgets = {k: float(v) for k, v in (kv.split("=") for kv in args.budget_for.split(",") if kv)}
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()] \
        if args.log and args.log.exists() else []
    done = {(r["dataset"], r["arm"], r["seed"], r["budget_s"]) for r in rows}
    for ds in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in args.arms.split(","):
                if (ds, arm, seed, budgets.get(ds, args.budget)) in done:
                    continue
                row = run(arm, ds, seed, budgets.get(ds, args.budget), args.threads)
                if row is None:
                    continue
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                if args.log:
                    with args.log.open("a") as fh:
                        fh.write(line + "\n")
                print(f"{ds} {arm} seed {seed}: {row['test_accuracy']:.4f} in {row['seconds']}s", file=sys.stderr)
    print(json.dumps({"benchmark": "search_quality", "machine": platform.machine(), "cpu": platform.processor(),
                      "threads": args.threads, "budget_s": {ds: budgets.get(ds, args.budget)
                                                            for ds in args.datasets.split(",")}, "seeds": args.seeds,
                      "summary": summarize(rows)}, indent=2))


if __name__ == "__main__":
    main()
