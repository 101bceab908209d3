"""What a prediction reads: a CSV with the training feature columns (in any order), an NPZ with ``x``, or image files
(one file, a folder flat or by class, a glob pattern), checked against the saved model's data description."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch

from nntune.data.images import IMAGE_VALUES, read_images
from nntune.data.sources import IMAGE_SUFFIXES, cast_float32, npz_inputs, read_csv, read_npz, visible
from nntune.data.tabular import MISSING
from nntune.errors import DataError


def image_files(path: str | Path) -> list[Path]:
    """The image files a prediction reads: one image file, every image in a folder (flat, or one sub-folder per class
    as for training; hidden entries skipped), or the images a glob pattern (``new/*.png``) matches; sorted."""
    path = Path(path)
    if glob.has_magic(str(path)):
        files = sorted(Path(f) for f in glob.glob(str(path), recursive=True))
    elif path.is_dir():
        files = [f for entry in visible(path) for f in ([entry] if entry.is_file() else
                                                          visible(entry) if entry.is_dir() else [])]
    else:
        files = [path]
    images = [f for f in files if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def load_features(path: str | Path, data: dict) -> tuple[torch.Tensor | np.ndarray, list[str]]:
    """Inputs for prediction and a name per row (the path of an image, else the row number): a CSV with the
    training feature columns in any order (others, like a target, are ignored), an NPZ with ``x``, or images (a file,
    a folder, flat or by class, or a glob pattern; resized to the model's input). ``data`` is the saved model's data
    description; the per-sample shape must match its input shape. For a model with an encoded table the CSV's raw
    cells come back (an object array, columns in training order) for the model to encode."""
    path = Path(path)
    input_shape = tuple(data["input_shape"])
    pattern = glob.has_magic(str(path))
    if not pattern and not path.exists():
        raise DataError(f"{path}: no such file or folder")
    names: list[str] = []
    if pattern or path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        files = image_files(path)
        x, names = read_images(path, files, like=input_shape), [str(f) for f in files]
        if data.get("kind") == "image" and data.get("image_values") != IMAGE_VALUES:
            x = x * 255.0  # a model saved before image files were read into [0, 1] learned 0..255 pixel values
    elif path.suffix.lower() == ".npz":
        if data.get("table"):
            raise DataError(f"{path}: this model encodes a table's categories and missing values; pass a CSV with "
                            f"its columns ({', '.join(data.get('feature_names', []))})")
        (x,) = read_npz(path, ("x",))
        x = npz_inputs(path, x)
    elif path.suffix.lower() == ".csv":
        x = _csv_columns(path, data.get("feature_names", []), table=bool(data.get("table")))
        if data.get("table"):
            return x, [str(i) for i in range(len(x))]
    else:
        raise DataError(f"{path}: unsupported data file (expected .csv, .npz, an image file, an image folder or a "
                        "glob pattern of images)")
    if tuple(x.shape[1:]) != input_shape:
        raise DataError(f"{path}: samples have shape {tuple(x.shape[1:])}, the model expects {input_shape}")
    return x, names or [str(i) for i in range(len(x))]


def _csv_columns(path: Path, names: list[str], table: bool = False) -> torch.Tensor | np.ndarray:
    """The ``names`` columns of a CSV file: numbers (float32), or with ``table`` its raw cells (an object array)."""
    header, body = read_csv(path)
    if not names:
        raise DataError(f"{path}: this model was not trained on a table; pass an NPZ file or an image folder")
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(f"{path}: feature column {missing[0]!r} is missing (the model needs: {', '.join(names)})")
    cols = [header.index(n) for n in names]
    if not table:
        return _numeric_columns(path, header, body, cols)
    cells = np.empty((len(body), len(cols)), dtype=object)
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{path}: line {i + 2} has {len(row)} fields, the header has {len(header)}")
        cells[i] = [row[j] for j in cols]
    return cells


def _numeric_columns(path: Path, header: list[str], rows: list[list[str]], cols: list[int]) -> torch.Tensor:
    """The columns ``cols`` of ``rows`` as float32; a non-numeric, NaN, infinite or out-of-float32-range cell is a
    DataError naming the column and the line."""
    x = np.empty((len(rows), len(cols)), dtype=np.float64)
    for i, row in enumerate(rows):
        for k, j in enumerate(cols):
            try:
                x[i, k] = float(row[j])
            except (ValueError, IndexError):
                value = row[j] if j < len(row) else ""
                if value.strip() in MISSING:
                    raise DataError(f"{path}: column {header[j]!r} has a missing value (line {i + 2}: {value!r}); "
                                    "this model was trained on data without any, so it cannot fill one in") from None
                raise DataError(f"{path}: column {header[j]!r} is not numeric (line {i + 2}: {value!r})") from None
    cast, first = cast_float32(x)
    if first is not None:
        i, k = first
        why = "NaN or infinite values" if not np.isfinite(x[i, k]) else "values outside float32's range"
        raise DataError(f"{path}: column {header[cols[k]]!r} has {why} (line {i + 2}: {rows[i][cols[k]]!r}); "
                        "fill, drop or rescale them")
    return torch.from_numpy(cast)
