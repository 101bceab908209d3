"""Matplotlib figures for the CLI and the report. Every function returns a Figure; :func:`save` writes PNG.

Uses the non-interactive Agg backend so plots work on machines without a display.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nntune.atomic import write_bytes  # noqa: E402

SUGGESTION_STYLE = {"steepest": ("tab:red", "o"), "valley": ("tab:green", "s"), "min_div_10": ("tab:purple", "^")}


def png(fig: Figure, dpi: int = 110) -> bytes:
    """``fig`` as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (atomically) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes(path, png(fig, dpi))


def lr_find_plot(result: dict) -> Figure:
    """Smoothed loss vs LR (log axis) with the three suggestions marked; the chosen one in the legend title."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(result["lrs"], result["raw_losses"], color="0.8", lw=0.8, label="loss (raw)")
    ax.plot(result["lrs"], result["losses"], color="tab:blue", label="loss (smoothed)")
    lrs = result["lrs"]
    for name, lr in result["suggestions"].items():
        color, marker = SUGGESTION_STYLE[name]
        i = min(range(len(lrs)), key=lambda k: abs(lrs[k] - lr))
        ax.plot([lr], [result["losses"][i]], marker=marker, color=color, ms=8, ls="none",
                label=f"{name}: {lr:.2e}" + (" (chosen)" if name == result["method"] else ""))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    lo, hi = min(result["losses"]), max(result["losses"][: max(3, len(lrs) // 5)])
    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.3 * (hi - lo))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def augment_grid(grid: torch.Tensor, title: str = "") -> Figure:
    """Rows of samples: the original, then augmented copies. ``grid`` is ``(n, 1 + copies, C, H, W)`` or 1-D."""
    n, cols = grid.shape[:2]
    signal = grid.dim() == 4
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols if not signal else 2 * cols, 1.3 * n), squeeze=False)
    for r in range(n):
        for c in range(cols):
            ax = axes[r][c]
            item = grid[r, c].float()
            if signal:
                for ch in item:
                    ax.plot(ch.numpy(), lw=0.8)
            else:
                img = item.permute(1, 2, 0).numpy()
                lo, hi = float(grid[r].min()), float(grid[r].max())
                img = (img - lo) / ((hi - lo) or 1.0)
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img.clip(0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"aug {c}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _metric_axis(ax, label: str) -> None:
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)


def by_category(groups: dict[str, list[float]], xlabel: str, metric: str) -> Figure:
    """Box plot with every trial drawn as a point on top: the metric by a categorical choice."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = list(groups)
    data = [groups[n] for n in names]
    ax.boxplot(data, widths=0.5, showfliers=False)
    gen = torch.Generator().manual_seed(0)
    for i, values in enumerate(data, start=1):
        jitter = (torch.rand(len(values), generator=gen) - 0.5) * 0.25
        ax.scatter([i + float(j) for j in jitter], values, s=18, alpha=0.7, color="tab:blue", zorder=3)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n={len(groups[n])})" for n in names], fontsize=8)
    ax.set_xlabel(xlabel)
    _metric_axis(ax, metric)
    return fig


def vs_numeric(series: dict[str, tuple[list[float], list[float]]], xlabel: str, metric: str,
               log: bool = False) -> Figure:
    """Scatter of the metric against a numeric setting, one colour per series (e.g. per model family). Integer
    settings (depth, units) get integer ticks; a log axis labels its major ticks in plain numbers and leaves the
    minor ones unlabelled (labelled minor ticks such as 3×10¹ and 4×10¹ ran into each other)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, (xs, ys) in series.items():
        ax.scatter(xs, ys, s=22, alpha=0.75, label=f"{name} (n={len(xs)})")
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if all(float(x).is_integer() for xs, _ in series.values() for x in xs):
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)) if log else
                                   ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    _metric_axis(ax, metric)
    if len(series) > 1 or any(series):
        ax.legend(fontsize=8)
    return fig


def learning_curves(history: list[dict], metric: str, best_epoch: int = 0, stopped_epoch: int = 0) -> Figure:
    """Train/val loss and metric per epoch, with the best epoch and the stop epoch marked."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], metric, metric)):
        if key in history[0]:
            ax.plot(epochs, [h[key] for h in history], label=f"train {label}")
        if f"val_{key}" in history[0]:
            ax.plot(epochs, [h[f"val_{key}"] for h in history], label=f"val {label}")
        if best_epoch:
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1, label=f"best epoch {best_epoch}")
        if stopped_epoch:
            ax.axvline(stopped_epoch, color="tab:red", ls=":", lw=1, label=f"stopped {stopped_epoch}")
        ax.set_xlabel("epoch")
        _metric_axis(ax, label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def schedule_plot(values: list[float], per_step: bool, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.plot(range(len(values)), values, color="tab:orange")
    ax.set_xlabel("step" if per_step else "epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def optimization_history(numbers: list[int], values: list[float], maximize: bool, metric: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.scatter(numbers, values, s=18, label="trial")
    best, running = [], None
    for v in values:
        running = v if running is None else (max(running, v) if maximize else min(running, v))
        best.append(running)
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    _metric_axis(ax, metric)
    ax.legend(fontsize=8)
    return fig


def pareto_plot(everyone: list[tuple[float, float]], front: list[tuple[float, float]], xlabel: str,
                metric: str) -> Figure:
    """Every trial as (cost, score) and the Pareto front as a step line through its points."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if everyone:
        ax.scatter(*zip(*everyone), s=16, color="tab:gray", alpha=0.6, label="trial")
    pts = sorted(front)
    ax.step(*zip(*pts), where="post", color="tab:red")
    ax.scatter(*zip(*pts), s=36, color="tab:red", label="Pareto front", zorder=3)
    ax.set_xlabel(xlabel)
    if "param" in xlabel:
        ax.set_xscale("log")
    _metric_axis(ax, metric)
    ax.legend(fontsize=8)
    return fig


def importances_bar(importances: dict[str, float]) -> Figure:
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.3 * len(names) + 1))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    ax.tick_params(axis="y", labelsize=8)
    return fig


VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red", "equivalent": "tab:blue"}


def forest_plot(rows: list[dict], chosen: str, xlabel: str, scale: float = 1.0, margin: float | None = None) -> Figure:
    """Each variant's difference to the chosen configuration with its confidence interval, zero line marked and the
    equivalence margin shaded; coloured by its verdict: green better, red worse, blue equivalent, grey inconclusive."""
    rows = [r for r in rows if r.get("diff") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.32 * max(1, len(rows))))
    if margin:
        ax.axvspan(-margin * scale, margin * scale, color="tab:blue", alpha=0.08, lw=0)
    for i, r in enumerate(rows):
        lo = r["ci_low"] if r["ci_low"] is not None else r["diff"]
        hi = r["ci_high"] if r["ci_high"] is not None else r["diff"]
        color = VERDICT_COLORS.get(r.get("verdict"), "0.45")
        y = len(rows) - 1 - i
        ax.plot([lo * scale, hi * scale], [y, y], color=color, lw=2, solid_capstyle="butt")
        ax.plot([r["diff"] * scale], [y], "o", color=color, ms=5)
    ax.axvline(0, color="black", lw=0.8, ls="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["name"] for r in reversed(rows)], fontsize=8)
    ax.set_xlabel(xlabel)
    shaded = ", shaded: equivalence margin" if margin else ""
    ax.set_title(f"difference to the chosen {chosen} (95 % CI{shaded})", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return fig
