"""Command start-up time: how long ``nntune --help``, ``nntune summary`` and a bare ``import nntune`` take as fresh
processes, and which top-level modules the import pulls in. Prints JSON. Targets (issue 26): ``--help`` <= 1 s and
``summary`` <= 3 s on the 2-core development VM.

    python bench/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import nntune": [sys.executable, "-c", "import nntune"],
    "nntune --help": [sys.executable, "-m", "nntune", "--help"],
    "nntune summary": [sys.executable, "-m", "nntune", "summary", "--input-shape", "1,8,8", "--outputs", "10"],
}
# what the heaviest imports cost on their own, to see where the start-up goes
HEAVY = ("torch", "optuna", "sklearn", "pandas", "matplotlib", "kornia", "rich", "pydantic", "click")


def wall(cmd: list[str], repeats: int) -> dict:
    """Median and min wall seconds of ``repeats`` fresh runs of ``cmd`` (after one warm-up for the file cache)."""
    subprocess.run(cmd, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}


def loaded_top_modules() -> list[str]:
    """The third-party top-level packages ``import nntune`` loads."""
    code = ("import sys; before = set(sys.modules); import nntune; "
            "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    return [m for m in out if m in HEAVY]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    result = {"benchmark": "startup", "machine": platform.machine(), "python": platform.python_version(),
              "commands": {name: wall(cmd, args.repeats) for name, cmd in COMMANDS.items()},
              "imports_alone": {m: wall([sys.executable, "-c", f"import {m}"], args.repeats) for m in HEAVY},
              "import_nntune_loads": loaded_top_modules()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
