"""Predictions for a file of new inputs, written as CSV: what ``nntune predict`` does, callable from Python.

A model is a run's ``best/`` directory (:func:`nntune.artifacts.load`) or a file from ``nntune export``
(:func:`nntune.export.load_exported`); both answer ``predict``/``predict_proba`` the same way.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch

from nntune import artifacts, atomic
from nntune.artifacts import Artifact
from nntune.data.prediction_inputs import load_features
from nntune.export import ExportedModel, load_exported


def load_model(path: str | Path) -> Artifact | ExportedModel:
    """A saved model: an exported file, or else a model directory."""
    path = Path(path)
    return load_exported(path) if path.is_file() else artifacts.load(path)


def predict_csv(model: str | Path, data: str | Path, out: str | Path) -> int:
    """Predict with ``model`` (see :func:`load_model`) on ``data`` (a CSV with the training feature columns, an NPZ
    with ``x``, or images: a file, a folder or a glob pattern) and write ``out`` (see :func:`write_predictions`; a
    ``path`` column names each image). Returns how many rows."""
    data = Path(data)
    art = load_model(model)
    x, names = load_features(data, art.data)
    tabular = data.suffix.lower() in (".csv", ".npz") and data.is_file()
    write_predictions(art, x, names, out, key="row" if tabular else "path")
    return len(x)


def write_predictions(art: Artifact | ExportedModel, x: torch.Tensor, names: Sequence[str], out: str | Path,
                      key: str = "row") -> None:
    """One CSV row per input, named by its ``key`` column (the row number or the image's path): for classification the
    predicted label and a ``prob_CLASS`` column per class, else the predicted value; written atomically."""
    with atomic.replacing(out, "w", newline="") as fh:
        w = csv.writer(fh)
        if art.task == "classification":
            probs = art.predict_proba(x)  # one pass: the label is the most probable class
            classes = art.class_names
            w.writerow([key, "label", *(f"prob_{c}" for c in classes)])
            for name, row in zip(names, probs.tolist()):
                w.writerow([name, classes[max(range(len(row)), key=row.__getitem__)], *(f"{p:.6g}" for p in row)])
        else:
            w.writerow([key, "prediction"])
            for name, v in zip(names, art.predict(x).tolist()):
                w.writerow([name, f"{v:.6g}"])
