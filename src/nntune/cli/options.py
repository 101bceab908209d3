"""The option tables every command draws its flags from, and the decorators that add them.

One table per concern (data, model, training, fine-tuning, search, evidence), each row ``(flag, config key, click
type, help)``, so that every command spells an option the same way and :func:`nntune.cli.flags.flag_names` can name
the flag behind any config key in an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from nntune.config import (ACTIVATIONS, BUILTIN_DATASETS, EVIDENCE_QUESTIONS, MODEL_PRESETS, OPTIMIZERS, PRUNERS,
                           SAMPLERS, SCALERS, SCHEDULES)
from nntune.registry import TRACKERS, augment_presets

AUGMENT_PRESETS = augment_presets()

Option = tuple[str, str, click.ParamType | type | None, str]

DATA_OPTIONS: list[Option] = [
    ("--dataset", "data.dataset", click.Choice(list(BUILTIN_DATASETS)), "built-in dataset (default digits)"),
    ("--data", "data.path", click.Path(path_type=Path), "CSV file, NPZ file or image folder"),
    ("--target", "data.target", str, "target column of a CSV file"),
    ("--drop", "data.drop", str, "table columns to leave out, comma-separated (ids, dates, free text)"),
    ("--categorical", "data.categorical", str, "table columns read as categories even where they hold numbers, "
     "comma-separated"),
    ("--task", "data.task", click.Choice(["auto", "classification", "regression"]), "override the inferred task"),
    ("--seed", "seed", int, "seed for splits, initialisation and shuffling"),
]
MODEL_OPTIONS: list[Option] = [
    ("--preset", "model.preset", click.Choice(MODEL_PRESETS), "a named architecture: tcn (dilated residual "
     "convolutions) or resnet; the other model flags override its settings"),
    ("--family", "model.family", click.Choice(["mlp", "cnn", "rnn"]), "model family (rnn: signals only)"),
    ("--activation", "model.activation", click.Choice(ACTIVATIONS), "activation function"),
    ("--batch-norm/--no-batch-norm", "model.batch_norm", None, "batch normalization"),
    ("--hidden-layers", "model.hidden_layers", int, "MLP: number of hidden layers"),
    ("--units", "model.units", int, "MLP: width of the first hidden layer"),
    ("--funnel", "model.funnel", float, "MLP: width ratio between consecutive layers (<=1)"),
    ("--widths", "model.widths", str, "MLP: explicit hidden widths, e.g. 256,128"),
    ("--dropout", "model.dropout", float, "MLP: dropout after each hidden layer"),
    ("--conv-blocks", "model.conv_blocks", int, "CNN: number of conv blocks"),
    ("--convs-per-block", "model.convs_per_block", int, "CNN: convolutions per block"),
    ("--filters", "model.filters", int, "CNN: filters of the first block"),
    ("--filter-multiplier", "model.filter_multiplier", float, "CNN: filter growth per block"),
    ("--kernel-size", "model.kernel_size", int, "CNN: kernel size"),
    ("--pool", "model.pool", click.Choice(["max", "avg", "none"]), "CNN: pooling after each block"),
    ("--residual/--no-residual", "model.residual", None, "CNN: residual connections"),
    ("--dilation-growth", "model.dilation_growth", int, "CNN: block b's convolutions dilate by this to the (b-1)"),
    ("--causal/--no-causal", "model.causal", None, "CNN on signals: convolutions see only earlier steps"),
    ("--head", "model.head", click.Choice(["flatten", "gap"]), "CNN: flatten or global average pool"),
    ("--fc-layers", "model.fc_layers", int, "CNN: hidden FC layers"),
    ("--fc-units", "model.fc_units", int, "CNN: units per FC layer"),
    ("--dropout-after-pool", "model.dropout_after_pool", float, "CNN: spatial dropout after pooling"),
    ("--dropout-before-fc", "model.dropout_before_fc", float, "CNN: dropout on the flattened features"),
    ("--dropout-after-fc", "model.dropout_after_fc", float, "CNN, RNN: dropout after each FC layer"),
    ("--cell", "model.cell", click.Choice(["gru", "lstm"]), "RNN: recurrent cell"),
    ("--rnn-layers", "model.rnn_layers", int, "RNN: stacked recurrent layers"),
    ("--rnn-units", "model.rnn_units", int, "RNN: hidden state size per direction"),
    ("--bidirectional/--no-bidirectional", "model.bidirectional", None, "RNN: read the sequence both ways"),
    ("--rnn-dropout", "model.rnn_dropout", float, "RNN: dropout between recurrent layers"),
    ("--frontend-filters", "model.frontend_filters", int, "RNN: a 1-D conv front-end with this many filters"),
    ("--pooling", "model.pooling", click.Choice(["last", "mean", "attention"]), "RNN: how states become features"),
]
TRAIN_OPTIONS: list[Option] = [
    ("--scaler", "preprocess.scaler", click.Choice(SCALERS), "normalization method"),
    ("--augment", "preprocess.augment", click.Choice(AUGMENT_PRESETS),
     "augmentation preset"),
    ("--augment-strength", "preprocess.augment_strength", float, "augmentation strength in [0, 1]"),
    ("--epochs", "train.epochs", int, "maximum epochs"),
    ("--batch-size", "train.batch_size", int, "batch size"),
    ("--optimizer", "train.optimizer", click.Choice(OPTIMIZERS), "optimizer"),
    ("--lr", "train.lr", str, "initial learning rate, or 'auto' to run the LR range test first"),
    ("--weight-decay", "train.weight_decay", float, "weight decay"),
    ("--grad-clip", "train.grad_clip", float, "clip the gradient norm to this value"),
    ("--label-smoothing", "train.label_smoothing", float, "label smoothing for cross-entropy"),
    ("--schedule", "train.schedule.name", click.Choice(SCHEDULES), "LR schedule"),
    ("--warmup-epochs", "train.schedule.warmup_epochs", int, "linear warmup epochs before the schedule"),
    ("--patience", "train.early_stopping.patience", int, "early-stopping patience in epochs"),
    ("--monitor", "train.early_stopping.monitor", str, "early-stopping monitor (val_loss, val_accuracy, ...)"),
    ("--early-stopping/--no-early-stopping", "train.early_stopping.enabled", None, "early stopping"),
    ("--device", "train.device", str, "auto, cpu, cuda or cuda:N"),
    ("--threads", "train.threads", int, "CPU threads for torch"),
    ("--precision", "train.precision", click.Choice(["auto", "fp32", "bf16", "fp16"]),
     "auto: bf16 autocast + TF32 on GPUs that support it, fp32 on the CPU"),
    ("--compile/--no-compile", "train.compile", None, "torch.compile the training step (CUDA graphs on a GPU)"),
]
FINETUNE_OPTIONS: list[Option] = [
    ("--init-from", "finetune.init_from", click.Path(path_type=Path),
     "start from a saved model (a run's best/): its architecture, weights and scaler; the output layer is replaced "
     "when the task or classes differ"),
    ("--freeze", "finetune.freeze", str, "freeze layers whose name matches this glob, e.g. 'block1.*'"),
    ("--freeze-all-but-last", "finetune.freeze_all_but_last", int,
     "freeze all layer groups (a weighted layer with its batch norm) but the last N"),
    ("--unfreeze-after", "finetune.unfreeze_after", int, "gradual unfreezing: one more group trains every E epochs"),
    ("--lr-mult", "finetune.lr_mult", float, "discriminative LRs: each earlier group gets F x the LR of the next"),
]
SEARCH_OPTIONS: list[Option] = [
    ("--trials", "search.trials", int, "finished trials the study should reach (a resumed study counts its own); "
     "alone: no time cap; with --timeout: whichever comes first; with neither: 20"),
    ("--timeout", "search.timeout", str, "time budget of the whole command, e.g. 600, 90s, 10m, 1h; alone: no trial "
     "cap"),
    ("--population", "search.population", int, "trials trained at once per structure (default: measured; 1 = one "
     "at a time)"),
    ("--finalists", "search.finalists", int, "top configs re-run with extra seeds before choosing (0 = off)"),
    ("--finalist-seeds", "search.finalist_seeds", int, "seeds per finalist, the trial's own included"),
    ("--sampler", "search.sampler", click.Choice(SAMPLERS),
     "Optuna sampler (tpe and nsga2 also do multi-objective searches)"),
    ("--pruner", "search.pruner", click.Choice(PRUNERS), "Optuna pruner, or halving: successive halving that "
     "continues the promising trials up to --max-epochs"),
    ("--max-epochs", "search.max_epochs", int, "with --pruner halving: the top rung, the epochs the best trials "
     "reach (default: about 9x the trial epochs)"),
    ("--storage", "search.storage", str, "Optuna storage URL (default sqlite:///OUT/study.db), e.g. postgresql://..."),
    ("--study-name", "search.study_name", str, "study name inside the storage"),
    ("--trial-epochs", "search.epochs", int, "maximum epochs per trial (default: from the data size)"),
    ("--final", "search.final", click.Choice(["auto", "retrain", "best_trial", "ensemble"]),
     "the final model: retrain the chosen config on train+val, keep its trial's weights, or ensemble its finalist "
     "seeds; auto (default): the ensemble when it validates better than its seeds alone on average, else retrain"),
    ("--final-seeds", "search.final_seeds", int, "a seed ensemble chosen as the final model grows to this many "
     "seeds while the time budget leaves room (default 5)"),
    ("--final-pool/--no-final-pool", "search.final_pool", None, "a seed ensemble chosen as the final model takes "
     "in the other finalists' models when together they have the lower validation loss (default on)"),
    ("--ensemble", "search.ensemble", int, "also report the test metric of the top-K trials' averaged predictions"),
    ("--objectives", "search.objectives", str, "accuracy (or loss) alone, or with params and/or latency, e.g. "
     "accuracy,params: a multi-objective search with a Pareto front (no pruning)"),
    ("--max-params", "search.max_params", int, "prune, before training, any trial whose model has more parameters"),
    ("--max-latency-ms", "search.max_latency_ms", float, "prune any trial slower than this per sample at batch 1 on "
     "the training device"),
    ("--warm-start", "search.warm_start", str, "start a new study with an earlier one's best configurations: its "
     "tune run directory, or a storage URL#study-name"),
    ("--warm-start-top", "search.warm_start_top", int, "how many of the earlier best to enqueue (default 5)"),
]
RAY_OPTIONS: list[Option] = [
    ("--ray", "search.ray", str, "run the search's workers on a Ray cluster: auto (the running one), local (a new "
     "one on this machine) or its address (needs pip install 'nntune[ray]'); this process shows the table, then "
     "runs the finalists and the final fit"),
    ("--workers", "search.workers", int, "with --ray: how many workers (default: as many as the cluster holds)"),
    ("--cpus-per-worker", "search.cpus_per_worker", float, "with --ray: CPUs per worker (default 1; fractions "
     "allowed)"),
    ("--gpus-per-worker", "search.gpus_per_worker", float, "with --ray: GPUs per worker (0.5: two share a card; "
     "default 0)"),
]
EVIDENCE_OPTIONS: list[Option] = [
    ("--seeds", "evidence.seeds", int, "seeds per variant, the same for every variant (default 3)"),
    ("--max-seeds", "evidence.max_seeds", int, "further seeds, up to this many, for comparisons still inconclusive "
     "when time is left (default 10; = --seeds turns it off)"),
    ("--evidence-budget", "evidence.budget", str, "time budget of the evidence, e.g. 300, 5m, 1h (default 10m); "
     "variants run most informative first, the rest are reported as skipped"),
    ("--questions", "evidence.questions", str, "comma-separated questions to answer (default all): "
     + ",".join(EVIDENCE_QUESTIONS)),
]
ALL_OPTIONS = (DATA_OPTIONS, MODEL_OPTIONS, TRAIN_OPTIONS, FINETUNE_OPTIONS, SEARCH_OPTIONS, RAY_OPTIONS,
               EVIDENCE_OPTIONS)

LOG_OPTION = click.option("--log", "log", multiple=True, type=click.Choice(TRACKERS),
                          help="also log to TensorBoard (RUN_DIR/tensorboard) or MLflow (MLFLOW_TRACKING_URI, "
                          "default ./mlflow.db); repeat for both")
JSON_OPTION = click.option("--json", "json_out", is_flag=False, flag_value="-", default=None, metavar="[FILE]",
                           help="write machine-readable JSON to FILE, or to stdout when given without a value")
SPACE_OPTION = click.option("--space", "space_file", type=click.Path(path_type=Path),
                            help="YAML search space overriding the default (see nntune.search.space)")


def add_options(table: list[Option]) -> Callable[[Callable], Callable]:
    """A decorator adding the table's flags; each lands in the command's kwargs as its config key with ``__`` for
    ``.`` (``train.lr`` -> ``train__lr``), ``None`` when not given."""
    def decorate(f: Callable) -> Callable:
        for flag, key, kind, help_text in reversed(table):
            name = key.replace(".", "__")
            if kind is None:
                f = click.option(flag, name, default=None, help=help_text)(f)
            else:
                f = click.option(flag, name, type=kind, default=None, help=help_text)(f)
        return f
    return decorate


def common(f: Callable) -> Callable:
    """``--config FILE`` and ``--set KEY=VALUE``: the options of every command that builds a run config."""
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="override any config key, e.g. --set train.schedule.gamma=0.5 (repeatable)")(f)
    return click.option("--config", "config_file", type=click.Path(path_type=Path),
                        help="YAML run config; flags override it")(f)
