"""One training run end to end: load and split data, fit the scaler on train, build, train, test once, save.

Both ``nntune train`` and every search trial go through :func:`prepare_data` and :func:`fit_model`, so a trial and
a final fit can never disagree about preprocessing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nntune import artifacts, rundir
from nntune.config import RunConfig, apply_overrides, save_config
from nntune.data.augment import build_augmenter
from nntune.data.scalers import Scaler, resolve_method
from nntune.data.sources import Dataset, load_configured
from nntune.data.splits import Split, split_dataset
from nntune.data.tabular import TableEncoder
from nntune.errors import ConfigError, SpecError
from nntune.models.builders import build_model
from nntune.models.inspect import summary
from nntune.tracking import Tracker, flatten
from nntune.training import finetune
from nntune.training.callbacks import BestCheckpoint, Callback, ProgressBar
from nntune.training.diagnostics import diagnose
from nntune.training.early_stopping import EarlyStopping
from nntune.training.lr_finder import LRFindResult, lr_find
from nntune.training.population import PopulationTrainer
from nntune.training.population.structure import check_same_structure, structure_key, union_model_config
from nntune.training.device import resolve_device
from nntune.training.epoch import FitResult
from nntune.training.settings import training_settings
from nntune.training.resume import RunState
from nntune.training.single import Trainer


@dataclass
class PreparedData:
    """A dataset split and scaled (scaler fitted on the training split only)."""

    dataset: Dataset
    split: Split
    scaler: Scaler
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def describe(self) -> dict:
        """The dataset's description plus the split sizes (for result.json)."""
        return {**self.dataset.meta(), "n_train": len(self.split.train), "n_val": len(self.split.val),
                "n_test": len(self.split.test)}


