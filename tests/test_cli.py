import json
import re
import subprocess
import sys

import numpy as np
import pytest

from nntune.cli import main


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def run_ok(capsys, *args):
    main(list(args))
    return capsys.readouterr().out


def test_summary_json(capsys):
    out = run_ok(capsys, "summary", "--family", "cnn", "--batch-norm", "--input-shape", "1,28,28", "--outputs", "10",
                 "--json")
    data = json.loads(out)
    assert set(data) >= {"total", "trainable", "non_trainable", "layers"}
    assert data["layers"][0] == {"name": "block1.conv1", "type": "Conv2d", "output_shape": [-1, 32, 28, 28],
                                 "trainable": 320, "non_trainable": 0}
    assert data["total"] == data["trainable"] + data["non_trainable"] and data["non_trainable"] == 2 * (32 + 64 + 128)


def test_summary_table_and_freeze(capsys):
    out = run_ok(capsys, "summary", "--freeze-all-but-last", "1", "--json")
    data = json.loads(out)
    assert data["trainable"] == 256 * 10 + 10


def test_help_lists_options(capsys):
    out = run_ok(capsys, "train", "--help")
    for flag in ("--dataset", "--data", "--target", "--lr", "--schedule", "--patience", "--out", "--json", "--set"):
        assert flag in out


def test_errors_are_one_line_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "summary", "--family", "cnn", "--conv-blocks", "5")
    assert code == 2 and "model.conv_blocks" in err and "Traceback" not in err
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n")
    code, _, err = run(capsys, "train", "--data", str(csv), "--target", "nope", "--out", str(tmp_path / "o"))
    assert code == 2 and "target column 'nope' not found" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "train", "--set", "train.lr=-1", "--out", str(tmp_path / "o"))
    assert code == 2 and "train.lr" in err


def test_train_end_to_end(capsys, tmp_path):
    out_dir = tmp_path / "run"
    run_ok(capsys, "train", "--epochs", "3", "--quiet", "--out", str(out_dir), "--json", str(tmp_path / "r.json"))
    result = json.loads((out_dir / "result.json").read_text())
    assert result == json.loads((tmp_path / "r.json").read_text())
    for key in ("config", "history", "best_epoch", "stopped_epoch", "stop_reason", "val", "test", "findings"):
        assert key in result
    assert len(result["history"]) == 3 and result["test"]["accuracy"] > 0.8
    assert {p.name for p in (out_dir / "best").iterdir()} == {"weights.safetensors", "scaler.safetensors",
                                                                "model.json"}
    assert (out_dir / "config.yaml").exists()


def test_lr_find_and_augment_commands(capsys, tmp_path):
    out = run_ok(capsys, "lr-find", "--steps", "40", "--out", str(tmp_path / "lf"), "--json")
    data = json.loads(out)
    assert data["suggestion"] == data["suggestions"]["steepest"] and (tmp_path / "lf" / "lr_find.png").stat().st_size
    out = run_ok(capsys, "augment", "--dataset", "mnist5k", "--preset", "digits", "--out", str(tmp_path / "g.png"),
                 "--json")
    assert json.loads(out)["ops"] == ["RandomAffine", "RandomErasing"] and (tmp_path / "g.png").stat().st_size


def test_train_lr_auto_records_range_test(capsys, tmp_path):
    out = run_ok(capsys, "train", "--lr", "auto", "--epochs", "2", "--quiet", "--augment", "light", "--out",
                 str(tmp_path / "r"))
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["lr_find"]["suggestion"] == result["config"]["train"]["lr"]
    lr = f"{result['lr_find']['suggestion']:.3g}"
    assert re.search(rf"learning rate \(range test\)\s*│\s*{re.escape(lr)}\s", out)  # the summary says it
    assert result["config"]["preprocess"]["augment"] == "light"


def test_tune_predict_and_worker(capsys, tmp_path):
    out = tmp_path / "t"
    data = json.loads(run_ok(capsys, "tune", "--trials", "2", "--trial-epochs", "3", "--epochs", "3", "--quiet",
                             "--out", str(out),
                             "--json"))
    assert data["trials"]["complete"] + data["trials"]["pruned"] == 2
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith((".tmp", ".previous"))]
    assert not leftovers, leftovers  # every write is atomic and cleans up after itself
    import numpy as np
    from nntune.data.sources import load_digits

    ds = load_digits()
    np.savez(tmp_path / "x.npz", x=ds.x[:5].numpy())
    run_ok(capsys, "predict", str(out / "best"), "--data", str(tmp_path / "x.npz"), "--out", str(tmp_path / "p.csv"))
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0].startswith("row,label,prob_0") and len(lines) == 6
    code, _, err = run(capsys, "worker", "--trials", "1")
    assert code == 2 and "--storage" in err
    code, _, err = run(capsys, "tune", "--out", str(out), "--trials", "3", "--quiet")
    assert code == 2 and "--resume" in err


def test_tune_with_a_time_budget_prints_what_ended_it_and_the_finalists(capsys, tmp_path):
    out = tmp_path / "w"
    text = run_ok(capsys, "tune", "--dataset", "wine", "--timeout", "12s", "--trial-epochs", "3", "--population", "2",
                  "--quiet", "--out", str(out), "--json", str(tmp_path / "r.json"))
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["budget"]["stopped_by"] == "timeout" and result["study"]["population_sizes"] == {"all": 2}
    assert "search stopped by" in text and "timeout" in text and "chosen trial" in text
    if result["finalists"].get("finalists"):
        assert "finalist trial" in text and "(chosen)" in text
    else:
        assert result["finalists"]["skipped"]


