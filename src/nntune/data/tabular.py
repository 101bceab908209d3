"""Tables as they come: missing values and categorical (string) columns, fitted on the training rows only.

A table is read into numbers once (:func:`read_table`): a numeric column as floats with NaN where a value is missing,
a categorical column as each value's index in the column's vocabulary (-1 for a value the vocabulary lacks, NaN when
missing), and a :class:`TableSchema` says which column is which. :class:`TableEncoder` turns those numbers into the
network's inputs: missing numbers imputed (median or mean of the training rows, searched) with a missing-indicator
column each, categories one-hot (up to ``data.max_onehot`` categories; a category the training rows never had is all
zeros) or, for a column with more categories than the rows support (fewer than 5 rows per category on average,
measured: ``bench/tables.py``), their frequency rank in the training rows. Its statistics are fitted by scikit-learn's
``SimpleImputer``, ``MissingIndicator`` and ``OneHotEncoder``; the transform is written here as torch ops (isnan,
where, eq, gather) so it runs on tensors, travels in safetensors (no pickle) and exports to ONNX with the network.
The layout (one slot per vocabulary entry, one indicator per column with a missing value anywhere) is fixed when the
table is read, so a model's input width never depends on the split; slots the training rows leave empty stay zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from nntune.errors import ArtifactError, DataError

# pandas' default missing-value markers for CSV files, plus '?' (the UCI repository's)
MISSING = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                     "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "?"})
ROWS_PER_CATEGORY = 5  # one-hot while a column has at least this many rows per category on average (measured)
ONEHOT_CAP = 1000  # and at most this many categories (a memory guard for the first layer, not a measured optimum)
_DATE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"
                   r"|^\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}( \d{1,2}:\d{2}(:\d{2})?)?$")
Kind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Column:
    """One feature column: numeric, or categorical with its vocabulary (sorted); ``missing`` when a value was missing
    anywhere in the data read (it then has an indicator slot); ``onehot`` for a categorical column's encoding."""

    name: str
    kind: Kind
    categories: tuple[str, ...] = ()
    missing: bool = False
    onehot: bool = True

    @property
    def width(self) -> int:
        """Input slots this column takes: its value (or one per category) plus its missing indicator."""
        main = len(self.categories) if self.kind == "categorical" and self.onehot else 1
        return main + int(self.missing)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "missing": self.missing}
        if self.kind == "categorical":
            out.update(categories=list(self.categories), encoding="onehot" if self.onehot else "frequency")
        return out


@dataclass(frozen=True)
class TableSchema:
    """The feature columns of a table that needs encoding (a category or a missing value somewhere)."""

    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableSchema:
        return cls(tuple(Column(c["name"], c["kind"], tuple(c.get("categories", ())), bool(c.get("missing")),
                                c.get("encoding", "onehot") == "onehot") for c in d["columns"]))

    def codes(self, columns: Sequence[Sequence[Any]], where: str, row: Callable[[int], str]) -> tuple[np.ndarray,
                                                                                                       list[str]]:
        """New rows in this schema's numbers (the columns in schema order) and the names of the categorical columns
        that had values the vocabulary lacks (encoded as unseen); a non-number in a numeric column is an error."""
        out = np.empty((len(columns[0]) if columns else 0, len(self.columns)))
        unseen = []
        for j, (col, cells) in enumerate(zip(self.columns, columns)):
            if col.kind == "numeric":
                out[:, j] = _numbers(col.name, cells, where, row)
            else:
                index = {c: i for i, c in enumerate(col.categories)}
                values = [None if _missing(v) else _text(v) for v in cells]
                out[:, j] = [np.nan if v is None else index.get(v, -1) for v in values]
                if any(v is not None and v not in index for v in values):
                    unseen.append(col.name)
        return out, unseen


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, str):
        return v.strip() in MISSING
    if type(v).__name__ in ("NAType", "NaTType"):  # pandas' missing markers, without importing pandas
        return True
    try:
        return bool(v != v)  # NaN
    except (TypeError, ValueError):
        return False


def _text(v: Any) -> str:
    """A category's name: strings stripped, integer-valued floats without '.0' (1.0 and '1' are one category)."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    return str(v).strip()


def _numbers(name: str, cells: Sequence[Any], where: str, row: Callable[[int], str]) -> np.ndarray:
    """A numeric column's cells as float64, NaN where missing; a value that is not a number is an error naming it."""
    out = np.empty(len(cells))
    for i, v in enumerate(cells):
        if _missing(v):
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise DataError(f"{where}: column {name!r} is not numeric ({row(i)}: {v!r})") from None
    return out


