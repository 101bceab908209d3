"""Augmentation throughput: nntune's batched kornia pipeline vs albumentations applied image by image. Prints JSON.

Same ops and magnitudes on both sides: a random affine (rotation 15 deg, translation 10%, scale 10%, shear 10 deg),
horizontal flip, brightness/contrast jitter (0.3), Gaussian noise (std 0.05 of the range) and erasing. Batches of
256 grayscale 28x28 and 256 RGB 32x32 images on the CPU; median over repeats after a warm-up.
albumentations is installed only for this script (`pip install albumentations`), it is not a dependency.
Target: nntune >= 2x albumentations.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from nntune.data.augment import Augmenter, AugmentSpec

OPS = [
    {"op": "affine", "p": 0.8, "degrees": 15.0, "translate": 0.1, "scale": 0.1, "shear": 10.0},
    {"op": "hflip", "p": 0.5},
    {"op": "jitter", "p": 0.8, "brightness": 0.3, "contrast": 0.3, "saturation": 0.0, "hue": 0.0},
    {"op": "noise", "p": 0.5, "std": 0.05},
    {"op": "erasing", "p": 0.5, "max_area": 0.2},
]


def albumentations_pipeline():
    import albumentations as A

    return A.Compose([
        A.Affine(rotate=(-15, 15), translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), shear=(-10, 10), p=0.8),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.8),
        A.GaussNoise(std_range=(0.05, 0.05), p=0.5),
        A.Erasing(scale=(0.02, 0.2), p=0.5),
    ])


def timeit(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def case(shape, n, repeats):
    c, h, w = shape
    x = torch.rand(n, c, h, w)
    ours = Augmenter(AugmentSpec(OPS, 1.0), shape)
    images = [np.ascontiguousarray(img.permute(1, 2, 0).numpy()) for img in x]
    alb = albumentations_pipeline()
    t_ours = timeit(lambda: ours(x), repeats)
    t_alb = timeit(lambda: [alb(image=im)["image"] for im in images], repeats)
    return {"shape": list(shape), "batch": n, "nntune_images_per_s": round(n / t_ours),
            "albumentations_images_per_s": round(n / t_alb), "speedup": round(t_alb / t_ours, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [case((1, 28, 28), args.batch, args.repeats), case((3, 32, 32), args.batch, args.repeats)]
    print(json.dumps({"benchmark": "augment_throughput", "machine": platform.machine(), "threads": args.threads,
                      "torch": torch.__version__, "cases": cases}, indent=2))


if __name__ == "__main__":
    main()
