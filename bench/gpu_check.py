"""GPU check: the test suite, the engine benchmarks and the search/evidence runs on a CUDA machine, in one command.

Run it from the repository root of any CUDA machine with nntune's dependencies installed:
``python bench/gpu_check.py --out gpu_check`` (``--only engines`` or ``--only search`` runs one part, each within
about 8 minutes). Every step runs as subprocesses under a wall-clock cap; one JSON line per step (ok, seconds, device,
torch and CUDA versions, git commit, the step's figures) is appended to ``OUT/results.jsonl``, each step's output
goes to ``OUT/STEP.log``, and a failed step is recorded before the next one runs. Exit code 0 when every step ran
ok, 1 otherwise. ``--device cpu --quick`` runs every step on tiny sizes in about a minute: the smoke test
(``tests/test_gpu_check.py``).

Steps: engines = suite, population, trainer_overhead, train; search = search_quality, evidence_cost, tune_gpu.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
GROUPS = {"engines": ["suite", "population", "trainer_overhead", "train"],
          "search": ["search_quality", "evidence_cost", "tune_gpu"]}
STEPS = GROUPS["engines"] + GROUPS["search"]
SELF_TEST = "tests/test_gpu_check.py"  # never run by the suite step (it runs this script)
GUARD = "NNTUNE_GPU_CHECK"  # set in every subprocess; the self-test skips under it
EVIDENCE_COST_BUDGET = 15.0  # seconds per case and arm of evidence_cost

PROBE = r"""
import json, platform, torch
cuda = torch.cuda.is_available()
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "gpus": torch.cuda.device_count() if cuda else 0,
        "python": platform.python_version()}
if cuda:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported())
print(json.dumps(info))
"""

# choose_population_size for bench/population.py's cases, with every probe it measured (K, member-steps/s, memory)
CHOOSE_K = r"""
import importlib.util, json, sys, time
device, limit, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
spec = importlib.util.spec_from_file_location("bench_population", sys.argv[4])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
from nntune.training.pipeline import choose_population_size, prepare_data
from nntune.training.population import PopulationTrainer
probes, measure = [], PopulationTrainer.probe
def probe(self, *a, **k):
    rate, peak = measure(self, *a, **k)
    probes.append({"K": len(self.members), "member_steps_per_s": round(rate, 1), "peak_mib": round(peak / 2**20, 1)})
    return rate, peak
PopulationTrainer.probe = probe
for case in cases:
    cfg = bench.configs(case, 1, 1, device)[0]
    data = prepare_data(cfg)
    probes.clear()
    t0 = time.perf_counter()
    k = choose_population_size(cfg, data, limit=limit)
    print(json.dumps({"case": case, "chosen_K": k, "limit": limit, "probes": list(probes),
                      "seconds": round(time.perf_counter() - t0, 2)}), flush=True)
