"""An augmentation preview of a config's training split: what ``nntune augment`` draws and what the report shows
for question 8 (raw samples, each followed by augmented copies)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nntune.config import RunConfig
from nntune.data.augment import Augmenter, build_augmenter, preview_grid
from nntune.data.sources import Dataset, load_configured
from nntune.data.splits import split_dataset


@dataclass
class Preview:
    """``grid``: ``(samples, 1 + copies, C, ...)`` raw then augmented; the augmenter and the data it came from."""

    grid: torch.Tensor
    augmenter: Augmenter
    dataset: Dataset


def augment_preview(cfg: RunConfig, preset: str, strength: float, samples: int, copies: int,
                    shuffle: bool = False) -> Preview:
    """``preset`` at ``strength`` on ``cfg``'s training split: its first ``samples`` samples, or with ``shuffle`` a
    draw seeded by ``cfg.seed``; ``custom`` takes the config's own ops."""
    ds = load_configured(cfg.data)
    train_x = ds.x[split_dataset(ds, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed).train]
    augmenter = build_augmenter(preset, strength, ds.input_shape, train_x,
                                cfg.preprocess.custom_ops() if preset == "custom" else None)
    picks = (torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))[:samples] if shuffle
             else slice(0, samples))
    return Preview(preview_grid(train_x[picks], augmenter, copies, seed=cfg.seed), augmenter, ds)
