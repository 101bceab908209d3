"""Size and speed of a trial's model, measured before it trains: the hard limits ``search.max_params`` and
``search.max_latency_ms`` (a violating trial is pruned without training) and the extra objectives of a
multi-objective search (``search.objectives``: params, latency).

Latency is the median time of a forward pass of one sample (batch 1) in eval mode on the training device, after a
warm-up; it depends on the architecture, not on the weights, so an untrained model measures it.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from nntune.config import RunConfig
from nntune.data.sources import Dataset
from nntune.errors import TrainingError
from nntune.training.device import resolve_device
from nntune.training.pipeline import initial_model

REPEATS, WARMUP = 30, 5


def latency_ms(model: nn.Module, input_shape: tuple[int, ...], device: torch.device, repeats: int = REPEATS) -> float:
    """Median milliseconds of one forward pass at batch 1."""
    model = model.to(device).eval()
    x = torch.zeros((1, *input_shape), device=device)
    times = []
    with torch.inference_mode():
        for i in range(WARMUP + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= WARMUP:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(cfg: RunConfig, ds: Dataset, search_cfg) -> dict[str, float]:
    """``params`` of ``cfg``'s model, and ``latency_ms``, when a limit or an objective needs them (else nothing)."""
    timed = search_cfg.max_latency_ms is not None or "latency" in search_cfg.objectives
    if not (timed or search_cfg.max_params is not None or len(search_cfg.objectives) > 1):
        return {}
    model = initial_model(cfg, ds)
    out = {"params": float(sum(p.numel() for p in model.parameters()))}
    if timed:
        try:
            out["latency_ms"] = latency_ms(model, ds.input_shape, resolve_device(cfg.train.device))
        except torch.OutOfMemoryError:
            raise TrainingError(f"out of memory timing a forward pass of {int(out['params']):,} parameters") from None
    return out


def violation(sizes: dict[str, float], search_cfg) -> str | None:
    """Why a trial breaks a hard limit, or None."""
    if search_cfg.max_params is not None and sizes.get("params", 0) > search_cfg.max_params:
        return f"{int(sizes['params']):,} parameters > --max-params {search_cfg.max_params:,}"
    if search_cfg.max_latency_ms is not None and sizes.get("latency_ms", 0.0) > search_cfg.max_latency_ms:
        return f"latency {sizes['latency_ms']:.3g} ms > --max-latency-ms {search_cfg.max_latency_ms:g}"
    return None


def extra_values(sizes: dict[str, float], objectives: list[str]) -> list[float]:
    """The values of the objectives after the score, in their order."""
    return [sizes["params"] if name == "params" else sizes["latency_ms"] for name in objectives[1:]]
