"""The run config's schema: one typed, validated structure describing a run end to end.

Sections: data, preprocess, model, train (with schedule and early stopping) and search. Loaded from YAML, overridden
with dotted ``key=value`` pairs from the CLI, and saved beside every artifact so any result can be reproduced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nntune import registry
from nntune.errors import ConfigError

ACTIVATIONS = registry.names(registry.ACTIVATIONS)
MODEL_PRESETS = registry.names(registry.MODEL_PRESETS)
SCALERS = ("auto", "none", "minmax", "zscore", "robust", "unit", "channel")
SCHEDULES = registry.names(registry.SCHEDULES)
OPTIMIZERS = registry.names(registry.OPTIMIZERS)
SAMPLERS = registry.names(registry.SAMPLERS)
PRUNERS = registry.PRUNERS
BUILTIN_DATASETS = ("digits", "mnist5k", "signals", "delays", "breast_cancer", "wine")
DROPOUT_PLACES = ("after_pool", "before_fc", "after_fc")  # where a CNN's dropout can go (model.dropout_<place>)
DEFAULT_TRIALS = 20  # the trial budget of a search given neither --trials nor --timeout
# the keys of the ten questions in result.json's evidence, in the report's order
EVIDENCE_QUESTIONS = ("trainable", "dropout", "depth", "width", "lr", "activation", "normalization", "augmentation",
                      "schedule", "early_stopping")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the data comes from and how it is split."""

    dataset: str | None = Field("digits", description="built-in dataset: " + ", ".join(BUILTIN_DATASETS))
    path: Path | None = Field(None, description="CSV file, NPZ file or image folder (overrides dataset)")
    target: str | None = Field(None, description="target column of a CSV file")
    drop: list[str] = Field(default_factory=list, description="table columns to leave out (ids, dates, free text)")
    categorical: list[str] = Field(default_factory=list, description="table columns read as categories even "
                                                                     "where their values are numbers (codes)")
    max_onehot: int | None = Field(None, ge=2, description="a table's categorical column with more categories is "
                                                           "encoded by its frequency rank instead of one-hot "
                                                           "(default: one category per 5 rows, at most 1000)")
    task: Literal["auto", "classification", "regression"] = "auto"
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


class PreprocessConfig(_Section):
    """Normalization and augmentation."""

    scaler: Literal[SCALERS] = Field("auto", description="auto: channel for images/signals, zscore for tables")
    augment: str = Field("none", description="augmentation preset: none, light, digits, natural, signal, or custom "
                                             "(the ops in augment_ops)")
    augment_strength: float = Field(0.5, ge=0, le=1)
    impute: Literal["median", "mean"] = Field("median", description="a table's missing numbers: the training rows' "
                                                                    "median or mean, with a missing-indicator column")
    augment_ops: list[dict[str, Any]] | None = Field(None, description="the ops of augment: custom, e.g. "
                                                                     "[{op: hflip}, {op: noise, std: 0.02}] "
                                                                     "(ignored by the presets)")

    @model_validator(mode="after")
    def _custom_ops(self) -> PreprocessConfig:
        if self.augment == "custom" and self.augment_ops is None:
            raise ValueError("augment: custom needs augment_ops, the list of ops, e.g. [{op: hflip}]")
        return self

    def custom_ops(self) -> list[dict[str, Any]] | None:
        """The explicit ops when ``augment`` is ``custom``; None for a preset."""
        return self.augment_ops if self.augment == "custom" else None


