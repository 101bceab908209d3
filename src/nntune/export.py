"""Ship a saved model outside nntune: ONNX or TorchScript files that take *raw* inputs (the fitted scaler is baked
in), have a dynamic batch axis and return class probabilities (or values for regression).

A table with categories or missing values exports with its encoder in the graph (imputation, missing indicators,
one-hot, frequency ranks): the file takes one float per column, NaN where a value is missing, and for a categorical
column the category's index in the ``categories`` listed in the description (``table``), -1 for one it never saw.
Strings cannot enter an ONNX float input, so that lookup is the caller's (``nntune predict`` and
:func:`load_exported` do it from the description).

The nntune description of the model (task, class names, input shape, feature names) travels inside the file: as
ONNX ``metadata_props`` under the key ``nntune``, or as the TorchScript extra file ``nntune.json``. That is what lets
:func:`load_exported` (and ``nntune predict FILE``) use an exported file alone. Every export is checked before it is
kept: the file is loaded back in its runtime (onnxruntime, ``torch.jit.load``) and must agree with the nntune model
on sample inputs (max abs difference of probabilities ≤ ``TOLERANCE``, identical labels).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nntune import artifacts, atomic
from nntune.artifacts import Artifact, Described
from nntune.errors import ArtifactError, ConfigError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
META_KEY, TS_META = "nntune", "nntune.json"
TOLERANCE = 1e-4
CHECK_SAMPLES = 64


class RawInputModel(nn.Module):
    """The trained network behind its fitted scaler: raw inputs in, probabilities (or values) out."""

    def __init__(self, art: Artifact) -> None:
        super().__init__()
        self.net = copy.deepcopy(art.model).float().cpu().eval()
        self.method = art.scaler.method
        self.classification = art.task == "classification"
        encoder = art.scaler.encoder
        self.encoder = copy.deepcopy(encoder).float().cpu() if encoder is not None else None
        if art.scaler.shift is not None:
            self.register_buffer("shift", art.scaler.shift.detach().float().cpu().clone())
            self.register_buffer("scale", art.scaler.scale.detach().float().cpu().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            x = self.encoder(x)
        if self.method == "unit":
            norms = x.flatten(1).norm(dim=1)
            norms = torch.where(norms == 0, torch.ones_like(norms), norms)
            x = x / norms.reshape([-1] + [1] * (x.dim() - 1))
        elif self.method != "none":
            x = (x - self.shift) / self.scale
        out = self.net(x)
        return torch.softmax(out, dim=1) if self.classification else out.reshape(-1)


def description(art: Artifact) -> dict[str, Any]:
    """What a runtime needs to feed the exported model and read its output."""
    meta = {"format": artifacts.SINGLE_FORMAT, "task": art.task, "class_names": art.class_names,
            "input_shape": list(art.raw_shape), "feature_names": art.data.get("feature_names", []),
            "name": art.data.get("name"), "output": "probabilities" if art.task == "classification" else "values"}
    if art.table is not None:
        meta["table"] = art.data["table"]
    return meta


def export(model_dir: str | Path, fmt: str, out: str | Path | None = None) -> dict[str, Any]:
    """Export the model in ``model_dir`` (a run's ``best/``) to ``out`` (default ``model_dir/model.onnx`` or
    ``model.pt``), check it against nntune on sample inputs, and return what was written."""
    if fmt not in FORMATS:
        raise ConfigError(f"export: unknown format {fmt!r} (choose one of {', '.join(FORMATS)})")
    art = artifacts.load(model_dir)
    out = Path(out) if out is not None else Path(model_dir) / f"model{FORMATS[fmt]}"
    wrapper = RawInputModel(art)
    meta = description(art)
    with warnings.catch_warnings():  # the samples hold an unseen category on purpose
        warnings.simplefilter("ignore")
        example = art._inputs(_sample_inputs(art, 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.staged(out) as tmp:
        (_write_onnx if fmt == "onnx" else _write_torchscript)(wrapper, example, meta, Path(tmp))
        check = _check(art, Path(tmp), fmt)
    return {"path": str(out), "format": fmt, "bytes": out.stat().st_size, "input": "input",
            "input_shape": ["batch", *meta["input_shape"]], "output": meta["output"], **check}


@contextlib.contextmanager
def _quiet():
    """The exporters warn about their own internals and print progress; neither is the user's business."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _write_onnx(wrapper: nn.Module, example: torch.Tensor, meta: dict, path: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise ConfigError("export: ONNX needs the export extra: pip install 'nntune[export]'") from None
    output = "probabilities" if meta["task"] == "classification" else "values"
    with _quiet():
        program = torch.onnx.export(wrapper, (example,), None, input_names=["input"], output_names=[output],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    proto.producer_name = "nntune"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _write_torchscript(wrapper: nn.Module, example: torch.Tensor, meta: dict, path: Path) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapper, example)
        torch.jit.save(traced, str(path), _extra_files={TS_META: json.dumps(meta)})


