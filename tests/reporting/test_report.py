import json
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from nntune.cli import main
from nntune.config import EVIDENCE_QUESTIONS, RunConfig, apply_overrides
from nntune.errors import ArtifactError
from nntune.reporting.questions import SECTIONS
from nntune.reporting.report import QUESTIONS, build_report
from nntune.search.study import tune
from nntune.training.pipeline import train


@pytest.fixture(scope="module")
def tune_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned")
    tune(apply_overrides(RunConfig(), {"search.trials": 5, "search.epochs": 4, "train.lr_auto": True,
                                       "train.epochs": 6}), out)
    return out


def _check_self_contained(page: str) -> None:
    imgs = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert imgs and all(src.startswith("data:image/png;base64,") for src in imgs)
    refs = re.findall(r"(?:src|href)=\"([^\"]*)\"", page)
    assert all(r.startswith("data:") or r.startswith("#") for r in refs), [r for r in refs if not r.startswith("#")][:3]
    assert "<link" not in page and "<script" not in page and "url(" not in page


def test_tune_report_has_ten_sections_and_embeds_everything(tune_dir):
    path = build_report(tune_dir)
    page = path.read_text()
    for i, question in enumerate(QUESTIONS, start=1):
        assert f"<section id='q{i}'><h2>{i}. {question}" in page.replace("&#x27;", "'")
    _check_self_contained(page)
    for evidence in ("q5_lr_find", "q10_learning_curves", "q6_activation", "optimization_history"):
        assert (tune_dir / "figures" / f"{evidence}.png").exists()
    assert "Test split, evaluated once" in page and "Range test suggestions" in page
    result = json.loads((tune_dir / "result.json").read_text())
    assert "The search was stopped by <b>trials</b>" in page
    assert "Finalists, each re-trained with other seeds" in page
    assert "default configurations ran first" in page and "mlp (trial 0)" in page and "cnn (trial 1)" in page
    for row in result["finalists"]["finalists"]:
        assert f"<td>{row['trial']}</td>" in page


def test_sections_are_keyed_by_the_evidence_questions():
    assert tuple(SECTIONS) == EVIDENCE_QUESTIONS  # one section per question, in the evidence's order


def test_train_report(tmp_path):
    train(apply_overrides(RunConfig(), {"train.epochs": 3, "preprocess.augment": "digits"}), tmp_path)
    page = build_report(tmp_path).read_text()
    assert page.count("<section id='q") == 10 and "single training run" in page
    _check_self_contained(page)
    assert "Augmentation: <b>digits" in page


def test_report_command_and_missing_run(capsys, tune_dir, tmp_path):
    main(["report", str(tune_dir), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["report"].endswith("report.html") and len(data["figures"]) >= 10
    with pytest.raises(ArtifactError, match="result.json: missing"):
        build_report(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study(tune_dir):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nntune", "dashboard", str(tune_dir), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                continue
        assert body is not None and [s["study_name"] for s in body["study_summaries"]] == ["nntune"]
    finally:
        proc.kill()
        proc.wait()


def test_numeric_axes_read_cleanly():
    """Depth gets integer ticks; a log width axis labels plain major ticks only (minor labels such as 3×10¹ and 4×10¹
    ran into each other)."""
    from nntune.reporting.plots import vs_numeric

    fig = vs_numeric({"mlp: hidden_layers": ([1, 2, 3, 2], [0.9, 0.92, 0.91, 0.95])}, "depth", "val accuracy")
    fig.canvas.draw()
    assert all(t.get_text().lstrip("−-").isdigit() for t in fig.axes[0].get_xticklabels())
    fig = vs_numeric({"mlp: units": ([30, 40, 64, 128, 300], [0.9] * 5)}, "width", "val accuracy", log=True)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    assert {"50", "100", "200"} <= {t.get_text() for t in ax.get_xticklabels()}


def test_the_schedule_figure_covers_the_final_models_epochs_and_one_diagnostics_table(tmp_path):
    result = train(apply_overrides(RunConfig(), {"train.epochs": 30, "train.early_stopping.patience": 1,
                                                 "train.schedule.name": "cosine"}), tmp_path)
    trained = len(result["history"])
    assert trained < 30  # early stopping ended it before the schedule's horizon
    page = build_report(tmp_path).read_text()
    assert f"cosine over 30 epochs: the final model&#x27;s {trained} epochs" in page or \
        f"cosine over 30 epochs: the final model's {trained} epochs" in page
    assert page.count("<th>finding</th>") <= 1  # the findings table is the Diagnostics section's alone