def prepare_data(cfg: RunConfig, dataset: Dataset | None = None, split: Split | None = None) -> PreparedData:
    """Split ``dataset`` (loaded from the config if not given; ``split`` overrides the seeded split) and scale it
    with the configured method, fitted on the training split only."""
    ds = dataset if dataset is not None else load_configured(cfg.data)
    split = split or split_dataset(ds, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    if cfg.finetune.init_from is not None:  # fine-tuning sees inputs as the saved model learned them
        sc = finetune.saved_scaler(cfg)
    else:
        sc = input_scaler(cfg, ds).fit(ds.x[split.train])
    t = sc.transform
    return PreparedData(ds, split, sc, t(ds.x[split.train]), ds.y[split.train], t(ds.x[split.val]), ds.y[split.val],
                        t(ds.x[split.test]), ds.y[split.test])


def input_scaler(cfg: RunConfig, ds: Dataset) -> Scaler:
    """The unfitted stage from ``ds``'s raw inputs to the network's: the configured scaler, behind a table encoder
    when the table has categories or missing values."""
    encoder = TableEncoder(ds.table, cfg.preprocess.impute) if ds.table is not None else None
    return Scaler(resolve_method(cfg.preprocess.scaler, ds.kind), encoder)


def data_source(cfg: RunConfig, dataset: Dataset | None = None) -> str:
    """Where a run's data came from: the in-memory dataset's name, the data path, or the built-in name."""
    if dataset is not None:
        return dataset.name
    return str(cfg.data.path) if cfg.data.path is not None else str(cfg.data.dataset)


def resolve_lr(cfg: RunConfig, data: PreparedData) -> tuple[RunConfig, LRFindResult | None]:
    """With ``train.lr_auto``, run the LR range test on a fresh model and return the config using its suggestion."""
    if not cfg.train.lr_auto:
        return cfg, None
    found = range_test(cfg, data)
    return apply_overrides(cfg, {"train.lr": found.suggestion, "train.lr_auto": False}), found


def range_test(cfg: RunConfig, data: PreparedData, model: nn.Module | None = None, **options) -> LRFindResult:
    """The LR range test on ``model`` (default: the model ``cfg`` starts from) with the settings training uses
    (:func:`nntune.training.settings.training_settings`: an RNN's gradient clipping included); ``options`` go to
    :func:`nntune.training.lr_finder.lr_find`. ``nntune lr-find``, ``--lr auto`` and the evidence all run it here."""
    model = model if model is not None else initial_model(cfg, data.dataset)
    return lr_find(model, data.dataset.task, data.x_train, data.y_train, training_settings(cfg), seed=cfg.seed,
                   **options)


def train_inputs(cfg: RunConfig, data: PreparedData) -> tuple[torch.Tensor, Callable | None]:
    """Training tensors and per-batch transform: with augmentation, raw batches are augmented then scaled."""
    p = cfg.preprocess
    if p.augment == "none" or p.augment_strength == 0:
        return data.x_train, None
    raw = data.dataset.x[data.split.train]
    augmenter = build_augmenter(p.augment, p.augment_strength, data.dataset.input_shape, raw, p.custom_ops())
    if augmenter.identity:
        return data.x_train, None
    scale = data.scaler.transform
    return raw, lambda xb: scale(augmenter(xb))


def initial_model(cfg: RunConfig, ds: Dataset) -> nn.Module:
    """The model a run starts from: a fresh one from the builders, or the saved one ``finetune.init_from`` names
    (new head when the task or classes differ, layers frozen as configured)."""
    if cfg.finetune.init_from is not None:
        return finetune.start_model(cfg, ds)
    return build_model(cfg.model, ds.input_shape, ds.n_outputs, seed=cfg.seed)


def fit_model(cfg: RunConfig, data: PreparedData, callbacks: Sequence[Callback] = (), progress: bool = False,
              catch_interrupt: bool = False, val_halves: bool = False,
              resume: RunState | None = None) -> tuple[nn.Module, Trainer, FitResult]:
    """Build (or, fine-tuning, load) the configured model and train it on ``data`` (augmentation, early stopping,
    freezing schedule and per-group LRs per the config); ``val_halves`` logs validation metrics per half too;
    ``resume`` continues a saved run (:mod:`nntune.training.resume`)."""
    ds = data.dataset
    model = initial_model(cfg, ds)
    cbs = list(callbacks)
    if cfg.train.early_stopping.enabled:
        cbs.insert(0, EarlyStopping(cfg.train.early_stopping))
    ft = cfg.finetune
    if ft.unfreeze_after:
        cbs.append(finetune.GradualUnfreeze(ft.unfreeze_after))
    if progress:
        cbs.append(ProgressBar())
    x_train, augment = train_inputs(cfg, data)
    groups = finetune.param_groups(model, cfg.train.lr, ft.lr_mult) if ft.lr_mult != 1 else None
    trainer = Trainer(model, ds.task, training_settings(cfg), cbs, augment=augment, seed=cfg.seed,
                      param_groups=groups, val_halves=val_halves)
    result = trainer.fit(x_train, data.y_train, data.x_val, data.y_val, catch_interrupt=catch_interrupt,
                         resume=resume)
    return trainer.model, trainer, result


def population_inputs(cfgs: Sequence[RunConfig], data: PreparedData) -> tuple[torch.Tensor, list[Callable] | None]:
    """Training tensors and per-member batch transforms for a population: when any member augments, every member
    gets raw batches and its own transform (augmentation at its strength, then scaling); members with the same
    strength share one transform object, so the population augments them in one call."""
    by_strength: dict[float, Callable | None] = {}
    for c in cfgs:
        if c.preprocess.augment_strength not in by_strength:
            by_strength[c.preprocess.augment_strength] = train_inputs(c, data)[1]
    if all(fn is None for fn in by_strength.values()):
        return data.x_train, None
    return data.dataset.x[data.split.train], [by_strength[c.preprocess.augment_strength] or data.scaler.transform
                                              for c in cfgs]


def fit_population(cfgs: Sequence[RunConfig], data: PreparedData,
                   callbacks: Sequence[Sequence[Callback]] | None = None,
                   catch_interrupt: bool = False, val_halves: bool = False) -> list[tuple[nn.Module, FitResult]]:
    """Train same-structure configs at once as one population (one ``Trainer.fit`` when there is one config);
    returns (model, FitResult) per config, in order, each model an ordinary module from the builders."""
    cfgs = list(cfgs)
    if len(cfgs) == 1 or not stackable(cfgs[0]):  # each alone, one after the other
        fits = []
        for i, cfg in enumerate(cfgs):
            model, _, fit = fit_model(cfg, data, callbacks[i] if callbacks else (), catch_interrupt=catch_interrupt,
                                      val_halves=val_halves)
            fits.append((model, fit))
        return fits
    trainer, x_train = population_trainer(cfgs, data, callbacks, val_halves)
    fits = trainer.fit(x_train, data.y_train, data.x_val, data.y_val, catch_interrupt=catch_interrupt)
    return list(zip(trainer.members, fits))


def population_trainer(
    cfgs: Sequence[RunConfig], data: PreparedData, callbacks: Sequence[Sequence[Callback]] | None = None,
    val_halves: bool = False,
) -> tuple[PopulationTrainer, torch.Tensor]:
    """A PopulationTrainer over fresh builder models for ``cfgs``, and the training tensor it takes."""
    check_same_structure(cfgs)
    if not stackable(cfgs[0]):
        raise SpecError("population: fine-tuned models train one at a time (fit_population and fit_configs do that "
                        "for you)")
    ds = data.dataset
    members = [build_model(c.model, ds.input_shape, ds.n_outputs, seed=c.seed) for c in cfgs]
    template = build_model(union_model_config(cfgs), ds.input_shape, ds.n_outputs)
    x_train, transforms = population_inputs(cfgs, data)
    trainer = PopulationTrainer(template, members, ds.task, [training_settings(c) for c in cfgs], callbacks,
                                transforms, [c.seed for c in cfgs], val_halves=val_halves)
    return trainer, x_train


def stackable(cfg: RunConfig) -> bool:
    """Whether the population engine can stack models of ``cfg``: any fresh builder model (MLP, CNN, RNN), not a
    fine-tuned saved one."""
    return cfg.finetune.init_from is None


def choose_population_size(cfg: RunConfig, data: PreparedData, limit: int = 128, gain: float = 1.15,
                           memory_fraction: float = 0.8, seconds: float = math.inf) -> int:
    """How many members of ``cfg``'s structure to train at once on its device, by measurement (see
    :func:`measure_population_size`)."""
    return measure_population_size(cfg, data, limit, gain, memory_fraction, seconds)[0]


def measure_population_size(cfg: RunConfig, data: PreparedData, limit: int = 128, gain: float = 1.15,
                            memory_fraction: float = 0.8, seconds: float = math.inf) -> tuple[int, float]:
    """How many members of ``cfg``'s structure to train at once on its device, and their measured stacking gain:
    member-steps per second at that size over those of one member alone (1.0 for one).

    K doubles from 1 while the measured member-steps per second grow by more than ``gain`` per doubling (a CPU stops
    early: there stacking pays less, and for CNNs not at all) and, on a GPU, while the memory per member measured by
    the previous probe fits in ``memory_fraction`` of the free memory. A probe that runs out of memory ends it too,
    and so does a next probe (about twice the last one's time) that would end past ``seconds`` of probing.
    """
    if limit < 1:
        raise ConfigError(f"population size limit must be at least 1, got {limit}")
    if not stackable(cfg):
        return 1, 1.0
    device = resolve_device(cfg.train.device)
    sizes = [k for k in (2**i for i in range(limit.bit_length())) if k < limit] + [limit]
    best_k, best_rate, per_member, alone = 1, 0.0, 0.0, 0.0
    started, last = time.perf_counter(), 0.0
    for k in sizes:
        if device.type == "cuda" and per_member * k > memory_fraction * torch.cuda.mem_get_info(device)[0]:
            break
        if time.perf_counter() - started + 2 * last > seconds:
            break
        probing = time.perf_counter()
        cfgs = [apply_overrides(cfg, {"seed": cfg.seed + i}) for i in range(k)]
        trainer, x_train = population_trainer(cfgs, data)
        try:
            rate, peak = trainer.probe(x_train.to(device), data.y_train.to(device))
        except torch.OutOfMemoryError:
            break
        finally:
            del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
        per_member = max(per_member, peak / k)
        last = time.perf_counter() - probing
        alone = alone or rate
        if rate <= best_rate * gain:
            break
        best_k, best_rate = k, rate
    return best_k, (best_rate / alone if alone else 1.0)


def fit_configs(cfgs: Sequence[RunConfig], data_for: Callable[[RunConfig], PreparedData], size: int,
                callbacks: Sequence[Sequence[Callback]] | None = None,
                val_halves: bool = False) -> list[tuple[nn.Module, FitResult]]:
    """Train any list of configs: grouped by structure, in populations of at most ``size`` members; results come
    back in the order of ``cfgs``. ``data_for`` gives the prepared data a config trains on (its scaler)."""
    if size < 1:
        raise ConfigError(f"population size must be at least 1, got {size}")
    groups: dict[tuple[str, int], list[int]] = {}
    for i, c in enumerate(cfgs):  # one population shares its structure and its data (split and scaling)
        groups.setdefault((structure_key(c), id(data_for(c))), []).append(i)
    results: list = [None] * len(cfgs)
    for members in groups.values():
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            fits = fit_population([cfgs[i] for i in chunk], data_for(cfgs[chunk[0]]),
                                  [callbacks[i] for i in chunk] if callbacks else None, val_halves=val_halves)
            for i, fit in zip(chunk, fits):
                results[i] = fit
    return results


def train(cfg: RunConfig, out: str | Path | None = None, progress: bool = False,
          dataset: Dataset | None = None, log: Sequence[str] = ()) -> dict:
    """Train one model as configured, evaluate the test split once, and (with ``out``) save the run directory.
    ``log`` names loggers (``tensorboard``, ``mlflow``) that record the run; ``dataset`` (in memory) replaces the
    config's data source.

    Returns the content of ``result.json``.
    """
    return _train_run(cfg, out, progress, dataset, log)[1]


def train_artifact(cfg: RunConfig, dataset: Dataset | None = None,
                   progress: bool = False) -> tuple[artifacts.Artifact, dict]:
    """Train as :func:`train` does, without a run directory: the trained model (ready to predict on raw inputs)
    and the result."""
    return _train_run(cfg, None, progress, dataset, ())


def _train_run(cfg: RunConfig, out: str | Path | None, progress: bool, dataset: Dataset | None,
               log: Sequence[str]) -> tuple[artifacts.Artifact, dict]:
    started = time.perf_counter()
    out = Path(out) if out is not None else None
    finetune.check_out(cfg, out)
    if out is not None:
        rundir.check(out, "train")
    cfg = finetune.adopt(cfg)
    data = prepare_data(cfg, dataset)
    cfg, chosen = finetune.frozen_defaults(cfg, len(data.split.train))
    cfg, found = resolve_lr(cfg, data)
    with Tracker(log, out, name=f"train {out.name if out else ''}".strip(), config=cfg.to_dict()) as tracker:
        model, result = _train(cfg, data, found, out, progress, tracker)
        if chosen:
            result["finetune"]["frozen_defaults"] = chosen
        result["seconds"] = time.perf_counter() - started
        if out is not None:
            artifacts.write_result(out, result)
            rundir.record(out, "train", rundir.fingerprint(data.dataset, data_source(cfg, dataset)))
            tracker.artifacts([out / "best", out / "result.json"])
    return artifacts.Artifact(model, data.scaler, cfg, data.dataset.meta()), result


def _train(cfg: RunConfig, data: PreparedData, found: LRFindResult | None, out: Path | None, progress: bool,
           tracker: Tracker) -> tuple[nn.Module, dict]:
    es = cfg.train.early_stopping
    callbacks: list[Callback] = [BestCheckpoint(out / "checkpoint" / "best.safetensors", es.monitor, es.mode)] \
        if out else []
    run = tracker.run("train", flatten(cfg.to_dict()), main=True)
    if run:
        callbacks.append(run)
    model, trainer, fit = fit_model(cfg, data, callbacks, progress=progress, catch_interrupt=True)
    test = trainer.evaluate(data.x_test, data.y_test)
    if run:
        run.end("COMPLETE", {**{f"best_{k}": v for k, v in fit.best.items() if k != "epoch"},
                             **{f"test_{k}": v for k, v in test.items()}})
    findings = diagnose(fit.history, model, data.x_val, fit.initial_val_loss)
    ds = data.dataset
    result = {
        "config": cfg.to_dict(),
        "data": {**data.describe(), "scaler": data.scaler.method},
        "model": summary(model, ds.input_shape).to_dict(),
        "history": fit.history,
        "best_epoch": fit.best_epoch,
        "stopped_epoch": fit.stopped_epoch,
        "stop_reason": fit.stop_reason,
        "val": fit.best_val,
        "test": test,
        "findings": [f.to_dict() for f in findings],
        "initial_val_loss": fit.initial_val_loss,
        "lr_find": found.to_dict() if found else None,
        "finetune": finetune.describe(cfg, ds),
        "tracking": tracker.info,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        artifacts.save(out / "best", model, cfg, data.scaler, ds.meta())
    return model, result