def _sample_inputs(art: Artifact, n: int, seed: int = 0) -> torch.Tensor | np.ndarray:
    """Plausible raw inputs: standard normal noise mapped back through the fitted scaler; for an encoded table, rows
    of its raw values (an object array): numbers from that noise, categories drawn from the vocabulary and one it
    never saw, and a fifth of the values missing where a column had missing values."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *art.data["input_shape"]), generator=gen)
    values = art.scaler.inverse_transform(z).float()
    table = art.table
    if table is None:
        return values
    rng = np.random.default_rng(seed)
    rows, at = np.empty((n, len(table.columns)), dtype=object), 0
    for j, c in enumerate(table.columns):
        rows[:, j] = (values[:, at].tolist() if c.kind == "numeric"
                      else rng.choice([*c.categories, "never seen in training"], n).tolist())
        if c.missing:
            rows[rng.random(n) < 0.2, j] = None
        at += c.width
    return rows


def _check(art: Artifact, path: Path, fmt: str) -> dict[str, Any]:
    """Load the written file in its runtime and compare it with the nntune model (batch sizes 1 and many)."""
    exported = load_exported(path, fmt)
    x = _sample_inputs(art, CHECK_SAMPLES, seed=1)
    with warnings.catch_warnings():  # the samples hold an unseen category on purpose
        warnings.simplefilter("ignore")
        return _compare(art, exported, x, fmt)


def _compare(art: Artifact, exported: ExportedModel, x: torch.Tensor | np.ndarray, fmt: str) -> dict[str, Any]:
    ours, theirs = art._scores(x), torch.cat([exported._scores(x[:1]), exported._scores(x[1:])])
    same_labels = art.task != "classification" or bool(torch.equal(ours.argmax(1), theirs.argmax(1)))
    diff = float((ours - theirs).abs().max())
    scale = 1.0 if art.task == "classification" else max(1.0, float(ours.abs().max()))
    if not (diff <= TOLERANCE * scale and same_labels):
        raise ArtifactError(f"export: the {fmt} file disagrees with the nntune model on sample inputs (max abs "
                            f"difference {diff:.3g}, labels {'same' if same_labels else 'differ'}); not written")
    return {"checked_samples": CHECK_SAMPLES, "max_abs_diff": diff}


@dataclass
class ExportedModel(Described):
    """An exported file loaded for prediction: the same ``predict``/``predict_proba`` as an :class:`Artifact`."""

    path: Path
    data: dict
    _run: Any

    @property
    def name(self) -> str:
        return str(self.path)

    def _outputs(self, x: Any) -> torch.Tensor:
        x = self._inputs(x)
        empty = self._check(x)
        return empty if empty is not None else self._run(x.contiguous())

    def _scores(self, x: Any) -> torch.Tensor:
        return self._outputs(x)


def load_exported(path: str | Path, fmt: str | None = None) -> ExportedModel:
    """Load an exported ``.onnx`` (onnxruntime) or TorchScript ``.pt`` file with its nntune description."""
    path = Path(path)
    fmt = fmt or next((f for f, suffix in FORMATS.items() if path.suffix == suffix), None)
    if fmt is None:
        raise ArtifactError(f"{path}: not an exported model (expected a .onnx or .pt file, or a model directory)")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    try:
        return _load_onnx(path) if fmt == "onnx" else _load_torchscript(path)
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: no nntune description inside ({err.__class__.__name__}: {err}); export it "
                            "with nntune export") from None


def _load_onnx(path: Path) -> ExportedModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("predict: ONNX files need onnxruntime: pip install 'nntune[export]'") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable files
        raise ArtifactError(f"{path}: not a readable ONNX model ({err.__class__.__name__})") from None
    meta = json.loads(session.get_modelmeta().custom_metadata_map[META_KEY])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(session.run(None, {name: x.numpy()})[0]))

    return ExportedModel(path, meta, run)


def _load_torchscript(path: Path) -> ExportedModel:
    extra = {TS_META: ""}
    try:
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as err:
        raise ArtifactError(f"{path}: not a readable TorchScript model ({str(err).splitlines()[0]})") from None
    meta = json.loads(extra[TS_META])

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module(x)

    return ExportedModel(path, meta, run)
