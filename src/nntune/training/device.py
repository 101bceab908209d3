"""Where and how training runs: the device, the autocast precision, TF32, channels_last, threads and compilation.

One place for these so the single-model loop, the population engine and the LR range test make the same choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from nntune.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an unusable device is a ConfigError naming it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name!r} asked for, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {name!r} does not exist ({torch.cuda.device_count()} GPU(s))")
    elif device.type != "cpu":
        raise ConfigError(f"train.device: {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``train.precision`` asks for on ``device``; None means plain fp32 (no autocast)."""
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return None
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if name == "auto":
        return torch.bfloat16 if bf16_ok else None
    if name == "bf16" and not bf16_ok:
        raise ConfigError(f"train.precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 "
                          "or auto")
    return torch.bfloat16 if name == "bf16" else torch.float16


@contextlib.contextmanager
def matmul_precision(device: torch.device, precision: str) -> Iterator[None]:
    """TF32 matmuls and convolutions on a CUDA GPU unless ``precision`` is strict fp32; restored afterwards."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def uses_channels_last(model: nn.Module, device: torch.device) -> bool:
    """2-D convolutions on a CUDA GPU run faster in channels_last layout (tensor cores)."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def set_threads(threads: int | None) -> None:
    """``train.threads``: the intra-op thread count for this process (None or 0 keeps torch's choice)."""
    if threads:
        torch.set_num_threads(threads)


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile`` of the model for training steps; on a GPU with CUDA graphs (``reduce-overhead``), which
    removes the per-kernel launch cost that dominates small models."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)
