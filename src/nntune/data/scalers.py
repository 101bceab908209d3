"""Normalization (seed topic 7): minmax, zscore, robust, unit (per-sample L2) and per-channel image statistics.

Scalers are fitted on the training split only, work on tensors of any shape ``(N, ...)`` (feature-wise scalers treat
every non-batch element as a feature, like scikit-learn on flattened data) and carry their state in ``state_dict()``
so they travel with the model. Constant features get scale 1, as in scikit-learn, so they never produce NaN or inf.
Written here rather than wrapping scikit-learn so the transform runs on torch tensors on the training device.
A table with categories or missing values is encoded first (:class:`~nntune.data.tabular.TableEncoder`, fitted on the
same training rows): a scaler is the one stage from raw inputs to the network's, wherever a model is used.
"""

from __future__ import annotations

import torch

from nntune.data.tabular import TableEncoder
from nntune.errors import ArtifactError, ConfigError

METHODS = ("none", "minmax", "zscore", "robust", "unit", "channel")
_EPS = 10 * torch.finfo(torch.float64).eps


def _safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """Replace (near-)zero scales by 1, following scikit-learn's ``_handle_zeros_in_scale`` (float64 statistics)."""
    return torch.where(scale.abs() < _EPS, torch.ones_like(scale), scale)


class Scaler:
    """``y = (x - shift) / scale``, with ``unit`` dividing each sample by its L2 norm instead."""

    def __init__(self, method: str = "zscore", encoder: TableEncoder | None = None) -> None:
        if method not in METHODS:
            raise ConfigError(f"preprocess.scaler: unknown method {method!r} (choose one of {', '.join(METHODS)})")
        self.method = method
        self.encoder = encoder
        self.shift: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # copies per device, made once

    def _state_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale) on ``device``: a GPU batch is scaled without a host-to-device copy each call."""
        if device.type == "cpu":
            return self.shift, self.scale
        if device not in self._on:
            self._on[device] = (self.shift.to(device), self.scale.to(device))
        return self._on[device]

    @property
    def fitted(self) -> bool:
        return self.method in ("none", "unit") or self.shift is not None

    def fit(self, x: torch.Tensor) -> Scaler:
        if self.encoder is not None:
            x = self.encoder.fit(x)(x)
        x = x.double()
        if self.method == "minmax":
            lo, hi = x.amin(0), x.amax(0)
            self.shift, self.scale = lo, _safe_scale(hi - lo)
        elif self.method == "zscore":
            self.shift, self.scale = x.mean(0), _safe_scale(x.std(0, unbiased=False))
        elif self.method == "robust":
            q = torch.quantile(x.reshape(len(x), -1), torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype), dim=0)
            shape = x.shape[1:]
            self.shift, self.scale = q[1].reshape(shape), _safe_scale((q[2] - q[0]).reshape(shape))
        elif self.method == "channel":
            if x.dim() < 3:
                raise ConfigError("preprocess.scaler: 'channel' needs images or signals (N, C, ...); "
                                  f"got data of shape {tuple(x.shape)}")
            dims = [0] + list(range(2, x.dim()))
            view = (-1,) + (1,) * (x.dim() - 2)
            self.shift = x.mean(dims).reshape(view)
            self.scale = _safe_scale(x.std(dims, unbiased=False)).reshape(view)
        if self.shift is not None:
            self.shift, self.scale = self.shift.float(), self.scale.float()
        self._on = {}
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            x = self.encoder.to(x.device)(x)
        if self.method == "none":
            return x
        if self.method == "unit":
            norms = x.reshape(len(x), -1).norm(dim=1)
            norms = torch.where(norms == 0, torch.ones_like(norms), norms)
            return x / norms.reshape((-1,) + (1,) * (x.dim() - 1))
        if not self.fitted:
            raise RuntimeError("Scaler.transform called before fit")
        shift, scale = self._state_on(x.device)
        return (x - shift) / scale

    def fit_transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.fit(x).transform(x)

    def inverse_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled values back to the scaler's inputs (a table's encoded columns, not its raw values)."""
        if self.method in ("none", "unit"):
            return x
        shift, scale = self._state_on(x.device)
        return x * scale + shift

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-friendly); the method name travels in the artifact metadata, a table
        encoder's state under ``table.``."""
        own = {} if self.shift is None else {"shift": self.shift.contiguous(), "scale": self.scale.contiguous()}
        table = {} if self.encoder is None else {f"table.{k}": v for k, v in self.encoder.tensors().items()}
        return {**own, **table}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> Scaler:
        table = {k.removeprefix("table."): v for k, v in state.items() if k.startswith("table.")}
        state = {k: v for k, v in state.items() if not k.startswith("table.")}
        if self.encoder is not None:
            self.encoder.load_tensors(table)
        elif table:
            raise ArtifactError("scaler state holds a table encoder, but the model describes no table")
        if self.method in ("none", "unit"):
            return self
        if set(state) != {"shift", "scale"}:
            raise ArtifactError(f"scaler state for {self.method!r} needs 'shift' and 'scale', got {sorted(state)}")
        self.shift, self.scale = state["shift"].float(), state["scale"].float()
        self._on = {}
        return self


def resolve_method(method: str, kind: str) -> str:
    """``auto`` -> per-channel statistics for images and signals, zscore for tables."""
    if method != "auto":
        return method
    return "zscore" if kind == "tabular" else "channel"
