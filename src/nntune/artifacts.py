"""Save and load a trained model: safetensors weights + scaler state + a JSON config (never pickle).

A ``best/`` directory holds ``weights.safetensors``, ``scaler.safetensors`` and ``model.json`` (the run config, the
data description and the scaler method), which is everything :func:`load` needs to rebuild the model and predict
on raw inputs. An ensemble of one architecture's seeds (:class:`~nntune.models.ensemble.Ensemble`) is saved the same
way, its size in ``model.json`` (format 2, so an older nntune asks to be upgraded instead of misreading it); an
ensemble of several configurations' models (the finalists', scaled alike) also lists each member's model config
(``members``, format 3). A run directory's ``result.json`` is read and written here too (written atomically: a reader never
sees half a file).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from nntune import atomic
from nntune.config import ModelConfig, RunConfig, build_config
from nntune.data.scalers import Scaler
from nntune.data.tabular import TableEncoder, TableSchema
from nntune.errors import ArtifactError, ConfigError, NNTuneError
from nntune.models.builders import build_model, forward_batched
from nntune.models.ensemble import Ensemble, build_ensemble
from nntune.redact import redact

WEIGHTS, SCALER, META = "weights.safetensors", "scaler.safetensors", "model.json"
FORMAT = 3  # the newest model.json format this nntune reads (2: an ensemble, 3: of several architectures); a newer
# one is refused
SEED_FORMAT = 2  # what an ensemble of one architecture is still written as
SINGLE_FORMAT = 1  # what a single model is still written as, so older nntune versions keep reading it
MAX_ENSEMBLE = 64  # members a model.json may claim
MAX_INPUT_VALUES = 2**28  # per sample; a model.json claiming more is refused before anything is built


class Described:
    """What a saved model and an exported file share: the data description (``data``: task, class names, input
    shape) and the check of inputs against it."""

    data: dict
    name = "this model"

    @property
    def task(self) -> str:
        return self.data["task"]

    @property
    def class_names(self) -> list[str]:
        return self.data.get("class_names", [])

    @cached_property
    def table(self) -> TableSchema | None:
        """The table's columns when the model encodes categories or missing values, else None."""
        return TableSchema.from_dict(self.data["table"]) if self.data.get("table") else None

    @property
    def raw_shape(self) -> tuple[int, ...]:
        """The per-sample shape of the inputs it takes: a table's columns, else the network's input shape."""
        table = self.table
        return (len(table.columns),) if table is not None else tuple(self.data["input_shape"])

    def _inputs(self, x: Any) -> torch.Tensor:
        """Inputs as a float32 tensor: a tensor, a NumPy array, a pandas DataFrame or Series, or nested lists; for a
        table with categories or missing values, its columns' numbers (see :meth:`_table_inputs`)."""
        table = self.table
        if table is not None:
            return self._table_inputs(x, table)
        if isinstance(x, torch.Tensor):
            return x.float()
        if hasattr(x, "to_numpy"):  # pandas, without importing it
            x = x.to_numpy()
        try:
            return torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: a DataFrame's view may be read-only
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"inputs: {self.name} takes numbers (a tensor, a NumPy array or a DataFrame), got "
                                f"{type(x).__name__} ({err})") from None

    def _table_inputs(self, x: Any, table: TableSchema) -> torch.Tensor:
        """Raw table values (a DataFrame, its columns found by name, or a 2-D array of the columns in training order;
        strings, numbers, None/NaN/pd.NA for missing) as the numbers the encoder takes. Categories the model never
        saw are encoded as unseen (one-hot: all zeros), with a warning naming the columns."""
        names = table.names
        if hasattr(x, "columns"):  # a DataFrame, without importing pandas
            by_name = {str(c): c for c in x.columns}
            absent = [n for n in names if n not in by_name]
            if absent:
                raise ArtifactError(f"inputs: column {absent[0]!r} is missing ({self.name} needs: {', '.join(names)})")
            columns = [x[by_name[n]].tolist() for n in names]
        else:
            a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=object)
            if a.ndim != 2 or a.shape[1] != len(names):
                raise ArtifactError(f"inputs have shape {tuple(a.shape[1:])} per sample; {self.name} takes rows of "
                                    f"its {len(names)} columns ({', '.join(names)})")
            columns = [a[:, j].tolist() for j in range(len(names))]
        values, unseen = table.codes(columns, "inputs", lambda i: f"row {i}")
        if unseen:
            warnings.warn(f"inputs: column(s) {', '.join(unseen)} have categories {self.name} never saw in training; "
                          "they are encoded as unseen (one-hot: all zeros)", stacklevel=4)
        return torch.from_numpy(values.astype(np.float32))

    def _scores(self, x: Any) -> torch.Tensor:
        """Probabilities (classification) or values (regression) as a tensor."""
        raise NotImplementedError

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities (N, K), columns in the order of ``class_names`` (the estimator contract)."""
        if self.task != "classification":
            raise ArtifactError(f"predict_proba: {self.name} does regression")
        return self._scores(x).numpy()

    def predict(self, x: Any) -> np.ndarray:
        """Class names (classification; ``class_names[i]`` for the most probable class ``i``) or values
        (regression), as a NumPy array."""
        out = self._scores(x)
        if self.task == "classification":
            return np.asarray(self.class_names)[out.argmax(1).numpy()]
        return out.numpy()

    def _check(self, x: torch.Tensor) -> torch.Tensor | None:
        """Raise on inputs of another per-sample shape; the (empty) outputs for no inputs, else None."""
        expected = self.raw_shape
        if tuple(x.shape[1:]) != expected:
            raise ArtifactError(f"inputs have shape {tuple(x.shape[1:])} per sample; {self.name} expects {expected}")
        if len(x) == 0:
            return torch.empty((0, len(self.class_names)) if self.task == "classification" else (0,))
        return None


@dataclass
class Artifact(Described):
    """A trained model ready to predict on raw (unscaled) inputs."""

    model: nn.Module
    scaler: Scaler
    config: RunConfig
    data: dict

    def predict_raw(self, x: Any) -> torch.Tensor:
        """Logits (classification) or values (regression) for raw inputs (a tensor, array or DataFrame)."""
        x = self._inputs(x)
        empty = self._check(x)
        return empty if empty is not None else self.outputs(x)

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Logits or values for inputs already in a dataset's numbers (``Dataset.x``: a table's category codes, not
        its names), as the search scores its test split."""
        out = forward_batched(self.model, self.scaler.transform(x))
        return out if self.task == "classification" else out.reshape(-1)

    def _scores(self, x: Any) -> torch.Tensor:
        out = self.predict_raw(x)
        return torch.softmax(out, dim=1) if self.task == "classification" else out


