"""Image files -> one float32 tensor: full bit depth scaled to [0, 1] by the type's maximum (8-bit by 255, 16-bit by
65535: converting a 16-bit PNG to 8-bit would clip nearly every pixel), grey or RGB, one common size, and oversized
or unreadable files refused with a one-line error naming the file."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import numpy as np
import torch

from nntune.errors import DataError

MAX_IMAGE_PIXELS = 4096 * 4096  # per image; larger ones are refused before they are decoded
IMAGE_VALUES = "unit"  # image files are read into [0, 1]; a saved model without this mark saw 0..255


def read_images(where: Path, files: list[Path], like: tuple[int, ...] | None = None) -> torch.Tensor:
    """Image files as one float32 tensor (N, C, H, W) in [0, 1]: grey when every file is grey, else RGB; the most
    common size wins and the others are resized to it (with a warning). ``like`` (C, H, W), a model's input shape,
    sets the channels (1: grey, 3: RGB) and the size instead, so new images of any size predict."""
    images = [_open_image(f) for f in files]
    sizes = collections.Counter(im.size for im in images)
    if like is not None and len(like) == 3 and like[0] in (1, 3):
        rgb, size = like[0] == 3, (like[2], like[1])
        other = sum(n for s, n in sizes.items() if s != size)
        if other:
            warnings.warn(f"{where}: {other} image(s) resized to the model's {size[0]}x{size[1]}", stacklevel=3)
    else:
        rgb = any(im.mode not in ("L", "1", "I", "F") and not im.mode.startswith("I;16") for im in images)
        size = sizes.most_common(1)[0][0]
        if len(sizes) > 1:
            warnings.warn(f"{where}: images have {len(sizes)} different sizes; resizing all to {size[0]}x{size[1]}",
                          stacklevel=3)
    x = torch.from_numpy(np.stack([_pixels(im, rgb, size) for im in images]))
    return x.unsqueeze(1) if not rgb else x.permute(0, 3, 1, 2).contiguous()


def _open_image(f: Path):
    """A decoded copy of image file ``f``; unreadable, oversized or decompression-bomb files are DataErrors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(f"{f}: image is {w}x{h} pixels; nntune reads images of at most {MAX_IMAGE_PIXELS:,} "
                                "pixels (resize it first)")
            im.load()
            return im.copy()
    except Image.DecompressionBombError:
        raise DataError(f"{f}: image is larger than {MAX_IMAGE_PIXELS:,} pixels (resize it first)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{f}: unreadable image ({err.__class__.__name__})") from None


def _pixels(im, rgb: bool, size: tuple[int, int]) -> np.ndarray:
    """One image's pixels as float32 in [0, 1], scaled by its type's maximum: 8-bit by 255, 16-bit by 65535 (32-bit
    integer images holding 16-bit data, as some readers return, too), float images as they are."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        values = np.asarray(im).astype(np.float64)
        top = 1.0 if im.mode == "F" else 65535.0 if im.mode != "I" or values.max(initial=0) <= 65535 else 2.0**31 - 1
        grey = Image.fromarray((values / top).astype(np.float32), mode="F")
        grey = grey.resize(size) if grey.size != size else grey
        out = np.asarray(grey, dtype=np.float32)
        return np.repeat(out[..., None], 3, axis=2) if rgb else out
    im = im.convert("RGB" if rgb else "L")
    im = im.resize(size) if im.size != size else im
    return np.asarray(im, dtype=np.float32) / 255.0
