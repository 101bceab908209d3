"""Matplotlib figures for the CLI and the report. Every function returns a Figure; :func:`save` writes PNG.

Uses the non-interactive Agg backend so plots work on machines without a display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

SUGGESTION_STYLE = {"steepest": ("tab:red", "o"), "valley": ("tab:green", "s"), "min_div_10": ("tab:purple", "^")}


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


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
