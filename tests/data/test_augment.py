import pytest
import torch

from nntune.data.augment import IMAGE_OPS, AugmentSpec, Augmenter, build_augmenter, preview_grid
from nntune.errors import ConfigError

ALL_IMAGE_OPS = [{"op": name} for name in IMAGE_OPS]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_op_preserves_shape_and_dtype(shape):
    x = torch.rand(16, *shape) * 255
    for op in ALL_IMAGE_OPS:
        aug = Augmenter(AugmentSpec([op], 1.0), shape, (0, 255))
        y = aug(x)
        assert y.shape == x.shape and y.dtype == x.dtype, op
        assert not torch.equal(y, x) or op["op"] in ("hflip", "vflip", "erasing", "noise"), op


def test_strength_zero_is_identity_and_labels_untouched():
    x, labels = torch.rand(32, 3, 16, 16), torch.arange(32)
    aug = Augmenter(AugmentSpec(ALL_IMAGE_OPS, 0.0), (3, 16, 16))
    assert aug.identity and aug(x) is x
    for preset in ("light", "digits", "natural"):
        assert torch.equal(build_augmenter(preset, 0.0, (3, 16, 16))(x), x)
    assert torch.equal(labels, torch.arange(32))


def test_seeded_runs_repeat_exactly():
    x = torch.rand(32, 1, 28, 28)
    aug = build_augmenter("natural", 0.7, (1, 28, 28))
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    torch.manual_seed(4)
    c = aug(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_strength_scales_magnitude():
    x = torch.rand(256, 1, 28, 28)
    diffs = []
    for s in (0.2, 1.0):
        torch.manual_seed(0)
        diffs.append((Augmenter(AugmentSpec([{"op": "affine", "p": 1.0}], s), (1, 28, 28))(x) - x).abs().mean())
    assert diffs[0] < diffs[1]


def test_value_range_roundtrip_for_raw_pixels():
    x = torch.rand(8, 1, 8, 8) * 16
    aug = build_augmenter("light", 0.5, (1, 8, 8), x)
    assert (aug.lo, aug.span) == (float(x.min()), float(x.max() - x.min()))


def test_signal_ops_and_image_op_error():
    x = torch.randn(16, 2, 50)
    y = build_augmenter("digits", 1.0, (2, 50))(x)
    assert y.shape == x.shape and not torch.equal(x, y)
    with pytest.raises(ConfigError, match=r"ops\[0\]: unknown op 'hflip' \(an image op"):
        Augmenter(AugmentSpec([{"op": "hflip"}], 1.0), (2, 50))
    with pytest.raises(ConfigError, match="needs images or signals"):
        Augmenter(AugmentSpec([{"op": "noise"}], 1.0), (5,))


def test_bad_specs_name_the_key():
    with pytest.raises(ConfigError, match=r"ops\[1\] \(affine\): unknown parameter 'degree'"):
        Augmenter(AugmentSpec([{"op": "hflip"}, {"op": "affine", "degree": 3}], 1.0), (1, 8, 8))
    with pytest.raises(ConfigError, match="unknown preset 'heavy'"):
        build_augmenter("heavy", 0.5, (1, 8, 8))
    with pytest.raises(ConfigError, match=r"p must be in \[0, 1\]"):
        Augmenter(AugmentSpec([{"op": "hflip", "p": 2}], 1.0), (1, 8, 8))


def test_preview_grid_does_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    grid = preview_grid(torch.rand(3, 1, 8, 8), build_augmenter("digits", 1.0, (1, 8, 8)), copies=4)
    assert grid.shape == (3, 5, 1, 8, 8)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), expected)