def read_table(names: Sequence[str], columns: Sequence[Sequence[Any]], where: str, row: Callable[[int], str],
               categorical: Sequence[str] = (), max_onehot: int | None = None) -> tuple[np.ndarray, TableSchema]:
    """Feature columns (cells: strings from a CSV, or a DataFrame's values) as numbers (N, F) and their schema.
    A column is numeric when every present value is a number (unless ``categorical`` names it), else categorical;
    a mostly numeric column with a few words, dates, free text, identifiers and empty columns are errors that name
    the column and the fix. ``row(i)`` names row ``i`` in messages (``line 7``). A categorical column is one-hot up
    to ``max_onehot`` categories (default :func:`onehot_limit` of the row count), else its frequency rank."""
    force = set(categorical)
    unknown = force - set(names)
    if unknown:
        raise DataError(f"{where}: data.categorical names no column {min(unknown)!r} (columns: "
                        f"{', '.join(names)})")
    out = np.empty((len(columns[0]) if columns else 0, len(names)))
    limit = max_onehot if max_onehot is not None else onehot_limit(len(out))
    schema = []
    for j, (name, cells) in enumerate(zip(names, columns)):
        present = [i for i, v in enumerate(cells) if not _missing(v)]
        if not present:
            raise DataError(f"{where}: column {name!r} has no values; drop it (data.drop: [{name}])")
        numbers = _parsed(cells, present)
        missing = len(present) < len(cells)
        if name not in force and len(numbers) == len(present):
            out[:, j] = np.nan
            out[list(numbers), j] = list(numbers.values())
            schema.append(Column(name, "numeric", missing=missing))
            continue
        if name not in force and len(numbers) >= 0.9 * len(present):
            bad = next(i for i in present if i not in numbers)
            raise DataError(f"{where}: column {name!r} is numeric but for {row(bad)}: {cells[bad]!r}; fix the value, "
                            f"mark it missing, or read the column as categories (data.categorical: [{name}])")
        values = [_text(cells[i]) for i in present]
        vocab = sorted(set(values), key=lambda v: (_as_number(v), v) if name in force else (0.0, v))
        _refuse_non_categories(where, name, values, vocab)
        index = {c: i for i, c in enumerate(vocab)}
        out[:, j] = np.nan
        out[present, j] = [index[v] for v in values]
        schema.append(Column(name, "categorical", tuple(vocab), missing, len(vocab) <= limit))
    return out, TableSchema(tuple(schema))


