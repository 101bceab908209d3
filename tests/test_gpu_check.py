"""bench/gpu_check.py proves itself on any machine: ``--device cpu --quick`` runs every step on tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["suite", "population", "trainer_overhead", "train", "search_quality", "evidence_cost", "tune_gpu"]


@pytest.mark.skipif(bool(os.environ.get("NNTUNE_GPU_CHECK")), reason="running inside bench/gpu_check.py")
def test_gpu_check_quick_on_cpu(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [json.loads(ln) for ln in (tmp_path / "results.jsonl").read_text().splitlines()] \
        if (tmp_path / "results.jsonl").exists() else []
    by_step = {ln["step"]: ln for ln in lines}
    failed = {s: ln.get("problems") for s, ln in by_step.items() if not ln["ok"]}
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}\nfailed steps: {failed}"
    assert list(by_step) == STEPS
    for step, ln in by_step.items():
        assert ln["ok"] is True, step
        assert ln["seconds"] > 0 and ln["device"] == "cpu" and ln["device_name"] and ln["torch"], step
        assert "cuda" in ln and "git_commit" in ln, step
        assert (tmp_path / f"{step}.log").stat().st_size > 0, step

    suite = by_step["suite"]["figures"]
    assert suite["passed"] > 0 and suite["failed"] == 0 and suite["errors"] == 0
    pop = by_step["population"]["figures"]
    assert set(pop["rates"]["mlp-digits"]) == {"1", "2"}
    assert all(v["sequential"] > 0 and v["population"] > 0 and v["speedup"] > 0
               for v in pop["rates"]["mlp-digits"].values())
    assert pop["chosen_K"]["mlp-digits"] >= 1 and pop["probes"]["mlp-digits"][0]["K"] == 1
    cases = by_step["trainer_overhead"]["figures"]["variants"]["auto"]["cases"]
    assert set(cases) == {"cnn/mnist5k", "mlp/digits"}
    assert all(c["samples_per_s"]["nntune"] > 0 and c["ratio_nntune_vs_minimal"] > 0 for c in cases.values())
    train = by_step["train"]["figures"]["runs"]["digits-mlp-cpu"]
    assert 0 < train["test_accuracy"] <= 1 and train["seconds"] > 0 and train["epochs"] == 1
    rows = by_step["search_quality"]["figures"]["rows"]
    assert set(rows) == {"wine/nntune", "wine/nntune_pop1"}
    assert all(row["finished_trials"] >= 1 and row["trials_per_min"] > 0 and 0 < row["test_accuracy"] <= 1
               and "population_sizes" in row for row in rows.values())
    assert "wine" in by_step["search_quality"]["figures"]["trials_per_min_ratio"]
    ev = by_step["evidence_cost"]["figures"]
    assert set(ev["rows"]) == {"mlp-digits/population", "mlp-digits/single"}
    assert all(row["runs"] >= 1 and row["seconds"] > 0 for row in ev["rows"].values())
    tune = by_step["tune_gpu"]["figures"]
    assert tune["trials"]["complete"] >= 1 and "RUNNING" not in tune["states"] and tune["states"]
    assert 0 < tune["test_accuracy"] <= 1 and "n" in tune["finalists"]
    assert tune["evidence"]["questions_measured"] + tune["evidence"]["questions_not_measured"]
