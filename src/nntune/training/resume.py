"""A run's training state at the end of an epoch, to continue it later in another process: what successive halving
saves when it promotes a trial at a rung, so a killed search continues that trial from its last rung.

Saved: the weights, the best-weights snapshot early stopping would restore, the optimizer's moments by parameter
name (torch's names: ``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ``square_avg``) with its step count, and the
history. Not saved, because the history replays them exactly: the LR schedule (stepped through the past epochs,
reduce-on-plateau fed their monitored values), early stopping's patience and the order of the training data. The
random draws of dropout and augmentation come from the process's global generator and are not continued, so a
continued run equals an uninterrupted one exactly when it has neither (the float64 tests), and in distribution
otherwise. Written by a lone :class:`~nntune.training.single.Trainer` or by a population member; read by the Trainer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from nntune.atomic import replacing, staged
from nntune.errors import ArtifactError

MOMENTS = ("exp_avg", "exp_avg_sq", "momentum_buffer", "square_avg")  # torch.optim's per-parameter state names


@dataclass
class RunState:
    """Everything but the replayable parts of a run after ``epoch`` (= ``len(history)``) epochs."""

    history: list[dict]
    weights: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None = None  # early stopping's snapshot, when it restores best weights
    moments: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # parameter name -> moment -> tensor
    steps: int = 0  # optimizer steps taken

    @property
    def epoch(self) -> int:
        return len(self.history)


def from_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, int]:
    """(moments by parameter name, steps) of a torch optimizer over ``model``'s parameters."""
    moments, steps = {}, 0
    for name, p in model.named_parameters():
        st = optimizer.state.get(p)
        if not st:
            continue
        moments[name] = {k: v.detach().clone() for k, v in st.items() if k in MOMENTS and v is not None}
        if "step" in st:
            steps = max(steps, int(st["step"]))
    return moments, steps


def into_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: RunState) -> None:
    """Give a fresh torch optimizer over ``model`` the saved moments and step count (as a tensor, as torch keeps it)."""
    uses_step = any(k in ("exp_avg", "square_avg") for m in state.moments.values() for k in m)
    for name, p in model.named_parameters():
        saved = state.moments.get(name)
        if saved is None:
            continue
        st = {k: v.to(p.device, p.dtype).clone() for k, v in saved.items()}
        if uses_step:
            st["step"] = torch.tensor(float(state.steps), dtype=torch.float32)
        optimizer.state[p] = st


def save(directory: str | Path, state: RunState) -> Path:
    """Write ``state`` to ``directory`` (``state.safetensors`` and ``state.json``), each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"w/{k}": v.detach().cpu().contiguous() for k, v in state.weights.items()}
    tensors.update({f"b/{k}": v.detach().cpu().contiguous() for k, v in (state.best or {}).items()})
    for name, moments in state.moments.items():
        tensors.update({f"m/{kind}/{name}": v.detach().cpu().contiguous() for kind, v in moments.items()})
    with staged(directory / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    with replacing(directory / "state.json") as fh:  # written last: its presence means a complete state
        json.dump({"epoch": state.epoch, "steps": state.steps, "history": state.history}, fh)
    return directory


def load(directory: str | Path) -> RunState | None:
    """The state saved in ``directory``, or None when there is none; a damaged one is an ArtifactError naming it."""
    directory = Path(directory)
    meta_path, tensor_path = directory / "state.json", directory / "state.safetensors"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        raise ArtifactError(f"{directory}: cannot read the saved training state ({err.__class__.__name__}: "
                            f"{err})") from None
    weights = {k[2:]: v for k, v in tensors.items() if k.startswith("w/")}
    best = {k[2:]: v for k, v in tensors.items() if k.startswith("b/")} or None
    moments: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("m/"):
            _, kind, name = key.split("/", 2)
            moments.setdefault(name, {})[kind] = v
    if len(meta["history"]) != meta["epoch"]:
        raise ArtifactError(f"{meta_path}: epoch {meta['epoch']} but {len(meta['history'])} history rows")
    return RunState(meta["history"], weights, best, moments, int(meta["steps"]))
