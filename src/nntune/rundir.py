"""Run directories are owned: ``RUN_DIR/run.json`` records the command that made the directory (``train`` or
``tune``) and a fingerprint of its data (source, shape, dtype, task, class names and a SHA-256 of the arrays).

``nntune train --out`` into a tune run, or ``nntune tune --out`` into a train run, would replace the other command's
model and result: both are refused with a one-line error before anything is written. A tune study records the same
fingerprint (a study user attribute), so ``--resume`` or a worker on other data is refused too: its trials were
measured on the data the study started with. Directories written before run.json existed are recognised from their
``result.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from nntune import atomic
from nntune.data.sources import Dataset
from nntune.errors import ArtifactError, ConfigError

OWNER = "run.json"
COMMANDS = ("train", "tune")


def fingerprint(ds: Dataset, source: str | None = None) -> dict:
    """What identifies a run's data: where it came from, its shape, dtype, task, classes and a hash of x and y."""
    digest = hashlib.sha256()
    for t in (ds.x, ds.y):
        digest.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    return {"source": source or ds.name, "shape": list(ds.x.shape), "dtype": str(ds.x.dtype).removeprefix("torch."),
            "task": ds.task, "classes": list(ds.class_names), "sha256": digest.hexdigest()}


def describe(fp: dict) -> str:
    """``wine (178 x 13, 3 classes)``: a fingerprint in a few words."""
    shape = " x ".join(str(d) for d in fp["shape"])
    what = f"{len(fp['classes'])} classes" if fp["task"] == "classification" else "regression"
    return f"{fp['source']} ({shape}, {what})"


def owner(out: Path) -> dict | None:
    """The recorded owner of a run directory (``{"command": ..., "data": ...}``), None for a new or foreign one."""
    path = out / OWNER
    if path.is_file():
        try:
            info = json.loads(path.read_text())
            if not isinstance(info, dict) or info.get("command") not in COMMANDS:
                raise ValueError(f"no command among {', '.join(COMMANDS)}")
            return info
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{path}: corrupt run record ({err}); move the directory away or pass another "
                                "--out") from None
    result = out / "result.json"
    if result.is_file():  # a run written before run.json existed
        try:
            old = json.loads(result.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(old, dict):
            return {"command": "tune" if "study" in old else "train", "data": None}
    return None


def check(out: Path, command: str) -> None:
    """Refuse an ``--out`` that is a file, or a run directory that another command made; writes nothing."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"--out {out}: is a file, not a run directory; pass a folder")
    found = owner(out) if out.is_dir() else None
    if found is not None and found["command"] != command:
        kept = "its best/ model, result.json and report" if found["command"] == "train" else \
            "its tuned best/ model and result.json (the study's record)"
        raise ArtifactError(f"--out {out} holds an `nntune {found['command']}` run; `nntune {command}` would replace "
                            f"{kept}: pass another --out")


def record(out: Path, command: str, fp: dict) -> None:
    """Write ``RUN_DIR/run.json`` (atomically)."""
    atomic.write_text(out / OWNER, json.dumps({"command": command, "data": fp}, indent=2))


STUDY_ADVICE = "pass the same data, or another --out or --study-name for a new study"


def same_data(recorded: dict | None, fp: dict, what: str, advice: str = STUDY_ADVICE) -> None:
    """Refuse to add to ``what`` (a study, a run) measured on other data; ``recorded`` None (older runs) passes."""
    if not recorded or recorded.get("sha256") == fp["sha256"]:
        return
    differs = next((k for k in ("source", "shape", "task", "classes", "dtype") if recorded.get(k) != fp.get(k)),
                   "values")
    raise ConfigError(f"{what} was measured on {describe(recorded)}; this run's data is {describe(fp)} "
                      f"(different {differs}): {advice}")