"""


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads(a: argparse.Namespace) -> int:
    """CPU threads per process: all cores, or one in quick mode (on a busy small machine, torch's threads spinning
    against another process make a tiny run ten times slower)."""
    return 1 if a.quick else cpu_count()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args], capture_output=True, text=True,
                           timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def json_values(text: str) -> list[Any]:
    """Every JSON object or array that starts a line of ``text`` (JSON lines and indented JSON alike)."""
    dec, out, pos = json.JSONDecoder(), [], 0
    for m in re.finditer(r"^[\[{]", text, re.M):
        if m.start() < pos:
            continue
        try:
            value, pos = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        out.append(value)
    return out


def one_json(text: str) -> Any:
    values = json_values(text)
    if not values:
        raise ValueError("no JSON in the output")
    return values[-1]


class Runner:
    """Runs one step's commands under the step's cap, logging them to OUT/STEP.log and collecting problems."""

    def __init__(self, step: str, cap: float, out: Path, tmp: Path, env: dict[str, str]):
        self.step, self.cap, self.log, self.tmp, self.env = step, cap, out / f"{step}.log", tmp, env
        self.started = time.monotonic()
        self.runs: list[dict] = []
        self.problems: list[str] = []
        self.timed_out = False
        self.log.write_text(f"# gpu_check step {step}, cap {cap:.0f} s, {datetime.datetime.now().isoformat()}\n")

    def left(self) -> float:
        return self.cap - (time.monotonic() - self.started)

    def run(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> dict | None:
        """One command; its record (rc, seconds, stdout), or None when it timed out or the step cap left no time."""
        return self.run_parallel([(name, argv, env)])[0]

    def run_parallel(self, cmds: list[tuple[str, list[str], dict[str, str] | None]]) -> list[dict | None]:
        if self.left() <= 1:
            self.problems.append(f"not run: {', '.join(c[0] for c in cmds)} (step cap of {self.cap:.0f} s reached)")
            self.timed_out = True
            return [None] * len(cmds)
        procs = []
        for name, argv, env in cmds:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            files = self.tmp / f"{self.step}.{safe}.out", self.tmp / f"{self.step}.{safe}.err"
            with files[0].open("w") as fo, files[1].open("w") as fe:
                p = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **(env or {})}, stdout=fo, stderr=fe,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
            procs.append((name, argv, p, files, time.monotonic()))
        ended: dict[int, float] = {}
        late: set[int] = set()
        try:
            while len(ended) < len(procs):
                for i, (_, _, p, _, _) in enumerate(procs):
                    if i not in ended and p.poll() is not None:
                        ended[i] = time.monotonic()
                if self.left() <= 0:
                    for i, (_, _, p, _, _) in enumerate(procs):
                        if i not in ended:
                            kill(p)
                            ended[i], late = time.monotonic(), late | {i}
                time.sleep(0.05)
        except BaseException:
            for _, _, p, _, _ in procs:
                kill(p)
            raise
        records: list[dict | None] = []
        for i, (name, argv, p, files, t0) in enumerate(procs):
            seconds, timed_out = round(ended[i] - t0, 1), i in late
            stdout, stderr = (f.read_text(errors="replace") for f in files)
            for f in files:
                f.unlink()
            with self.log.open("a") as log:
                log.write(f"\n=== {name}: {' '.join(argv)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n"
                          f"=== {name}: rc {p.returncode}{' (timed out)' if timed_out else ''} in {seconds} s\n")
            shown = ["-c", "<snippet>", *argv[3:]] if argv[1] == "-c" else argv[1:]
            rec = {"name": name, "cmd": " ".join(shown), "rc": p.returncode, "seconds": seconds}
            self.runs.append({**rec, **({"timed_out": True} if timed_out else {})})
            if timed_out:
                self.timed_out = True
                self.problems.append(f"{name}: timed out after {seconds} s (step cap {self.cap:.0f} s)")
                records.append(None)
            else:
                records.append({**rec, "stdout": stdout})
        return records

    def parsed(self, name: str, argv: list[str], parse: Callable[[str], Any]) -> Any:
        """Run a command and parse its stdout; None (and a problem recorded) when it failed."""
        rec = self.run(name, argv)
        if rec is None:
            return None
        if rec["rc"] != 0:
            self.problems.append(f"{name}: exit code {rec['rc']}")
            return None
        try:
            return parse(rec["stdout"])
        except Exception as err:  # noqa: BLE001 - any parse failure is the step's problem, recorded
            self.problems.append(f"{name}: could not read its output ({type(err).__name__}: {err})")
            return None


def kill(p: subprocess.Popen) -> None:
    if p.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------- steps: each fills `fig` and may add problems


def step_suite(r: Runner, a: argparse.Namespace, fig: dict) -> None:
    if a.quick:
        files = ["tests/test_config.py"]
    else:
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py"))
    files = [f for f in files if Path(f).as_posix() != SELF_TEST]
    shards = 1 if a.quick else max(1, min(len(files), a.suite_shards or min(4, cpu_count() // 4)))
    buckets: list[list[str]] = [[] for _ in range(shards)]
    weight = [0] * shards
    for f in sorted(files, key=lambda f: -(ROOT / f).stat().st_size):  # largest first, to the lightest shard
        i = weight.index(min(weight))
        buckets[i].append(f)
        weight[i] += (ROOT / f).stat().st_size
    env = {"OMP_NUM_THREADS": str(max(1, cpu_count() // shards))} if shards > 1 else None
    cmds = [(f"pytest-{i}", [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                             "--basetemp", str(r.tmp / f"pytest-{i}"), *b], env) for i, b in enumerate(buckets)]
    fig.update(files=len(files), shards=shards, passed=0, failed=0, errors=0, skipped=0, xfailed=0, xpassed=0,
               failures=[], skipped_reasons=[])
    for rec in r.run_parallel(cmds):
        if rec is None:
            continue
        text = rec["stdout"]
        summary = [ln for ln in text.splitlines() if re.search(r"\bin [\d.]+s\b", ln)]
        if not summary and rec["rc"] != 5:
            r.problems.append(f"{rec['name']}: no pytest summary (exit code {rec['rc']})")
        for n, what in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", summary[-1] if summary
                                  else ""):
            key = "errors" if what.startswith("error") else what
            fig[key] += int(n)
        fig["failures"] += [ln for ln in text.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
        fig["skipped_reasons"] += [ln for ln in text.splitlines() if ln.startswith("SKIPPED ")]
        if rec["rc"] not in (0, 5):
            r.problems.append(f"{rec['name']}: exit code {rec['rc']}")
    fig["failures"], fig["skipped_reasons"] = fig["failures"][:50], fig["skipped_reasons"][:30]
    if fig["failed"] or fig["errors"]:
        r.problems.append(f"{fig['failed']} failed, {fig['errors']} errors")


def step_population(r: Runner, a: argparse.Namespace, fig: dict) -> None:
    cases = ["mlp-digits"] if a.quick else ["mlp-digits", "cnn-mnist5k"]
    ks = ["1", "2"] if a.quick else ["1", "8", "32", "128"] if a.device == "cuda" else ["1", "8", "32"]
    extra = ["--epochs", "1", "--max-sequential", "1"] if a.quick else []
    rows = r.parsed("bench", [sys.executable, str(BENCH / "population.py"), "--device", a.device, "--cases", *cases,
                              "--k", *ks, *extra], json_values)
    if rows is not None:
        fig["rows"] = rows
        fig["rates"] = {c: {str(x["K"]): {"sequential": x["sequential_model_epochs_per_s"],
                                         "population": x["population_model_epochs_per_s"], "speedup": x["speedup"]}
                            for x in rows if x["case"] == c} for c in cases}
        missing = [f"{c} K={k}" for c in cases for k in ks if k not in fig["rates"][c]]
        if missing:
            r.problems.append(f"bench: no row for {', '.join(missing)}")
    limit = "4" if a.quick else "128"
    chosen = r.parsed("choose_population_size", [sys.executable, "-c", CHOOSE_K, a.device, limit, ",".join(cases),
                                                 str(BENCH / "population.py")], json_values)
    if chosen is not None:
        fig["chosen_K"] = {x["case"]: x["chosen_K"] for x in chosen}
        fig["probes"] = {x["case"]: x["probes"] for x in chosen}
        if set(fig["chosen_K"]) != set(cases):
            r.problems.append("choose_population_size: not every case answered")


def step_trainer_overhead(r: Runner, a: argparse.Namespace, fig: dict) -> None:
    base = [sys.executable, str(BENCH / "trainer_overhead.py"), "--threads", str(threads(a))]
    size = ["--epochs", "1", "--repeats", "1", "--batch-size", "256"] if a.quick else \
        ["--repeats", "2"] if a.device == "cuda" else []
    variants = {"auto": ["--device", a.device, "--precision", "auto"]}
    if not a.quick:
        variants["fp32"] = ["--device", a.device, "--precision", "fp32"]
        if a.device == "cuda":
            variants["cpu"] = ["--device", "cpu", "--precision", "auto"]
        variants["compile"] = ["--device", a.device, "--precision", "auto", "--compile"]
    fig["variants"] = {}
    for name, flags in variants.items():
        res = r.parsed(name, base + flags + size, one_json)
        if res is None:
            continue
        keep = lambda k: k in ("epochs", "samples_per_s") or k.startswith(("ratio", "speedup"))  # noqa: E731
        fig["variants"][name] = {"device": res["device"], "gpu": res["gpu"], "precision": res["precision"],
                                 "threads": res["threads"],
                                 "cases": {c["case"]: {k: v for k, v in c.items() if keep(k)} for c in res["cases"]}}


def step_train(r: Runner, a: argparse.Namespace, fig: dict) -> None:
    cases = [("digits", "mlp")] if a.quick else [("digits", "mlp"), ("mnist5k", "cnn")]
    devices = [a.device] + (["cpu"] if a.device != "cpu" else [])
    fig["runs"] = {}
    for ds, fam in cases:
        for dev in devices:
            name = f"{ds}-{fam}-{dev}"
            argv = [sys.executable, "-m", "nntune", "train", "--dataset", ds, "--family", fam, "--device", dev,
                    "--quiet", "--json", "-", "--out", str(r.tmp / f"train-{name}")]
            res = r.parsed(name, argv + (["--epochs", "1"] if a.quick else []), one_json)
            if res is None:
                continue
            fig["runs"][name] = {"test_accuracy": round(res["test"]["accuracy"], 4),
                                 "val_accuracy": round(res["val"]["accuracy"], 4), "seconds": round(res["seconds"], 2),
                                 "wall_s": r.runs[-1]["seconds"], "epochs": len(res["history"]),
                                 "best_epoch": res["best_epoch"], "stop_reason": res["stop_reason"]}
        runs = fig["runs"]
        if a.device != "cpu" and f"{ds}-{fam}-cpu" in runs and f"{ds}-{fam}-{a.device}" in runs:
            fig.setdefault("speedup_vs_cpu", {})[f"{ds}-{fam}"] = round(
                runs[f"{ds}-{fam}-cpu"]["seconds"] / max(1e-9, runs[f"{ds}-{fam}-{a.device}"]["seconds"]), 2)


def step_search_quality(r: Runner, a: argparse.Namespace, fig: dict) -> None:
    datasets = ["wine"] if a.quick else ["digits", "mnist5k", "signals"]
    budget = 5.0 if a.quick else a.search_budget  # 2 s left a loaded CPU without a finished trial 1 time in 4
    argv = [sys.executable, str(BENCH / "search_quality.py"), "--arms", "nntune,nntune_pop1", "--datasets",
            ",".join(datasets), "--budget", str(budget), "--seeds", "0", "--threads", str(threads(a))]
    values = r.parsed("bench", argv, json_values)
    if values is None:
        return
    fig["budget_s"] = budget
    fig["rows"] = {}
    for row in (v for v in values if isinstance(v, dict) and "arm" in v):
        trials = row["trials"]
        finished = trials.get("complete", 0) + trials.get("pruned", 0) if isinstance(trials, dict) else trials
        fig["rows"][f"{row['dataset']}/{row['arm']}"] = {
            "test_accuracy": round(row["test_accuracy"], 4), "trials": trials, "finished_trials": finished,
            "seconds": row["seconds"], "trials_per_min": round(60 * finished / max(1e-9, row["seconds"]), 1),
            "population_sizes": row.get("population_sizes"), "family": row.get("family"),
            "stopped_by": row.get("stopped_by")}
    fig["trials_per_min_ratio"] = {}
    for ds in datasets:  # the GPU target: nntune >= 10x the trials per minute of --population 1
        pop, one = fig["rows"].get(f"{ds}/nntune"), fig["rows"].get(f"{ds}/nntune_pop1")
        if pop and one and one["trials_per_min"] > 0:
            fig["trials_per_min_ratio"][ds] = round(pop["trials_per_min"] / one["trials_per_min"], 2)
    missing = [f"{ds}/{arm}" for ds in datasets for arm in ("nntune", "nntune_pop1")
               if f"{ds}/{arm}" not in fig["rows"]]
    if missing:
        r.problems.append(f"bench: no row for {', '.join(missing)}")


def step_evidence_cost(r: Runner, a: argparse.Namespace, fig: dict) -> None:
    cases = ["mlp-digits"] if a.quick else ["mlp-digits", "cnn-digits"]
    size = ["--epochs", "2", "--seeds", "2", "--budget", "3"] if a.quick else ["--budget", str(EVIDENCE_COST_BUDGET)]
    rows = r.parsed("bench", [sys.executable, str(BENCH / "evidence_cost.py"), "--cases", ",".join(cases), "--device",
                              a.device, *size], json_values)
    if rows is None:
        return
    fig["rows"] = {f"{x['case']}/{x['arm']}": {k: x[k] for k in ("runs", "configurations", "skipped", "seconds",
                                                                  "seconds_per_run", "population_size", "epochs",
                                                                  "seeds", "budget")} for x in rows}
    fig["single_vs_population_seconds_per_run"] = {}
    for c in cases:
        pop, one = fig["rows"].get(f"{c}/population"), fig["rows"].get(f"{c}/single")
        if pop and one and pop["seconds_per_run"] > 0:
            fig["single_vs_population_seconds_per_run"][c] = round(one["seconds_per_run"] / pop["seconds_per_run"], 2)
    idle = [name for name, row in fig["rows"].items() if not row["runs"]]
    if idle:
        r.problems.append(f"bench: no run finished in the budget for {', '.join(idle)}")
    missing = [f"{c}/{arm}" for c in cases for arm in ("population", "single") if f"{c}/{arm}" not in fig["rows"]]
    if missing:
        r.problems.append(f"bench: no row for {', '.join(missing)}")


def step_tune_gpu(r: Runner, a: argparse.Namespace, fig: dict) -> None:
    # quick: --timeout counts the process's start-up too (a few seconds on a busy CPU)
    dataset, timeout, evidence = ("digits", 12.0, 3.0) if a.quick else ("mnist5k", a.tune_budget, a.tune_budget)
    out = r.tmp / "tune"
    tiny = ["--epochs", "2", "--trial-epochs", "2", "--seeds", "2"] if a.quick else []
    res = r.parsed("tune", [sys.executable, "-m", "nntune", "tune", "--dataset", dataset, "--device", a.device,
                            "--timeout", f"{timeout:g}s", "--evidence", "--evidence-budget", f"{evidence:g}s",
                            *tiny, "--quiet", "--json", "-", "--out", str(out)], one_json)
    if res is None:
        return
    fig.update(dataset=dataset, timeout_s=timeout, evidence_budget_s=evidence, trials=res["trials"],
               test_accuracy=round(res["test"]["accuracy"], 4), seconds=round(res["seconds"], 1),
               budget=res["budget"], population_sizes=res["study"].get("population_sizes"),
               family=res["final"]["config"]["model"]["family"])
    fin = res.get("finalists") or {}
    fig["finalists"] = ({"n": len(fin["finalists"]), "chosen": fin["chosen"], "seconds": fin.get("seconds"),
                         "means": [x["mean"] for x in fin["finalists"]]} if "finalists" in fin else
                        {"n": 0, "skipped": fin.get("skipped")})
    ev = res.get("evidence") or {}
    questions = {q: v for q, v in ev.items() if q != "setup" and isinstance(v, dict)}
    measured = sorted(q for q, v in questions.items() if v.get("variants"))
    fig["evidence"] = {"questions_measured": measured, "questions_not_measured": sorted(set(questions) - set(measured)),
                       "variants_measured": sum(len(v.get("variants", [])) for v in questions.values()),
                       "variants_skipped": sum(len(v.get("skipped", [])) for v in questions.values()),
                       **{k: ev.get("setup", {}).get(k) for k in ("runs", "seconds", "variants", "skipped")}}
    if not questions:
        r.problems.append("tune: no evidence in the result")
    db = out / "study.db"
    states: dict[str, int] = {}
    if db.exists():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            states = dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
        finally:
            con.close()
    elif (out / "trials.csv").exists():
        with (out / "trials.csv").open() as fh:
            for row in csv.DictReader(fh):
                states[row["state"]] = states.get(row["state"], 0) + 1
    fig["states"] = states
    if not states:
        r.problems.append("tune: no trial states found (study.db / trials.csv)")
    if states.get("RUNNING"):
        r.problems.append(f"tune: {states['RUNNING']} trial(s) left RUNNING")


STEP_FUNCS: dict[str, Callable[[Runner, argparse.Namespace, dict], None]] = {
    "suite": step_suite, "population": step_population, "trainer_overhead": step_trainer_overhead,
    "train": step_train, "search_quality": step_search_quality, "evidence_cost": step_evidence_cost,
    "tune_gpu": step_tune_gpu}


EPILOG = """steps (cap in seconds; each part's caps sum to under 8 minutes at the default budgets):
  suite             pytest over tests/, in parallel shards on 8+ cores                        180
  population        bench/population.py K=1,8,32,128, and choose_population_size's K           100
  trainer_overhead  bench/trainer_overhead.py --precision auto, fp32, on the CPU, --compile    100
  train             nntune train: digits (MLP), mnist5k (CNN), on the GPU and on the CPU       90
  search_quality    bench/search_quality.py nntune, nntune_pop1 on digits, mnist5k, signals    6 x budget + 30
  evidence_cost     bench/evidence_cost.py mlp-digits, cnn-digits: population vs single        90
  tune_gpu          nntune tune --dataset mnist5k --evidence                                   2 x budget + 30
"""


def caps(a: argparse.Namespace) -> dict[str, float]:
    """Each step's wall-clock cap in seconds; each part's caps sum to at most 8 minutes at the default budgets."""
    if a.quick:
        c = dict.fromkeys(STEPS, 120.0)
    else:
        c = {"suite": 180.0, "population": 100.0, "trainer_overhead": 100.0, "train": 90.0,
             "search_quality": 6 * a.search_budget + 30, "evidence_cost": 4 * EVIDENCE_COST_BUDGET + 30,
             "tune_gpu": 2 * a.tune_budget + 30}
    if a.step_timeout:
        c = dict.fromkeys(c, float(a.step_timeout))
    return c


def selected(only: str | None) -> list[str]:
    if not only:
        return list(STEPS)
    names: list[str] = []
    for part in (p.strip() for p in only.split(",") if p.strip()):
        if part in GROUPS:
            names += GROUPS[part]
        elif part in STEPS:
            names.append(part)
        else:
            raise ValueError(f"unknown step or group {part!r} (steps: {', '.join(STEPS)}; groups: "
                             f"{', '.join(GROUPS)})")
    return [s for s in STEPS if s in names]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="device under test (default cuda)")
    p.add_argument("--quick", action="store_true", help="every step on tiny sizes (the smoke test, about a minute)")
    p.add_argument("--out", type=Path, default=Path("gpu_check"),
                   help="results.jsonl and STEP.log go here (default gpu_check)")
    p.add_argument("--only", help="comma-separated steps and groups: engines, search, " + ", ".join(STEPS))
    p.add_argument("--step-timeout", type=float, help="wall-clock cap of every step in seconds (default per step)")
    p.add_argument("--search-budget", type=float, default=32.0,
                   help="search_quality: seconds per dataset and arm (default 32; 6 runs)")
    p.add_argument("--tune-budget", type=float, default=60.0,
                   help="tune_gpu: --timeout and --evidence-budget in seconds (default 60 each)")
    p.add_argument("--suite-shards", type=int, help="suite: parallel pytest processes (default: CPU cores / 4, 1-4)")
    a = p.parse_args()
    try:
        steps = selected(a.only)
    except ValueError as err:
        p.error(str(err))
    out = a.out if a.out.is_absolute() else Path.cwd() / a.out
    env = {**os.environ, GUARD: "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src")] + ([os.environ["PYTHONPATH"]]
                                                                 if os.environ.get("PYTHONPATH") else []))}
    if a.quick:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # every step, the suite included, sees no GPU
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"gpu_check: cannot import torch with {sys.executable}:\n{probe.stderr[-2000:]}", file=sys.stderr)
        return 2
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    if a.device == "cuda" and not info["cuda_available"]:
        print("gpu_check: --device cuda but torch sees no CUDA GPU (use --device cpu --quick for the smoke test)",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    common = {"device": a.device, "device_name": info.get("gpu") if a.device == "cuda" else cpu_model(),
              "cpu": cpu_model(), "cpu_cores": cpu_count(), "torch": info["torch"], "cuda": info["cuda"],
              "cudnn": info.get("cudnn"), "gpu_memory_gib": info.get("gpu_memory_gib"),
              "capability": info.get("capability"), "bf16": info.get("bf16"), "python": info["python"],
              "git_commit": commit, "git_dirty": bool(status) if status is not None else None, "quick": a.quick,
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    cap = caps(a)
    print(f"gpu_check: {', '.join(steps)} on {common['device_name']} (torch {info['torch']}, CUDA {info['cuda']}), "
          f"writing {out}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    failed = []
    try:
        for step in steps:
            runner = Runner(step, cap[step], out, tmp, env)
            fig: dict = {}
            error = None
            try:
                STEP_FUNCS[step](runner, a, fig)
            except Exception as err:  # noqa: BLE001 - a broken step is recorded, the next one runs
                error = f"{type(err).__name__}: {err}"
                runner.problems.append(f"gpu_check: {error}")
            ok = not runner.problems
            line = {"step": step, "ok": ok, "seconds": round(time.monotonic() - runner.started, 1),
                    "cap_s": cap[step], **common, "figures": fig, "runs": runner.runs}
            if not ok:
                text = runner.log.read_text(errors="replace")
                line.update(timed_out=runner.timed_out, problems=runner.problems, log_tail=text[-4000:])
                failed.append(step)
            with (out / "results.jsonl").open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            print(f"[{step}] {'ok' if ok else 'FAILED'} in {line['seconds']} s"
                  + ("" if ok else f": {'; '.join(runner.problems)[:300]} (see {runner.log})"), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"gpu_check: {len(steps) - len(failed)}/{len(steps)} steps ok"
          + (f", failed: {', '.join(failed)}" if failed else "") + f"; results in {out / 'results.jsonl'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