def test_predict_csv_needs_feature_columns(capsys, tmp_path):
    csv = tmp_path / "d.csv"
    rows = ["a,b,y"] + [f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(60)]
    csv.write_text("\n".join(rows) + "\n")
    run_ok(capsys, "train", "--data", str(csv), "--target", "y", "--epochs", "2", "--quiet", "--out",
           str(tmp_path / "r"))
    (tmp_path / "new.csv").write_text("b,a\n1,2\n3,4\n")
    run_ok(capsys, "predict", str(tmp_path / "r" / "best"), "--data", str(tmp_path / "new.csv"), "--out",
           str(tmp_path / "p.csv"))
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "row,label,prob_0,prob_1"
    (tmp_path / "bad.csv").write_text("a\n1\n")
    code, _, err = run(capsys, "predict", str(tmp_path / "r" / "best"), "--data", str(tmp_path / "bad.csv"))
    assert code == 2 and "feature column 'b' is missing" in err


def test_predictions_of_a_duplicated_header_file_equal_a_correct_reading(capsys, tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=60), rng.normal(size=60)
    rows = [f"{x:.6f},{y:.6f},{int(x > y)}" for x, y in zip(a, b)]
    dup, fixed = tmp_path / "dup.csv", tmp_path / "fixed.csv"
    dup.write_text("a,a,label\n" + "\n".join(rows))
    fixed.write_text("a,a.1,label\n" + "\n".join(rows))  # the same columns, named as nntune reads them
    run_ok(capsys, "train", "--data", str(dup), "--target", "label", "--epochs", "3", "--quiet", "--out",
           str(tmp_path / "run"))
    best = str(tmp_path / "run" / "best")
    run_ok(capsys, "predict", best, "--data", str(dup), "--out", str(tmp_path / "p1.csv"))
    run_ok(capsys, "predict", best, "--data", str(fixed), "--out", str(tmp_path / "p2.csv"))
    assert (tmp_path / "p1.csv").read_text() == (tmp_path / "p2.csv").read_text()
    swapped = tmp_path / "swapped.csv"  # reading the first 'a' twice would not see the second column
    swapped.write_text("a.1,a,label\n" + "\n".join(rows))
    run_ok(capsys, "predict", best, "--data", str(swapped), "--out", str(tmp_path / "p3.csv"))
    assert (tmp_path / "p3.csv").read_text() != (tmp_path / "p1.csv").read_text()


def test_predictions_for_an_image_folder_name_the_files(capsys, tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for k, cls in enumerate(("dark", "light")):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 + 170 * k + i, dtype=np.uint8)).save(root / cls / f"{i}.png")
    run_ok(capsys, "train", "--data", str(root), "--family", "mlp", "--epochs", "3", "--quiet", "--out",
           str(tmp_path / "run"))
    run_ok(capsys, "predict", str(tmp_path / "run" / "best"), "--data", str(root), "--out", str(tmp_path / "p.csv"))
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "path,label,prob_dark,prob_light"
    assert [line.split(",")[0] for line in lines[1:]] == [str(root / c / f"{i}.png") for c in ("dark", "light")
                                                           for i in range(6)]
    # what users have: a flat folder of new images (one of another size), a single file, a glob pattern
    new = tmp_path / "new"
    new.mkdir()
    Image.fromarray(np.full((8, 8), 45, dtype=np.uint8)).save(new / "a_dark.png")
    Image.fromarray(np.full((16, 16), 215, dtype=np.uint8)).save(new / "b_light.png")  # resized to the model's 8x8
    (new / "notes.txt").write_text("not an image")
    best = str(tmp_path / "run" / "best")
    for data, files in ((new, ["a_dark.png", "b_light.png"]), (new / "b_light.png", ["b_light.png"]),
                        (new / "a_*.png", ["a_dark.png"])):
        run_ok(capsys, "predict", best, "--data", str(data), "--out", str(tmp_path / "q.csv"))
        rows = [line.split(",") for line in (tmp_path / "q.csv").read_text().splitlines()]
        assert rows[0][:2] == ["path", "label"] and [r[0] for r in rows[1:]] == [str(new / f) for f in files]
        assert [r[1] for r in rows[1:]] == [f.split("_")[1].removesuffix(".png") for f in files]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        main(["predict", best, "--data", str(empty), "--out", str(tmp_path / "r.csv")])
    assert "no image files" in capsys.readouterr().err


def test_help_and_the_config_load_no_heavy_library():
    """Issue 26 (start-up): `nntune --help` and reading a config import neither torch, scikit-learn, Optuna nor
    matplotlib (bench/startup.py times it; this keeps an import from creeping back in)."""
    code = ("import sys\nfrom click.testing import CliRunner\nfrom nntune.cli.commands import cli\n"
            "from nntune.config import RunConfig\nRunConfig()\n"
            "assert CliRunner().invoke(cli, ['tune', '--help']).exit_code == 0\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'optuna', 'matplotlib', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_exports_every_public_name_it_lists():
    import nntune

    assert sorted(nntune.__all__) == sorted(nntune._EXPORTS)
    assert all(callable(getattr(nntune, name)) for name in nntune.__all__)
