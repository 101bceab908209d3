"""Mixed precision, TF32, channels_last and torch.compile: what each setting resolves to, that training under it
matches fp32 training closely, and (where a CUDA GPU is present) the GPU-only paths."""

import pytest
import torch

from nntune.config import RunConfig, apply_overrides
from nntune.errors import SpecError
from nntune.training.pipeline import fit_model, fit_population, prepare_data
from nntune.training.device import matmul_precision, resolve_precision

CPU = torch.device("cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cfg(**over):
    base = {"train.epochs": 3, "train.early_stopping.enabled": False, "train.device": "cpu"}
    return apply_overrides(RunConfig(), {**base, **over})


@pytest.fixture(scope="module")
def data():
    return prepare_data(_cfg())


def test_precision_names_resolve_per_device():
    assert resolve_precision("auto", CPU) is None and resolve_precision("fp32", CPU) is None
    assert resolve_precision("bf16", CPU) is torch.bfloat16 and resolve_precision("fp16", CPU) is torch.float16


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_like_fp32(data, precision):
    """Autocast (and loss scaling for fp16) changes rounding, not what is learned: per-epoch losses within 1 %."""
    _, _, ref = fit_model(_cfg(), data)
    _, _, mixed = fit_model(_cfg(**{"train.precision": precision}), data)
    assert [h["loss"] for h in mixed.history] == pytest.approx([h["loss"] for h in ref.history], rel=1e-2)
    assert abs(mixed.history[-1]["val_accuracy"] - ref.history[-1]["val_accuracy"]) <= 0.02
    assert all(torch.isfinite(torch.tensor(h["val_loss"])) for h in mixed.history)


def test_a_bf16_population_matches_bf16_single_models(data):
    cfgs = [_cfg(**{"train.precision": "bf16", "train.lr": lr, "seed": s}) for s, lr in ((0, 1e-3), (1, 3e-3))]
    together = fit_population(cfgs, data)
    for cfg, (_, fit) in zip(cfgs, together):
        _, _, alone = fit_model(cfg, data)
        assert [h["val_loss"] for h in fit.history] == pytest.approx([h["val_loss"] for h in alone.history],
                                                                     rel=2e-2)


def test_fp16_populations_are_refused_with_the_way_out(data):
    cfgs = [_cfg(**{"train.precision": "fp16", "seed": s}) for s in (0, 1)]
    with pytest.raises(SpecError, match="--population 1"):
        fit_population(cfgs, data)


def test_compiled_training_matches_eager(data):
    cfg = _cfg(**{"train.epochs": 2})
    _, _, eager = fit_model(cfg, data)
    model, _, compiled = fit_model(apply_overrides(cfg, {"train.compile": True}), data)
    assert [h["val_loss"] for h in compiled.history] == pytest.approx([h["val_loss"] for h in eager.history],
                                                                      rel=1e-4)
    assert isinstance(model, torch.nn.Sequential)  # the saved model is the plain module, not the compiled wrapper


def test_tf32_is_left_alone_on_the_cpu():
    saved = torch.backends.cuda.matmul.allow_tf32
    with matmul_precision(CPU, "auto"):
        assert torch.backends.cuda.matmul.allow_tf32 == saved


@cuda
def test_auto_on_a_gpu_is_bf16_with_tf32_restored_afterwards():
    dev = torch.device("cuda")
    assert resolve_precision("auto", dev) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
    saved = torch.backends.cuda.matmul.allow_tf32
    with matmul_precision(dev, "auto"):
        assert torch.backends.cuda.matmul.allow_tf32
    with matmul_precision(dev, "fp32"):
        assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == saved


@cuda
def test_a_2d_cnn_trains_channels_last_on_a_gpu_and_matches_the_cpu():
    over = {"train.epochs": 2, "model.family": "cnn", "model.conv_blocks": 2, "model.filters": 8,
            "train.precision": "fp32"}
    cpu_cfg = _cfg(**over)
    data = prepare_data(cpu_cfg)
    _, _, on_cpu = fit_model(cpu_cfg, data)
    model, _, on_gpu = fit_model(apply_overrides(cpu_cfg, {"train.device": "cuda"}), data)
    conv = model.block1.conv1.weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    assert on_gpu.history[-1]["val_accuracy"] == pytest.approx(on_cpu.history[-1]["val_accuracy"], abs=0.03)