def onehot_limit(rows: int) -> int:
    """The most categories a column of a ``rows``-row table is one-hot encoded with: one per ``ROWS_PER_CATEGORY``
    rows (on a generated table of 3,000 rows one-hot beat the frequency rank by 8 and 7 points at 60 and 300
    categories and lost by 5.5 at 1,000), at least 2, at most ``ONEHOT_CAP``."""
    return max(2, min(ONEHOT_CAP, rows // ROWS_PER_CATEGORY))


def table_features(where: str, names: Sequence[str], columns: Sequence[Sequence[Any]], row: Callable[[int], str],
                   categorical: Sequence[str] = (), max_onehot: int | None = None
                   ) -> tuple[torch.Tensor, TableSchema | None]:
    """A table's feature columns as float32 (N, F) and, when a column is categorical or has a missing value, the
    schema that encodes them (else None: the numbers are the inputs). Infinite and out-of-float32-range numbers are
    a DataError naming the column and the row."""
    values, schema = read_table(names, columns, where, row, categorical, max_onehot)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(np.float32)
    bad = np.argwhere(np.isinf(cast))
    if len(bad):
        i, j = (int(k) for k in bad[0])
        why = "infinite values" if np.isinf(values[i, j]) else "values outside float32's range"
        raise DataError(f"{where}: column {names[j]!r} has {why} ({row(i)}: {columns[j][i]!r}); fill, drop or "
                        "rescale them")
    plain = all(c.kind == "numeric" and not c.missing for c in schema.columns)
    return torch.from_numpy(cast), None if plain else schema


def _parsed(cells: Sequence[Any], present: list[int]) -> dict[int, float]:
    """The rows among ``present`` whose value is a number, with that number (each cell parsed once)."""
    out = {}
    for i in present:
        try:
            out[i] = float(cells[i])
        except (TypeError, ValueError):
            pass
    return out


def _as_number(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return float("inf")


def _refuse_non_categories(where: str, name: str, values: list[str], vocab: list[str]) -> None:
    """Dates, free text and identifiers are not categories: one line each, naming the column and the choice."""
    dates = sum(bool(_DATE.match(v)) for v in vocab)
    if dates >= 0.8 * len(vocab):
        raise DataError(f"{where}: column {name!r} holds dates (e.g. {vocab[0]!r}); turn it into numbers (days since "
                        f"a date, month, weekday) or drop it (data.drop: [{name}])")
    if len(vocab) > 20 and len(vocab) > 0.5 * len(values):
        words = np.mean([len(v.split()) for v in vocab])
        what = "free text" if words >= 3 else "an identifier"
        raise DataError(f"{where}: column {name!r} looks like {what} ({len(vocab)} distinct values in {len(values)} "
                        f"rows); drop it (data.drop: [{name}]) or encode it yourself")


class TableEncoder(nn.Module):
    """Numbers of a :class:`TableSchema` -> network inputs: imputed values and missing indicators, one-hot
    categories or their frequency rank. Fitted on the training rows (``fit``), applied as ``encoder(x)``."""

    def __init__(self, schema: TableSchema, impute: str = "median") -> None:
        super().__init__()
        if impute not in ("median", "mean"):
            raise ValueError(f"impute must be 'median' or 'mean', got {impute!r}")
        self.schema, self.impute = schema, impute
        n = len(schema.columns)
        self.register_buffer("fill", torch.zeros(n))  # the value a missing number takes
        self.register_buffer("indicate", torch.zeros(n))  # 1 where the training rows had a missing value
        slots = sum(len(c.categories) for c in schema.columns if c.kind == "categorical")
        self.register_buffer("seen", torch.zeros(slots))  # 1 for each category the training rows had (one-hot)
        self.register_buffer("rank", torch.zeros(slots))  # each category's frequency rank (0: most frequent)
        n_cat = sum(c.kind == "categorical" for c in schema.columns)
        self.register_buffer("unseen", torch.zeros(n_cat))  # the rank of a category the training rows lacked

    def fit(self, x: torch.Tensor) -> TableEncoder:
        """Statistics of the training rows ``x`` (N, F): imputation values, which columns had missing values, which
        categories occur and how often."""
        from sklearn.impute import MissingIndicator, SimpleImputer
        from sklearn.preprocessing import OneHotEncoder

        a = x.double().cpu().numpy()
        cols = self.schema.columns
        num = [j for j, c in enumerate(cols) if c.kind == "numeric"]
        fill, indicate = np.zeros(len(cols)), np.zeros(len(cols))
        if num:
            imputer = SimpleImputer(strategy=self.impute, keep_empty_features=True).fit(a[:, num])
            fill[num] = imputer.statistics_
        indicate[MissingIndicator(features="missing-only", error_on_new=False).fit(a).features_] = 1.0
        seen, rank = [], []
        for j, c in enumerate(cols):
            if c.kind != "categorical":
                continue
            codes = a[:, j]
            codes = codes[~np.isnan(codes) & (codes >= 0)].astype(np.int64).reshape(-1, 1)
            present = np.zeros(len(c.categories))
            if len(codes):
                enc = OneHotEncoder(handle_unknown="ignore").fit(codes)
                present[enc.categories_[0]] = 1.0
            counts = np.bincount(codes.ravel(), minlength=len(c.categories)).astype(np.float64)
            order = sorted(np.flatnonzero(counts), key=lambda k: (-counts[k], k))
            r = np.full(len(c.categories), float(len(order)))  # never seen in training: one past the rarest
            r[order] = np.arange(len(order))
            seen.append(present)
            rank.append(r)
            self.unseen[len(rank) - 1] = float(len(order))
        self.fill.copy_(torch.from_numpy(fill))
        self.indicate.copy_(torch.from_numpy(indicate))
        if seen:
            self.seen.copy_(torch.from_numpy(np.concatenate(seen)))
            self.rank.copy_(torch.from_numpy(np.concatenate(rank)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, F) in the schema's numbers -> (N, schema.width) float32."""
        x = x.to(self.fill.device, torch.float32)
        parts, slot, k = [], 0, 0
        for j, c in enumerate(self.schema.columns):
            v = x[:, j:j + 1]
            gone = torch.isnan(v)
            if c.kind == "numeric":
                parts.append(torch.where(gone, self.fill[j:j + 1], v))
            else:
                size = len(c.categories)
                if c.onehot:
                    vocab = torch.arange(size, device=x.device, dtype=x.dtype)
                    parts.append((v == vocab).to(x.dtype) * self.seen[slot:slot + size])
                else:
                    known = ~gone & (v >= 0) & (v < size)
                    index = torch.where(known, v, torch.zeros_like(v)).long() + slot
                    parts.append(torch.where(known, self.rank[index.squeeze(1)].unsqueeze(1), self.unseen[k:k + 1]))
                slot, k = slot + size, k + 1
            if c.missing:
                parts.append(gone.to(x.dtype) * self.indicate[j:j + 1])
        return torch.cat(parts, dim=1)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fitted state, for safetensors."""
        return {name: b.detach().cpu().contiguous() for name, b in self.named_buffers()}

    def load_tensors(self, state: dict[str, torch.Tensor]) -> TableEncoder:
        expected = {name: tuple(b.shape) for name, b in self.named_buffers()}
        found = {name: tuple(t.shape) for name, t in state.items()}
        if found != expected:
            raise ArtifactError(f"table encoder state does not fit the saved columns (expected {expected}, "
                                f"got {found})")
        for name, b in self.named_buffers():
            b.copy_(state[name])
        return self
