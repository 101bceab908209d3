"""scikit-learn estimators: :class:`NNTuneClassifier` and :class:`NNTuneRegressor` run nntune's search (or one
training run) on data held in memory and keep the final model.

They follow the scikit-learn contract (keyword-only constructor arguments stored as given, fitted attributes ending
in ``_``, ``get_params``/``set_params``/``clone``, pipelines, cross-validation), so nntune drops into code written
for skorch, SciKeras or scikit-learn's own models. ``X`` is a NumPy array of shape (N, F), (N, C, L) or (N, C, H, W),
a pandas DataFrame or a torch tensor; class labels may be any hashable values (strings too) and come back as given.
A DataFrame (or an object array) with categorical or string columns or missing values (NaN, None, ``pd.NA``) is
encoded as ``nntune train`` encodes a CSV (:mod:`nntune.data.tabular`, fitted on the training rows only), and
``predict`` takes such frames too, columns found by name. Like ``nntune train``/``tune``, ``fit`` holds out ``val_fraction`` for early stopping and the
search and ``test_fraction`` for one final score (``test_score_``) of what it fitted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from nntune import artifacts, atomic
from nntune.config import RunConfig, apply_overrides, build_config, load_config
from nntune.data.sources import Dataset
from nntune.errors import ArtifactError, InputError

ESTIMATOR_FILE = "estimator.json"


class _NNTuneEstimator(BaseEstimator):
    """What the classifier and the regressor share; ``_task`` says which they are."""

    _task = "classification"

    def __init__(self, *, trials: int | None = 10, timeout: float | None = None, family: str | None = None,
                 space: dict | None = None, epochs: int | None = None, trial_epochs: int | None = None,
                 lr: float | None = None, scaler: str = "auto", augment: str = "none", population: int | None = None,
                 finalists: int | None = None, evidence: bool = False, seed: int = 0, device: str = "auto",
                 val_fraction: float = 0.15, test_fraction: float = 0.15, config: Any = None,
                 out: str | None = None, verbose: bool = False) -> None:
        self.trials = trials
        self.timeout = timeout
        self.family = family
        self.space = space
        self.epochs = epochs
        self.trial_epochs = trial_epochs
        self.lr = lr
        self.scaler = scaler
        self.augment = augment
        self.population = population
        self.finalists = finalists
        self.evidence = evidence
        self.seed = seed
        self.device = device
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.config = config
        self.out = out
        self.verbose = verbose

    # ---- configuration ------------------------------------------------------------------------------------------
    def run_config(self) -> RunConfig:
        """The nntune run config these parameters describe (``config`` is the base: a RunConfig, a dict or a YAML
        path; the keyword arguments that are set override it)."""
        base = self.config
        if base is None:
            cfg = RunConfig()
        elif isinstance(base, RunConfig):
            cfg = base
        elif isinstance(base, dict):
            cfg = build_config(base, where="config")
        else:
            cfg = load_config(base)
        over: dict[str, Any] = {"seed": self.seed, "train.device": self.device, "preprocess.scaler": self.scaler,
                                "preprocess.augment": self.augment, "data.val_fraction": self.val_fraction,
                                "data.test_fraction": self.test_fraction, "data.task": self._task,
                                "search.trials": self.trials, "search.timeout": self.timeout}
        optional = {"model.family": self.family, "train.epochs": self.epochs, "search.epochs": self.trial_epochs,
                    "train.lr": self.lr, "search.population": self.population, "search.finalists": self.finalists}
        over.update({k: v for k, v in optional.items() if v is not None})
        space = dict(self.space or {})
        if self.family is not None:
            space.setdefault("model.family", self.family)
        if self.lr is not None:
            space.setdefault("train.lr", self.lr)
        if space:
            over["search.space"] = space
        return apply_overrides(cfg, over)

    def _searches(self) -> bool:
        """``trials=1`` without a time budget is one training run of the configuration ("just train")."""
        return not (self.trials == 1 and self.timeout is None)

    # ---- input --------------------------------------------------------------------------------------------------
    def _inputs(self, X: Any, reset: bool) -> torch.Tensor:
        if reset:
            self.table_ = None
        if (reset and _needs_table(X)) or getattr(self, "table_", None) is not None:
            return self._table_inputs(X, reset)
        with _input_errors():
            x = validate_data(self, X, reset=reset, dtype=np.float32, allow_nd=True, ensure_min_features=1)
        if x.ndim > 4:
            raise InputError(f"X has {x.ndim} dimensions; nntune takes (N, F), (N, C, L) or (N, C, H, W)")
        if not reset and tuple(x.shape[1:]) != tuple(self.input_shape_):
            raise InputError(f"X has samples of shape {tuple(x.shape[1:])}, but {type(self).__name__} was fitted "
                             f"on {tuple(self.input_shape_)}")
        return torch.tensor(x, dtype=torch.float32)

    def _table_inputs(self, X: Any, reset: bool) -> Any:
        """A table with categories or missing values: on ``fit`` its numbers (the schema in ``table_``), on
        ``predict`` the frame itself, which the fitted model encodes."""
        from nntune.data.tabular import table_features

        names_in = getattr(self, "feature_names_in_", None)
        if not reset and hasattr(X, "columns") and names_in is not None and set(map(str, names_in)) <= set(
                map(str, X.columns)):
            X = X[[c for n in names_in for c in X.columns if str(c) == str(n)]]  # columns found by name
        with _input_errors():
            validate_data(self, X, reset=reset, skip_check_array=True)
        if not reset:
            return X
        names = [str(c) for c in X.columns] if hasattr(X, "columns") else [f"x{i}" for i in range(X.shape[1])]
        columns = [X[c].tolist() for c in X.columns] if hasattr(X, "columns") else \
            [X[:, j].tolist() for j in range(X.shape[1])]
        data = self.run_config().data
        dtypes = [str(d) for d in X.dtypes] if hasattr(X, "dtypes") else []
        categorical = [*data.categorical, *(n for n, d in zip(names, dtypes) if d == "category")]  # numeric codes too
        x, self.table_ = table_features("X", names, columns, lambda i: f"row {i}", categorical, data.max_onehot)
        return x

    def _dataset(self, X: Any, y: Any) -> Dataset:
        if y is None:
            raise InputError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        x = self._inputs(X, reset=True)
        with _input_errors():
            y = column_or_1d(np.asarray(y), warn=True)
        if len(y) != len(x):
            raise InputError(f"X has {len(x)} samples but y has {len(y)}")
        names = [str(c) for c in getattr(self, "feature_names_in_", [])] or \
            ([f"x{i}" for i in range(x.shape[1])] if x.dim() == 2 else [])
        self.input_shape_ = tuple(x.shape[1:])
        return Dataset("array", x, *self._targets(y), feature_names=names, table=self.table_)

    def _targets(self, y: np.ndarray) -> tuple[torch.Tensor, str, list[str]]:
        raise NotImplementedError

    # ---- fitting ------------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> _NNTuneEstimator:
        """Search (or, with ``trials=1``, train once) on ``X, y`` and keep the final model in ``model_``."""
        from nntune.evidence.explain import explain
        from nntune.search.records import trials_table
        from nntune.search.study import tune
        from nntune.storage import load_recorded_study
        from nntune.training.pipeline import train, train_artifact

        ds = self._dataset(X, y)
        cfg = self.run_config()
        self.cv_results_, self.best_params_ = {}, {}
        if not (self._searches() or self.evidence or self.out):  # one training run, nothing to keep on disk
            self.model_, result = train_artifact(cfg, ds, progress=self.verbose)
            self.model_.model.eval()
        else:
            out = _fresh_dir(Path(self.out)) if self.out else Path(tempfile.mkdtemp(prefix="nntune-"))
            try:
                if self._searches():
                    result = tune(cfg, out, resume=False, progress=self.verbose, dataset=ds)
                    self.cv_results_ = _columns(trials_table(load_recorded_study(result["study"])))
                    self.best_params_ = result["best_params"]
                else:
                    result = train(cfg, out, progress=self.verbose, dataset=ds)
                if self.evidence:
                    result["evidence"] = explain(out, progress=self.verbose, dataset=ds)
                self.model_ = artifacts.load(out / "best")
            finally:
                if not self.out:
                    shutil.rmtree(out, ignore_errors=True)
        self.result_ = result
        self.run_dir_ = str(out) if self.out else None
        self.evidence_ = result.get("evidence")
        self.test_score_ = result["test"]
        return self

    # ---- prediction ---------------------------------------------------------------------------------------------
    def _outputs(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "model_")
        return self.model_.predict_raw(self._inputs(X, reset=False))

    def save(self, directory: str | Path) -> Path:
        """Write the fitted model (``nntune.load`` reads it back as a fitted estimator) and return the directory."""
        check_is_fitted(self, "model_")
        directory = Path(directory)
        m = self.model_
        artifacts.save(directory, m.model, m.config, m.scaler, m.data)
        state = {"estimator": type(self).__name__, "params": _jsonable(self.get_params()),
                 "classes": _jsonable(getattr(self, "classes_", None)), "input_shape": list(self.input_shape_),
                 "feature_names": _jsonable(getattr(self, "feature_names_in_", None)),
                 "table": getattr(self, "table_", None) is not None,
                 "best_params": self.best_params_, "test_score": self.test_score_}
        atomic.write_text(directory / ESTIMATOR_FILE, json.dumps(state, indent=2))
        return directory

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags


class NNTuneClassifier(ClassifierMixin, _NNTuneEstimator):
    """A neural-network classifier whose architecture and training settings nntune searches on ``fit``.

    Fitted attributes: ``classes_``, ``model_`` (an :class:`nntune.artifacts.Artifact`), ``best_params_``,
    ``cv_results_`` (one entry per trial, as columns), ``test_score_``, ``evidence_`` (with ``evidence=True``),
    ``result_`` (what ``result.json`` holds), ``n_features_in_``, ``input_shape_``.
    """

    _task = "classification"

    def _targets(self, y: np.ndarray) -> tuple[torch.Tensor, str, list[str]]:
        with _input_errors():
            check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        counts = np.bincount(codes, minlength=len(self.classes_))
        if len(self.classes_) < 2:
            raise InputError(f"{type(self).__name__} needs samples of at least 2 classes; got 1 class "
                             f"({_jsonable(self.classes_[0])!r})")
        if counts.min() < 3:
            rare = _jsonable(self.classes_[int(counts.argmin())])
            raise InputError(f"class {rare!r} has {counts.min()} sample(s); each class needs at least 3 (one each for "
                             "training, validation and the held-out test)")
        return torch.tensor(codes, dtype=torch.int64), "classification", [str(c) for c in self.classes_]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        return torch.softmax(self._outputs(X), dim=1).numpy().astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """Labels as given to ``fit``."""
        codes = self._outputs(X).argmax(1).numpy()
        return self.classes_[codes]


class NNTuneRegressor(RegressorMixin, _NNTuneEstimator):
    """A neural-network regressor whose architecture and training settings nntune searches on ``fit``.

    Fitted attributes as :class:`NNTuneClassifier`, without ``classes_``.
    """

    _task = "regression"

    def _targets(self, y: np.ndarray) -> tuple[torch.Tensor, str, list[str]]:
        try:
            values = y.astype(np.float32)
        except (TypeError, ValueError):
            raise InputError("y must be numeric for a regressor") from None
        if not np.isfinite(values).all():
            raise InputError("Input y contains NaN or infinity")
        if len(values) < 10:
            raise InputError(f"n_samples = {len(values)}: a regressor needs at least 10 samples to hold out "
                             "validation and test data")
        return torch.tensor(values), "regression", []

    def predict(self, X: Any) -> np.ndarray:
        return self._outputs(X).numpy().astype(np.float64)


def load_estimator(directory: str | Path) -> _NNTuneEstimator:
    """A fitted estimator from a directory written by ``save`` (``nntune.load`` calls this when it finds one)."""
    directory = Path(directory)
    path = directory / ESTIMATOR_FILE
    try:
        state = json.loads(path.read_text())
        cls = {"NNTuneClassifier": NNTuneClassifier, "NNTuneRegressor": NNTuneRegressor}[state["estimator"]]
        est = cls(**state["params"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ArtifactError(f"{path}: corrupt estimator description ({err.__class__.__name__}: {err})") from None
    est.model_ = artifacts.load(directory)
    est.input_shape_ = tuple(state["input_shape"])
    est.table_ = est.model_.table if state.get("table") else None
    est.n_features_in_ = est.input_shape_[0]
    if state.get("feature_names") is not None:
        est.feature_names_in_ = np.asarray(state["feature_names"], dtype=object)
    if state.get("classes") is not None:
        est.classes_ = np.asarray(state["classes"])
    est.best_params_, est.test_score_ = state.get("best_params", {}), state.get("test_score")
    est.cv_results_, est.result_, est.evidence_ = {}, None, None
    return est


def _needs_table(X: Any) -> bool:
    """A DataFrame with a column that is not numeric or has a missing value, or a NumPy object array holding text
    or missing values: what the table encoder takes."""
    if hasattr(X, "columns") and hasattr(X, "dtypes"):
        numeric = all(getattr(d, "kind", "O") in "biuf" for d in X.dtypes)
        return not numeric or bool(X.isna().to_numpy().any())
    if isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 2:
        return any(isinstance(v, str) or v is None or (isinstance(v, float) and np.isnan(v)) for v in X.ravel())
    return False


@contextlib.contextmanager
def _input_errors() -> Iterator[None]:
    """scikit-learn's validation messages (shape, NaN/inf, label type), raised as nntune's InputError (a
    ValueError), so callers can catch either."""
    try:
        yield
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from None


def _fresh_dir(root: Path) -> Path:
    """``root/fit-N``, N one more than any there: every ``fit`` (a refit, each cross-validation fold) keeps its own
    run directory and study."""
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[4:]) for p in root.glob("fit-*") if p.name[4:].isdigit()]
    path = root / f"fit-{max(taken, default=0) + 1}"
    path.mkdir()
    return path


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, RunConfig):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    return value


def for_target(y: Any, task: str = "auto") -> type[_NNTuneEstimator]:
    """The estimator class for ``y``: a regressor for floating-point targets with non-integer values, else a
    classifier (``task`` forces one)."""
    if task != "auto":
        return NNTuneClassifier if task == "classification" else NNTuneRegressor
    y = np.asarray(y)
    numeric = np.issubdtype(y.dtype, np.floating)
    return NNTuneRegressor if numeric and not np.all(np.mod(y[np.isfinite(y)], 1) == 0) else NNTuneClassifier


def fit_arrays(X: Any, y: Any, search: bool, task: str = "auto", **options: Any) -> _NNTuneEstimator:
    """``nntune.train(X, y, ...)`` / ``nntune.tune(X, y, ...)``: a fitted estimator for in-memory data."""
    cls = for_target(y, task)
    if not search:
        options = {"trials": 1, "timeout": None, **options}
        if options["trials"] != 1 or options["timeout"] is not None:
            raise InputError("nntune.train(X, y) trains one model; use nntune.tune(X, y, trials=..., timeout=...)")
    return cls(**options).fit(X, y)
