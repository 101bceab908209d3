"""Run directories are owned: another command, or other data, is refused before anything in the directory changes."""

import shutil

import pytest
import torch

from nntune import rundir
from nntune.cli import main
from nntune.data.sources import load_dataset

TUNE = ["tune", "--trials", "2", "--trial-epochs", "2", "--finalists", "0", "--quiet", "--set",
        "search.space={model.family: mlp}"]


def _snapshot(root):
    """Every file under ``root`` with its bytes: what must stay byte-identical."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fails(capsys, args, words):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert words in err, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tune run on wine and a finished train run on wine."""
    root = tmp_path_factory.mktemp("runs")
    main([*TUNE, "--dataset", "wine", "--out", str(root / "tune")])
    main(["train", "--dataset", "wine", "--epochs", "2", "--quiet", "--out", str(root / "train")])
    return root


@pytest.fixture
def copies(runs, tmp_path):
    for name in ("tune", "train"):
        shutil.copytree(runs / name, tmp_path / name)
    return tmp_path


def test_train_into_a_tune_run_is_refused_and_changes_nothing(capsys, copies):
    before = _snapshot(copies / "tune")
    _fails(capsys, ["train", "--dataset", "wine", "--epochs", "1", "--quiet", "--out", str(copies / "tune")],
           "holds an `nntune tune` run")
    assert _snapshot(copies / "tune") == before


def test_tune_resume_into_a_train_run_is_refused_and_changes_nothing(capsys, copies):
    before = _snapshot(copies / "train")
    _fails(capsys, [*TUNE, "--dataset", "wine", "--resume", "--out", str(copies / "train")],
           "holds an `nntune train` run")
    assert _snapshot(copies / "train") == before


def test_resume_on_other_data_is_refused_and_changes_nothing(capsys, copies):
    before = _snapshot(copies / "tune")
    _fails(capsys, [*TUNE, "--dataset", "breast_cancer", "--resume", "--out", str(copies / "tune")],
           "was measured on wine (178 x 13, 3 classes); this run's data is breast_cancer (569 x 30, 2 classes)")
    assert _snapshot(copies / "tune") == before


def test_a_tune_refused_for_a_missing_resume_has_written_nothing(capsys, copies):
    before = _snapshot(copies / "tune")
    _fails(capsys, [*TUNE, "--dataset", "wine", "--lr", "0.05", "--out", str(copies / "tune")], "pass --resume")
    assert _snapshot(copies / "tune") == before  # config.yaml too


def test_the_run_record_names_the_command_and_the_data(runs):
    tuned, trained = rundir.owner(runs / "tune"), rundir.owner(runs / "train")
    assert tuned["command"] == "tune" and trained["command"] == "train"
    assert tuned["data"] == trained["data"] == rundir.fingerprint(load_dataset("wine"), "wine")
    assert tuned["data"]["shape"] == [178, 13] and tuned["data"]["classes"] == ["class_0", "class_1", "class_2"]


def test_a_run_from_before_run_json_is_recognised_by_its_result(copies):
    (copies / "tune" / "run.json").unlink()
    assert rundir.owner(copies / "tune") == {"command": "tune", "data": None}
    with pytest.raises(Exception, match="holds an `nntune tune` run"):
        rundir.check(copies / "tune", "train")


def test_the_fingerprint_changes_with_any_value():
    ds = load_dataset("wine")
    fp = rundir.fingerprint(ds)
    ds.x = ds.x.clone()
    ds.x[17, 3] += torch.finfo(torch.float32).eps * ds.x[17, 3]
    changed = rundir.fingerprint(ds)
    assert changed["sha256"] != fp["sha256"] and changed["shape"] == fp["shape"]
    with pytest.raises(Exception, match=r"\(different values\)"):
        rundir.same_data(fp, changed, "study 'x'")
    rundir.same_data(None, changed, "an older study")  # nothing recorded: nothing to compare