class ModelConfig(_Section):
    """Architecture of an MLP, a CNN (1-D or 2-D, picked from the input shape) or a recurrent network (signals)."""

    preset: Literal[MODEL_PRESETS] | None = Field(None, description="a named architecture (tcn, resnet) whose "
                                                   "settings fill in those this section does not give")
    family: Literal["mlp", "cnn", "rnn"] = "mlp"
    activation: Literal[ACTIVATIONS] = "relu"
    leaky_slope: float = Field(0.01, gt=0, lt=1)
    batch_norm: bool = False
    # MLP
    hidden_layers: int = Field(2, ge=1, le=64)
    units: int = Field(256, ge=1)
    funnel: float = Field(1.0, gt=0, le=1, description="width ratio between consecutive hidden layers")
    widths: list[int] | None = Field(None, description="explicit hidden widths (overrides hidden_layers/units)")
    dropout: float = Field(0.0, ge=0, lt=1, description="MLP: dropout after each hidden layer")
    # CNN
    conv_blocks: int = Field(2, ge=1, le=16)
    convs_per_block: int = Field(1, ge=1, le=8)
    filters: int = Field(32, ge=1)
    filter_multiplier: float = Field(2.0, ge=1)
    kernel_size: int = Field(3, ge=1)
    pool: Literal["max", "avg", "none"] = "max"
    residual: bool = False
    dilation_growth: int = Field(1, ge=1, le=8, description="CNN: block b's convolutions use dilation "
                                                            "dilation_growth**(b-1) (2: a TCN-style stack)")
    causal: bool = Field(False, description="CNN on signals: each convolution sees only the current and earlier "
                                            "steps (left padding)")
    head: Literal["flatten", "gap"] = "flatten"
    fc_layers: int = Field(1, ge=0, le=16)
    fc_units: int = Field(128, ge=1)
    dropout_after_pool: float = Field(0.0, ge=0, lt=1, description="CNN: spatial dropout after each pooling")
    dropout_before_fc: float = Field(0.0, ge=0, lt=1, description="CNN: dropout on the flattened features")
    dropout_after_fc: float = Field(0.0, ge=0, lt=1, description="CNN and RNN: dropout after each FC layer")
    # RNN (signals (C, L): time runs along L); the FC head is the CNN's (fc_layers, fc_units, dropout_after_fc)
    cell: Literal["gru", "lstm"] = "gru"
    rnn_layers: int = Field(1, ge=1, le=8)
    rnn_units: int = Field(64, ge=1, description="RNN: hidden state size per direction")
    bidirectional: bool = False
    rnn_dropout: float = Field(0.0, ge=0, lt=1, description="RNN: dropout between recurrent layers")
    frontend_filters: int = Field(0, ge=0, description="RNN: a 1-D conv (kernel_size) before the recurrent layers; "
                                                       "0 = none")
    pooling: Literal["last", "mean", "attention"] = Field("last", description="RNN: the last state, the mean over "
                                                                               "time, or learned attention weights")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        """A preset's settings fill in the keys the section does not give itself."""
        if isinstance(data, dict) and data.get("preset") in registry.MODEL_PRESETS:
            return {**registry.MODEL_PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _widths(self) -> ModelConfig:
        if self.widths is not None:
            if not self.widths:
                raise ValueError("widths must list at least one hidden layer")
            if any(w < 1 for w in self.widths):
                raise ValueError(f"widths must be positive, got {self.widths}")
        return self

    def hidden_widths(self) -> list[int]:
        """MLP hidden widths: ``widths`` if given, else ``units`` shrunk by ``funnel`` per layer."""
        if self.widths is not None:
            return list(self.widths)
        return [max(1, round(self.units * self.funnel**i)) for i in range(self.hidden_layers)]

    def block_filters(self) -> list[int]:
        """CNN filters per block, e.g. 16 -> 32 -> 64 with multiplier 2."""
        return [max(1, round(self.filters * self.filter_multiplier**i)) for i in range(self.conv_blocks)]


class ScheduleConfig(_Section):
    """LR schedule (seed topic 9); parameters not used by ``name`` are ignored."""

    name: Literal[SCHEDULES] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    gamma: float = Field(0.9, gt=0, le=1, description="exponential rate / step and multistep factor")
    step_size: int = Field(10, ge=1)
    milestones: list[int] = Field(default_factory=lambda: [30, 60])
    end_factor: float = Field(0.01, gt=0, le=1, description="linear: final LR as a fraction of the initial")
    power: float = Field(1.0, gt=0, description="polynomial decay power")
    min_lr_factor: float = Field(0.0, ge=0, lt=1, description="cosine: floor as a fraction of the initial LR")
    restart_period: int = Field(10, ge=1, description="cosine_restarts: first period T_0 in epochs")
    restart_mult: int = Field(1, ge=1, description="cosine_restarts: period multiplier T_mult")
    pct_start: float = Field(0.3, gt=0, lt=1, description="onecycle: fraction of steps spent rising")
    plateau_factor: float = Field(0.1, gt=0, lt=1)
    plateau_patience: int = Field(5, ge=0)


class EarlyStoppingConfig(_Section):
    """Keras-style early stopping (seed topic 10)."""

    enabled: bool = True
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(10, ge=0)
    min_delta: float = Field(0.0, ge=0)
    baseline: float | None = None
    start_from_epoch: int = Field(0, ge=0)
    restore_best_weights: bool = True


class TrainConfig(_Section):
    """Optimizer, loss and loop settings."""

    epochs: int = Field(60, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal[OPTIMIZERS] = "adamw"
    lr: float = Field(1e-3, gt=0, le=10)
    lr_auto: bool = Field(False, description="run the LR range test first and use its suggestion")
    weight_decay: float = Field(1e-2, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    grad_clip: float | None = Field(None, ge=0, description="clip the gradient norm to this; 0: never; unset: "
                                                             "the family's default (nntune.training.settings)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast and TF32 matmuls on GPUs that support them, fp32 on the CPU; fp32: "
                            "strict fp32 everywhere; fp16 adds loss scaling (single-model training only)")
    compile: bool = Field(False, description="torch.compile the training step (CUDA graphs on a GPU); the first "
                                             "epoch pays the compile time")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)


OBJECTIVES = {"score": "score", "accuracy": "score", "loss": "score", "r2": "score", "params": "params",
              "latency": "latency"}


def parse_objectives(names: list[str]) -> list[str]:
    """``["accuracy", "params"]`` -> ``["score", "params"]``: the task's score first, then params and/or latency."""
    out = []
    for name in names:
        key = OBJECTIVES.get(str(name).strip().lower())
        if key is None:
            raise ValueError(f"unknown objective {name!r} (the score: accuracy or loss; then params, latency)")
        if key in out:
            raise ValueError(f"{name!r} is given twice")
        out.append(key)
    if not out or out[0] != "score":
        raise ValueError("the first objective is the task's score (accuracy or loss), e.g. accuracy,params")
    return out


class SearchConfig(_Section):
    """Hyper-parameter search settings."""

    trials: int | None = Field(None, ge=1, description="finished trials to reach; with neither trials nor timeout, "
                                                    f"{DEFAULT_TRIALS}; with only a timeout, no trial cap")
    timeout: float | None = Field(None, gt=0, description="time budget in seconds for the whole tune (search, "
                                                          "finalists, final fit); with only trials, no time cap")
    sampler: Literal[SAMPLERS] = "tpe"
    pruner: Literal[PRUNERS] = "median"
    storage: str | None = Field(None, description="Optuna storage URL (default sqlite:///OUT/study.db)")
    study_name: str = "nntune"
    space: dict[str, Any] | None = Field(None, description="search space overrides (see nntune.search.space)")
    final: Literal["auto", "retrain", "best_trial", "ensemble"] = Field(
        "auto", description="the final model: the chosen config retrained on train+val, the chosen trial's weights, "
                            "or the ensemble of its finalist seeds; auto: the ensemble when it validates better "
                            "than its seeds alone on average, else the retrain")
    ensemble: int = Field(0, ge=0)
    epochs: int | None = Field(None, ge=1, description="max epochs per trial (default: from the data size, "
                                                        "see nntune.search.space.trial_epochs)")
    max_epochs: int | None = Field(None, ge=2, description="pruner halving: the top rung, the epochs a trial can "
                                                           "reach and its schedule's horizon (default: 27x the first "
                                                           "rung, about 9x the trial epochs)")
    population: int | None = Field(None, ge=1, description="members trained at once per structure (default: "
                                                           "measured per family; 1 = one trial at a time)")
    objectives: list[str] = Field(["score"], description="the score (accuracy or loss) alone, or with params and/or "
                                                         "latency: a multi-objective search with a Pareto front")
    max_params: int | None = Field(None, ge=1, description="hard limit on the model's parameter count: a larger "
                                                           "trial is pruned before training")
    max_latency_ms: float | None = Field(None, gt=0, description="hard limit on the latency per sample at batch 1 on "
                                                                 "the training device: a slower trial is pruned")
    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives(cls, value: Any) -> list[str]:
        return parse_objectives(value.split(",") if isinstance(value, str) else list(value))

    @model_validator(mode="after")
    def _halving_alone(self) -> SearchConfig:
        if self.pruner == "halving" and len(self.objectives) > 1:
            raise ValueError("pruner halving compares one score; a multi-objective search cannot use it (choose "
                             "pruner none)")
        if self.max_epochs is not None and self.pruner != "halving":
            raise ValueError("max_epochs is the top rung of pruner halving; set search.epochs for other pruners")
        return self

    warm_start: str | None = Field(None, description="an earlier tune run directory, or storage URL#study: its best "
                                                     "configurations become the first trials of a new study")
    warm_start_top: int = Field(5, ge=1, description="how many of the earlier study's best trials to enqueue")
    defaults_first: bool = Field(True, description="a fresh study starts with nntune's default config per family")
    finalists: int = Field(3, ge=0, description="top configs re-trained with extra seeds before choosing (0/1: off)")
    finalist_seeds: int = Field(3, ge=2, description="seeds per finalist, the trial's own included")
    final_seeds: int = Field(5, ge=1, description="a seed ensemble chosen as the final model grows to this many "
                                                  "seeds while the time budget leaves room (at most finalist_seeds: "
                                                  "it keeps the finalists' seeds)")
    final_pool: bool = Field(True, description="a seed ensemble chosen as the final model takes in the other "
                                               "finalists' models (those scaled alike) when together they have the "
                                               "lower validation loss")
    heartbeat: int = Field(10, ge=1, description="seconds between trial heartbeats; a trial silent for twice this "
                                                 "is failed as crashed and retried once")
    ray: str | None = Field(None, description="run the search's workers as Ray tasks: auto (the running cluster), "
                                              "local (a new Ray instance on this machine) or the cluster's address")
    workers: int | None = Field(None, ge=1, description="Ray workers (default: as many as the cluster's CPUs, or "
                                                        "GPUs with gpus_per_worker, hold)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker (fractions allowed)")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs Ray reserves for each worker: a fraction lets "
                                                          "workers share a card, 1 gives each its own")

    @model_validator(mode="after")
    def _ray_settings(self) -> SearchConfig:
        if self.ray is None and (self.workers is not None or self.cpus_per_worker != 1 or self.gpus_per_worker):
            raise ValueError("workers, cpus_per_worker and gpus_per_worker place Ray workers: set ray too (without "
                             "Ray, start `nntune worker` processes)")
        return self


class FinetuneConfig(_Section):
    """Start from a saved model (seed topic 1: which parameters train): its architecture, weights and scaler; the
    output layer is replaced when the task or the classes differ."""

    init_from: Path | None = Field(None, description="a saved model directory (a run's best/)")
    freeze: str | None = Field(None, description="freeze layers whose name matches this glob, e.g. 'block1.*'")
    freeze_all_but_last: int | None = Field(None, ge=0, description="freeze all layer groups but the last N (a "
                                                                    "weighted layer with its batch norm)")
    unfreeze_after: int | None = Field(None, ge=1, description="gradual unfreezing: every E epochs the last "
                                                               "frozen group trains again")
    lr_mult: float = Field(1.0, gt=0, le=1, description="discriminative LRs: each earlier layer group gets this "
                                                        "times the LR of the one after it")

    @model_validator(mode="after")
    def _one_freeze(self) -> FinetuneConfig:
        if self.freeze is not None and self.freeze_all_but_last is not None:
            raise ValueError("give freeze or freeze_all_but_last, not both")
        return self


def unknown_question(questions: list[str] | tuple[str, ...] | None) -> str | None:
    """What is wrong with a list of evidence question names (its first unknown one), or None."""
    unknown = [q for q in questions or () if q not in EVIDENCE_QUESTIONS]
    return f"unknown question {unknown[0]!r} (choose from {', '.join(EVIDENCE_QUESTIONS)})" if unknown else None


def check_questions(questions: list[str] | tuple[str, ...] | None) -> list[str]:
    """The questions to answer (all ten when none are given); an unknown one is a ConfigError naming it."""
    problem = unknown_question(questions)
    if problem:
        raise ConfigError(f"evidence.questions: {problem}")
    return list(questions or EVIDENCE_QUESTIONS)


class EvidenceConfig(_Section):
    """Controlled ablations around the chosen configuration (``nntune explain``, ``tune --evidence``)."""

    seeds: int = Field(3, ge=2, description="seeds per variant (the same seeds for every variant, so differences "
                                            "are paired)")
    max_seeds: int = Field(10, ge=2, description="adaptive seeds: the time left after every variant ran goes to "
                                                 "further seeds, up to this many, for the comparisons still "
                                                 "inconclusive (equal to seeds: off)")
    resplit: bool = Field(True, description="each seed trains every variant on its own redrawn train/validation "
                                            "split (the test split kept), so answers hold beyond one split")
    budget: float = Field(600.0, gt=0, description="time budget in seconds; variants run most informative first "
                                                   "and the rest are listed as skipped")
    questions: list[str] | None = Field(None, description="questions to answer (default: all ten): trainable, "
                                                         "dropout, depth, width, lr, activation, normalization, "
                                                         "augmentation, schedule, early_stopping")

    @field_validator("questions")
    @classmethod
    def _known_questions(cls, questions: list[str] | None) -> list[str] | None:
        problem = unknown_question(questions)
        if problem:
            raise ValueError(problem)
        return questions


class RunConfig(_Section):
    """A whole run: data, preprocess, model, train, search, evidence, fine-tuning and the seed."""

    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

    @model_validator(mode="after")
    def _finetune_needs_a_start(self) -> RunConfig:
        ft = self.finetune
        used = [k for k, v in (("freeze", ft.freeze), ("freeze_all_but_last", ft.freeze_all_but_last),
                               ("unfreeze_after", ft.unfreeze_after)) if v is not None]
        used += ["lr_mult"] if ft.lr_mult != 1 else []
        if used and ft.init_from is None:
            raise ValueError(f"finetune.{used[0]} needs finetune.init_from (--init-from): freezing applies to a "
                             "saved model; for a model trained from scratch everything trains")
        return self

    def to_dict(self, given: bool = False) -> dict[str, Any]:
        """Every key (what a run directory's config.yaml holds), or with ``given`` only the keys set by a config
        file, a flag, an override, a constructor or an assignment (what :meth:`is_given` reads, kept through
        overrides)."""
        return _given(self) if given else self.model_dump(mode="json")

    def is_given(self, key: str) -> bool:
        """Whether the dotted ``key`` (``train.lr``; a section: any key in it) was set rather than left at its
        default: a rule may then fill in a better default for the case at hand (fine-tuning a head) without
        overriding the user."""
        node: Any = self
        for part in key.split("."):
            node = getattr(node, part)
        if isinstance(node, BaseModel):
            return bool(_given(node))
        *path, last = key.split(".")
        parent: Any = self
        for part in path:
            parent = getattr(parent, part)
        return last in parent.model_fields_set


def _given(model: BaseModel) -> dict[str, Any]:
    """The keys of ``model`` that were set, sections walked whatever set them (a whole dict, or an assignment to
    one of their fields), as JSON values."""
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            inner = _given(value)
            if inner:
                out[name] = inner
        elif name in model.model_fields_set:
            out[name] = model.model_dump(mode="json", include={name})[name]
    return out
