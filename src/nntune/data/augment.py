"""Augmentation (seed topic 8): batched pipelines on the training device, built on kornia for images.

A pipeline is a list of ops (``{"op": name, "p": prob, ...magnitudes}``) plus one ``strength`` in [0, 1] that scales
every magnitude (and the probability of flips and erasing), so a search can tune a single number; strength 0 is the
identity. Pipelines run on *raw* batches before scaling, with intensities mapped to [0, 1] by the training data's
value range, so colour ops see the range they expect. 1-D signals get their own ops (shift, scale, noise), written
here in torch because kornia is image-only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nntune.errors import ConfigError
from nntune.registry import AUGMENT_PRESETS

IMAGE_OPS: dict[str, dict[str, Any]] = {
    # op: default parameters (magnitudes are scaled by strength)
    "affine": {"p": 0.8, "degrees": 15.0, "translate": 0.1, "scale": 0.1, "shear": 10.0},
    "hflip": {"p": 0.5},
    "vflip": {"p": 0.5},
    "crop": {"p": 1.0, "padding": 4},
    "resized_crop": {"p": 1.0, "min_scale": 0.5},
    "noise": {"p": 0.5, "std": 0.05},
    "jitter": {"p": 0.8, "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05},
    "elastic": {"p": 0.5, "alpha": 1.0, "sigma": 8.0},
    "erasing": {"p": 0.5, "max_area": 0.2},
}
SIGNAL_OPS: dict[str, dict[str, Any]] = {
    "shift": {"p": 0.8, "fraction": 0.1},
    "amplitude": {"p": 0.8, "scale": 0.2},
    "noise": {"p": 0.5, "std": 0.05},
}
PROBABILITY_SCALED = {"hflip", "vflip", "erasing"}

@dataclass
class AugmentSpec:
    """Ops with their parameters, and the strength that scales them."""

    ops: list[dict[str, Any]] = field(default_factory=list)
    strength: float = 0.5

    @classmethod
    def preset(cls, name: str, strength: float = 0.5, kind: str = "image") -> AugmentSpec:
        table = AUGMENT_PRESETS["signal" if kind == "signal" else "image"]
        if name not in table:
            raise ConfigError(f"preprocess.augment: unknown preset {name!r} (choose one of {', '.join(table)})")
        return cls(copy.deepcopy(table[name]), strength)


class _SignalShift(nn.Module):
    def __init__(self, p: float, fraction: float) -> None:
        super().__init__()
        self.p, self.fraction = p, fraction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length = x.shape[0], x.shape[-1]
        max_shift = int(round(self.fraction * length))
        if max_shift == 0:
            return x
        shifts = torch.randint(-max_shift, max_shift + 1, (n,), device=x.device)
        shifts = torch.where(torch.rand(n, device=x.device) < self.p, shifts, torch.zeros_like(shifts))
        idx = (torch.arange(length, device=x.device).unsqueeze(0) - shifts.unsqueeze(1)) % length
        return torch.gather(x, -1, idx.unsqueeze(1).expand(-1, x.shape[1], -1))


class _SignalAmplitude(nn.Module):
    def __init__(self, p: float, scale: float) -> None:
        super().__init__()
        self.p, self.scale = p, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        factor = 1 + (torch.rand(n, 1, 1, device=x.device) * 2 - 1) * self.scale
        apply = torch.rand(n, 1, 1, device=x.device) < self.p
        return torch.where(apply, x * factor, x)


class _Noise(nn.Module):
    """Additive Gaussian noise in the [0, 1] intensity range (any tensor rank)."""

    def __init__(self, p: float, std: float) -> None:
        super().__init__()
        self.p, self.std = p, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        apply = (torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) < self.p).to(x.dtype)
        return x + apply * torch.randn_like(x) * self.std


def _image_op(name: str, params: dict[str, Any], s: float, size: tuple[int, int], channels: int) -> nn.Module | None:
    import kornia.augmentation as K

    p = params["p"] * (s if name in PROBABILITY_SCALED else 1.0)
    if p <= 0:
        return None
    if name == "affine":
        deg, tr, sc, sh = (params[k] * s for k in ("degrees", "translate", "scale", "shear"))
        if max(deg, tr, sc, sh) == 0:
            return None
        return K.RandomAffine(degrees=deg, translate=(tr, tr) if tr else None,
                              scale=(1 - sc, 1 + sc) if sc else None, shear=sh if sh else None, p=p)
    if name == "hflip":
        return K.RandomHorizontalFlip(p=p)
    if name == "vflip":
        return K.RandomVerticalFlip(p=p)
    if name == "crop":
        pad = int(round(params["padding"] * s))
        return K.RandomCrop(size, padding=pad, p=p) if pad else None
    if name == "resized_crop":
        lo = 1 - (1 - params["min_scale"]) * s
        return K.RandomResizedCrop(size, scale=(lo, 1.0), p=p) if lo < 1 else None
    if name == "noise":
        std = params["std"] * s
        return _Noise(p, std) if std else None
    if name == "jitter":
        b, c = params["brightness"] * s, params["contrast"] * s
        sat, hue = (params["saturation"] * s, params["hue"] * s) if channels == 3 else (0.0, 0.0)
        if max(b, c, sat, hue) == 0:
            return None
        return K.ColorJitter(b, c, sat, hue, p=p)
    if name == "elastic":
        alpha = params["alpha"] * s
        sigma = params["sigma"]
        k = int(2 * round(3 * sigma) + 1)
        if not alpha:
            return None
        return K.RandomElasticTransform(kernel_size=(k, k), sigma=(sigma, sigma), alpha=(alpha, alpha), p=p)
    if name == "erasing":
        area = params["max_area"] * s
        return K.RandomErasing(scale=(min(0.02, area), area), p=p) if area else None
    raise AssertionError(name)


def _signal_op(name: str, params: dict[str, Any], s: float) -> nn.Module | None:
    if name == "shift":
        return _SignalShift(params["p"], params["fraction"] * s) if params["fraction"] * s else None
    if name == "amplitude":
        return _SignalAmplitude(params["p"], params["scale"] * s) if params["scale"] * s else None
    return _Noise(params["p"], params["std"] * s) if params["std"] * s else None


class Augmenter(nn.Module):
    """A compiled pipeline for one input shape: call it on a raw batch ``(N, C, ...)`` in training mode."""

    def __init__(self, spec: AugmentSpec, input_shape: tuple[int, ...], value_range: tuple[float, float] = (0, 1)):
        super().__init__()
        if not 0 <= spec.strength <= 1:
            raise ConfigError(f"preprocess.augment_strength: must be in [0, 1], got {spec.strength}")
        kind = {2: "signal", 3: "image"}.get(len(input_shape))
        if kind is None and spec.ops:
            raise ConfigError(f"preprocess.augment: augmentation needs images or signals; got per-sample shape "
                              f"{tuple(input_shape)} (use augment=none for tables)")
        self.spec = spec
        lo, hi = value_range
        self.lo, self.span = float(lo), float(hi - lo) or 1.0
        table = SIGNAL_OPS if kind == "signal" else IMAGE_OPS
        ops = []
        for i, raw in enumerate(spec.ops):
            name = raw.get("op")
            if name not in table:
                image_op = kind == "signal" and name in IMAGE_OPS
                extra = " (an image op; signals take shift, amplitude, noise)" if image_op else ""
                raise ConfigError(f"preprocess.augment.ops[{i}]: unknown op {name!r}{extra}; "
                                  f"choose one of {', '.join(table)}")
            unknown = set(raw) - set(table[name]) - {"op"}
            if unknown:
                raise ConfigError(f"preprocess.augment.ops[{i}] ({name}): unknown parameter {sorted(unknown)[0]!r}")
            params = {**table[name], **raw}
            if not 0 <= params["p"] <= 1:
                raise ConfigError(f"preprocess.augment.ops[{i}] ({name}): p must be in [0, 1], got {params['p']}")
            if spec.strength == 0:
                continue
            op = (_signal_op(name, params, spec.strength) if kind == "signal"
                  else _image_op(name, params, spec.strength, tuple(input_shape[1:]), input_shape[0]))
            if op is not None:
                ops.append(op)
        self.ops = nn.ModuleList(ops)

    @property
    def identity(self) -> bool:
        return len(self.ops) == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        y = (x - self.lo) / self.span
        for op in self.ops:
            y = op(y)
        return y * self.span + self.lo


def build_augmenter(preset: str, strength: float, input_shape: tuple[int, ...], x_train: torch.Tensor | None = None,
                    ops: list[dict[str, Any]] | None = None) -> Augmenter:
    """An Augmenter from a preset name (or explicit ops), its value range taken from the training data."""
    kind = "signal" if len(input_shape) == 2 else "image"
    spec = AugmentSpec(ops, strength) if ops is not None else AugmentSpec.preset(preset, strength, kind)
    rng = (float(x_train.min()), float(x_train.max())) if x_train is not None and len(x_train) else (0.0, 1.0)
    return Augmenter(spec, tuple(input_shape), rng)


def preview_grid(x: torch.Tensor, augmenter: Augmenter, copies: int = 5, seed: int = 0) -> torch.Tensor:
    """``(n, 1 + copies, C, ...)``: each raw sample followed by augmented copies (seeded, global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):  # only the CPU generator is forked: leave CUDA's alone too
        torch.default_generator.manual_seed(seed)
        augmenter.train()
        rows = [x] + [augmenter(x) for _ in range(copies)]
    return torch.stack(rows, dim=1)