def save(directory: str | Path, model: nn.Module, config: RunConfig, scaler: Scaler, data: dict) -> Path:
    """Write the artifact files into ``directory`` and return it. The three files are written into a staging
    directory that then replaces ``directory`` as a whole, so a crash at any moment leaves a loadable model: the new
    one or the previous one (see :func:`nntune.atomic.replacing_dir`)."""
    directory = Path(directory)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": SINGLE_FORMAT, "config": redact(config.to_dict()), "data": data, "scaler": scaler.method}
    if isinstance(model, Ensemble):
        meta.update(format=SEED_FORMAT, ensemble=len(model.members))
        if model.specs is not None:
            meta.update(format=FORMAT, members=[spec.model_dump(mode="json") for spec in model.specs])
    with atomic.replacing_dir(directory) as staging:
        for name, tensors in ((WEIGHTS, weights), (SCALER, scaler.state_dict())):
            with atomic.staged(staging / name) as tmp:
                try:
                    save_file(tensors, str(tmp))
                except SafetensorError as err:  # a full disk or an I/O error inside safetensors' own writer
                    raise ArtifactError(f"{directory / name}: cannot write ({err})") from None
        atomic.write_text(staging / META, json.dumps(meta, indent=2))
    return directory


def load(directory: str | Path) -> Artifact:
    """Rebuild a saved model; a missing or corrupt file is an :class:`ArtifactError` naming it."""
    directory = atomic.existing_dir(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: not a model directory (expected {META}, {WEIGHTS}, {SCALER})")
    meta_path = directory / META
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise TypeError(f"expected a JSON object, got {type(meta).__name__}")
        if meta.get("format", FORMAT) > FORMAT:
            raise ArtifactError(f"{meta_path}: written by a newer nntune (format {meta['format']}, this one reads "
                                f"{FORMAT}); upgrade nntune to load it")
        config = build_config(meta["config"], where=str(meta_path))
        data, method = meta["data"], meta["scaler"]
        n_outputs = len(data["class_names"]) if data["task"] == "classification" else 1
        input_shape = [int(s) for s in data["input_shape"]]
        if not input_shape or any(s < 1 for s in input_shape) or math.prod(input_shape) > MAX_INPUT_VALUES:
            raise ValueError(f"input_shape {input_shape} is not a positive per-sample shape of at most "
                             f"{MAX_INPUT_VALUES:,} values")
        encoder = _encoder(data, config, input_shape)
        size = meta.get("ensemble")
        if size is not None and (not isinstance(size, int) or not 2 <= size <= MAX_ENSEMBLE):
            raise ValueError(f"ensemble {size!r} is not a member count from 2 to {MAX_ENSEMBLE}")
        specs = _member_specs(meta, size, meta_path)
    except FileNotFoundError:
        raise ArtifactError(f"{meta_path}: missing; is {directory} a saved model directory?") from None
    except ConfigError as err:  # an invalid config inside model.json: the file is what is wrong
        raise ArtifactError(str(err)) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{meta_path}: corrupt model description ({err.__class__.__name__}: {err})") from None
    classification = data["task"] == "classification"
    _check_shapes(meta_path, directory / WEIGHTS,
                  _planned_shapes(meta_path, config, input_shape, n_outputs, size, classification, specs))
    model = _build(config, input_shape, n_outputs, size, classification, specs)
    model.load_state_dict(_read_tensors(directory / WEIGHTS))  # its shapes were checked against the header
    scaler = Scaler(method, encoder).load_state_dict(_read_tensors(directory / SCALER))
    return Artifact(model, scaler, config, data)


def _encoder(data: dict, config: RunConfig, input_shape: list[int]) -> TableEncoder | None:
    """The (unfitted) table encoder ``data`` describes, if any; its width must be the network's input width."""
    if not data.get("table"):
        return None
    schema = TableSchema.from_dict(data["table"])
    if [schema.width] != input_shape:
        raise ValueError(f"the table's columns encode to {schema.width} inputs, input_shape says {input_shape}")
    return TableEncoder(schema, config.preprocess.impute)


def _member_specs(meta: dict, size: int | None, meta_path: Path) -> list[ModelConfig] | None:
    """Each member's model config of an ensemble of several architectures (None for one architecture)."""
    members = meta.get("members")
    if members is None:
        return None
    if size is None or not isinstance(members, list) or len(members) != size:
        raise ValueError(f"members must list one model config per ensemble member ({size}), got {members!r:.80}")
    return [build_config({**meta["config"], "model": m}, where=f"{meta_path} members[{i}]").model
            for i, m in enumerate(members)]


def _build(config: RunConfig, input_shape: list[int], n_outputs: int, size: int | None,
           classification: bool, specs: list[ModelConfig] | None = None) -> nn.Module:
    """The described model (an ensemble of ``size`` members when ``size``, of ``specs``' architectures when given),
    freshly initialised."""
    if size is None:
        return build_model(config.model, input_shape, n_outputs, seed=config.seed)
    return build_ensemble(config.model, input_shape, n_outputs, size, classification, seed=config.seed, specs=specs)


def _planned_shapes(meta_path: Path, config: RunConfig, input_shape: list[int], n_outputs: int,
                    size: int | None, classification: bool,
                    specs: list[ModelConfig] | None = None) -> dict[str, tuple[int, ...]]:
    """The tensor shapes the described model would have, built on the meta device (nothing is allocated, so a
    model.json describing a huge or impossible model costs nothing)."""
    try:
        with torch.device("meta"):
            planned = _build(config, input_shape, n_outputs, size, classification, specs)
    except NNTuneError as err:
        raise ArtifactError(f"{meta_path}: the described model cannot be built ({err})") from None
    except (RuntimeError, ValueError, TypeError) as err:
        raise ArtifactError(f"{meta_path}: the described model cannot be built ({err.__class__.__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return {k: tuple(v.shape) for k, v in planned.state_dict().items()}


def _check_shapes(meta_path: Path, weights: Path, planned: dict[str, tuple[int, ...]]) -> None:
    """Compare the described model with the weights file's header (no tensor data is read) before anything is
    allocated."""
    try:
        with safe_open(str(weights), framework="pt") as fh:
            found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except FileNotFoundError:
        raise ArtifactError(f"{weights}: missing") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{weights}: corrupt safetensors file ({err})") from None
    problems = ([f"missing {k!r}" for k in sorted(set(planned) - set(found))]
                + [f"unexpected {k!r}" for k in sorted(set(found) - set(planned))]
                + [f"shape of {k!r}: {found[k]} in the file, {planned[k]} described"
                   for k in sorted(set(planned) & set(found)) if planned[k] != found[k]])
    if problems:
        raise ArtifactError(f"{weights}: weights do not fit the saved config ({problems[0]})")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path}: corrupt safetensors file ({err})") from None


def read_result(run_dir: str | Path) -> dict:
    """``RUN_DIR/result.json`` of a ``train`` or ``tune`` run; a missing or corrupt file is a one-line error."""
    path = Path(run_dir) / "result.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; is {run_dir} a run directory of nntune train or tune?") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: corrupt ({err})") from None


def write_result(run_dir: str | Path, result: dict) -> Path:
    """Write ``RUN_DIR/result.json`` through a temporary file in the same directory, fsync'd and renamed over it."""
    return atomic.write_text(Path(run_dir) / "result.json", json.dumps(redact(result), indent=2))
