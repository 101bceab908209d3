"""How well `nntune tune --timeout T` keeps its time budget: runs it N times on an idle machine and N times beside a
CPU hog (one busy-looping process per `--hogs`), and prints JSON with each run's `fraction_used` (from result.json:
the search, finalists, final fit and report), its wall time as a process (interpreter start-up included) and what
a deadline cut. Target: fraction_used <= 1.02, or at most 5 s over the budget.

    python bench/budget.py --dataset digits --timeout 30s --runs 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _hog(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def run_once(dataset: str, timeout: str, out: Path) -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "nntune", "tune", "--dataset", dataset, "--timeout", timeout,
                           "--quiet", "--out", str(out)], capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result = json.loads((out / "result.json").read_text())
    b = result["budget"]
    return {"fraction_used": b["fraction_used"], "seconds": b["seconds"], "process_wall": round(wall, 2),
            "search_seconds": b["search_seconds"], "report_seconds": b.get("report_seconds"),
            "trials": result["trials"], "final_mode": result["final"]["mode"],
            "finalists_skipped": (result.get("finalists") or {}).get("skipped"), "cut": b["cut"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--timeout", default="30s")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hogs", type=int, default=1, help="busy processes beside the busy-machine runs (0: idle only)")
    args = ap.parse_args()
    report = {"machine": f"{platform.node()} ({multiprocessing.cpu_count()} cores, {platform.processor() or '?'})",
              "dataset": args.dataset, "timeout": args.timeout, "conditions": {}}
    for condition, hogs in (("idle", 0), (f"beside {args.hogs} CPU hog(s)", args.hogs)):
        if condition != "idle" and hogs == 0:
            continue
        stop = multiprocessing.Event()
        workers = [multiprocessing.Process(target=_hog, args=(stop,), daemon=True) for _ in range(hogs)]
        for w in workers:
            w.start()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                runs = [run_once(args.dataset, args.timeout, Path(tmp) / f"run{i}") for i in range(args.runs)]
        finally:
            stop.set()
            for w in workers:
                w.join()
        used = [r["fraction_used"] for r in runs if "fraction_used" in r]
        report["conditions"][condition] = {
            "runs": runs, "fraction_used_max": max(used, default=None),
            "fraction_used_mean": round(statistics.fmean(used), 3) if used else None,
            "process_wall_max": max((r["process_wall"] for r in runs if "process_wall" in r), default=None)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
