"""The README runs: every ``nntune`` command of its shell blocks, in order, on tiny budgets, must succeed, and then
every Python block, in one namespace, with its budgets shrunk the same way.

Commands are taken from the README itself (so the page cannot drift from the CLI), with their budgets shrunk
(trials, time, epochs, seeds) and the files they name created first: ``my.csv`` (a table with a category and gaps),
``new.csv``, ``new_images/``, ``my_digits/``, and ``run.yaml`` and ``space.yaml`` from the README's own YAML blocks.
A command that needs a server or another machine is listed in ``NOT_RUN`` with the reason; the test fails if the
README gains a command it would skip without one.
"""

import glob
import re
import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from nntune.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"

NOT_RUN = {  # the command's first words -> why the test cannot run it here
    "nntune dashboard": "a web server that runs until stopped (tests/test_cli.py checks it starts)",
    "nntune worker": "workers on other machines against a PostgreSQL server (tests/search/test_workers.py)",
    "--storage postgresql://user:pass@dbhost": "a PostgreSQL host on another machine (the workers' tests use a local one)",
    "--warm-start postgresql://db/": "a PostgreSQL host on another machine",
    "--ray local": "starts a Ray instance; tests/cluster/test_ray.py runs this form on 127.0.0.1 only",
}
# --timeout 5s: at 3 s (a third kept back for the finishing steps) the CSV command's one trial, with --trials 1 too,
# did not finish within its 2 s on a loaded 2-core run of the suite (2026-12-06)
SHRINK = {"--trials": "1", "--timeout": "5s", "--evidence-budget": "3s", "--seeds": "2", "--epochs": "1",
          "--strength": "0.8"}


PY_SHRINK = [(r"\btrials=\d+", "trials=1"), (r"\btimeout=\d+", "timeout=3"), (r"\bepochs=\d+", "epochs=1"),
             (r"\bseeds=\d+", "seeds=2"), (r"\bbudget=\d+", "budget=3"), (r"\bcv=\d+", "cv=2"),
             (r'"search.trials": \d+', '"search.trials": 1, "search.epochs": 1, "search.finalists": 0'),
             (r'"train.epochs": \d+', '"train.epochs": 1')]


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line number, argv) of every ``nntune`` command in the README's ``bash`` blocks (continuations joined,
    comments dropped)."""
    lines, commands, block, pending = README.read_text().splitlines(), [], False, ""
    for number, line in enumerate(lines, start=1):
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        argv, pending = shlex.split(pending, comments=True), ""
        if argv and argv[0] == "nntune":
            commands.append((number, argv))
    return commands


def python_blocks() -> list[str]:
    """The README's Python blocks with their budgets shrunk (``PY_SHRINK``)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    for pattern, small in PY_SHRINK:
        blocks = [re.sub(pattern, small, b) for b in blocks]
    return blocks


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.DOTALL)


def skipped_because(argv: list[str]) -> str | None:
    text = " ".join(argv)
    return next((why for words, why in NOT_RUN.items() if words in text), None)


def shrunk(argv: list[str]) -> list[str]:
    """The command on a tiny budget: trials, time, seeds and epochs cut; a tune's trials trained 1 epoch, its
    evidence given 3 s; a Pareto point the README names by number replaced by the first one this search wrote."""
    out = [SHRINK.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
    for i, a in enumerate(out):
        if re.search(r"trial_\d+\.yaml$", a) and not Path(a).exists():
            out[i] = min(glob.glob(str(Path(a).parent / "trial_*.yaml")))
    if out[1] == "tune" and "--trial-epochs" not in out:
        out += ["--trial-epochs", "1", "--finalists", "0"]
    if "--evidence" in out and "--evidence-budget" not in out:
        out += ["--evidence-budget", "3s"]
    if out[1] in ("tune", "train") and "--epochs" not in out and "--config" not in out:
        out += ["--epochs", "1"]
    if out[1] in ("tune", "train", "explain"):
        out += ["--quiet"]
    return out[1:]


def _files(root: Path) -> None:
    """The inputs the README's commands name, made small."""
    rng = np.random.default_rng(0)
    n = 150
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(10, 3, n).round(2)
    label = np.where((color == "red") | (size > 12), "yes", "no")
    rows = [f"{'' if i % 11 == 0 else s},{c},{rng.normal():.3f},{lab}" for i, (s, c, lab) in
            enumerate(zip(size, color, label))]
    (root / "my.csv").write_text("size,color,noise,label\n" + "\n".join(rows) + "\n")
    (root / "new.csv").write_text("noise,color,size\n0.1,red,9\n-0.3,purple,\n")
    from sklearn.datasets import load_digits

    d = load_digits()
    (root / "new_images").mkdir()
    for i in range(3):
        Image.fromarray((d.images[i] * 15).astype(np.uint8)).save(root / "new_images" / f"{i}.png")
    for cls in ("a", "b"):
        (root / "my_digits" / cls).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 255, (28, 28)) if cls == "a" else np.full((28, 28), 40 + i)
            Image.fromarray(pixels.astype(np.uint8)).save(root / "my_digits" / cls / f"{i}.png")
    run_yaml, space_yaml = yaml_blocks()[:2]
    (root / "run.yaml").write_text(run_yaml)
    (root / "space.yaml").write_text(space_yaml)


def test_the_readme_parses_into_the_commands_it_shows():
    commands = readme_commands()
    assert len(commands) >= 30 and all(argv[0] == "nntune" for _, argv in commands)
    subcommands = {argv[1] for _, argv in commands}
    assert {"tune", "train", "predict", "export", "explain", "summary", "report", "lr-find", "augment"} <= subcommands
    assert "data" in yaml_blocks()[0] and "model.family" in yaml_blocks()[1]


def test_every_readme_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _files(tmp_path)
    ran, skipped = [], set()
    for line, argv in readme_commands():
        why = skipped_because(argv)
        if why:
            skipped.add(next(words for words in NOT_RUN if words in " ".join(argv)))
            continue
        args = shrunk(argv)
        try:
            main(args)
        except SystemExit as exit_:
            assert not exit_.code, f"README line {line}: nntune {' '.join(args)} exited with {exit_.code}"
        ran.append(line)
    assert skipped == set(NOT_RUN), f"NOT_RUN lists commands the README no longer has: {set(NOT_RUN) - skipped}"
    assert len(ran) >= 30

    # the Python blocks, in order, in one namespace; the names they leave to the reader are given
    from sklearn.datasets import load_digits

    Path("model.onnx").write_bytes(Path("runs/digits/best/model.onnx").read_bytes())
    images = load_digits().images[:4].reshape(4, 1, 8, 8).astype("float32")
    namespace = {"raw_batch": images, "raw_images": images}
    for i, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README python block {i + 1}", "exec"), namespace)  # noqa: S102 - our README
        except Exception as err:
            raise AssertionError(f"README python block {i + 1} failed: {err!r}\n{block}") from err
