"""Export round trips: the ONNX file in onnxruntime and the TorchScript file in torch.jit.load agree with
``nntune predict`` on the saved model, for an MLP, a 1-D CNN and a 2-D CNN with batch norm and dropout."""

import csv
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nntune.cli import main
from nntune.data.sources import load_dataset
from nntune.export import RawInputModel, load_exported
from nntune import artifacts

CASES = {
    "mlp": ["--dataset", "digits", "--family", "mlp", "--dropout", "0.2", "--scaler", "minmax"],
    "cnn1d": ["--dataset", "signals", "--family", "cnn", "--conv-blocks", "2", "--filters", "8", "--head", "gap"],
    "cnn2d": ["--dataset", "digits", "--family", "cnn", "--conv-blocks", "2", "--filters", "8", "--batch-norm",
              "--dropout-after-pool", "0.1", "--dropout-before-fc", "0.3"],
    "tcn": ["--dataset", "signals", "--preset", "tcn", "--conv-blocks", "3", "--filters", "8", "--causal"],
    "rnn": ["--dataset", "signals", "--family", "rnn", "--cell", "lstm", "--rnn-units", "16", "--bidirectional",
            "--pooling", "attention", "--frontend-filters", "8"],
}


def _cli(*args):
    main([str(a) for a in args])


def _read_predictions(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [r["label"] for r in rows]
    probs = np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows])
    return labels, probs


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    _cli("train", *CASES[request.param], "--epochs", "2", "--quiet", "--out", tmp / "run")
    ds = load_dataset(CASES[request.param][1])
    np.savez(tmp / "x.npz", x=ds.x[:50].numpy())
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.pt")):
        _cli("export", tmp / "run" / "best", "--format", fmt, "--out", tmp / name, "--json", tmp / f"{fmt}.json")
    return tmp, ds


def test_exported_files_agree_with_nntune_predict(exported, capsys):
    tmp, _ = exported
    _cli("predict", tmp / "run" / "best", "--data", tmp / "x.npz", "--out", tmp / "nntune.csv")
    labels, probs = _read_predictions(tmp / "nntune.csv")
    assert len(labels) == 50 and np.allclose(probs.sum(1), 1, atol=1e-4)
    for name in ("model.onnx", "model.pt"):
        _cli("predict", tmp / name, "--data", tmp / "x.npz", "--out", tmp / f"{name}.csv")
        other_labels, other_probs = _read_predictions(tmp / f"{name}.csv")
        assert other_labels == labels and np.abs(other_probs - probs).max() <= 1e-4
        x = np.load(tmp / "x.npz")["x"]  # the loaded file takes a NumPy array as it takes a tensor
        loaded = load_exported(tmp / name)
        assert np.array_equal(loaded.predict(x), loaded.predict(torch.from_numpy(x)))


def test_onnx_runs_in_onnxruntime_alone_with_any_batch_size(exported):
    tmp, ds = exported
    art = artifacts.load(tmp / "run" / "best")
    session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and inp.shape[1:] == list(ds.input_shape) and isinstance(inp.shape[0], str)
    assert out.name == "probabilities"
    meta = json.loads(session.get_modelmeta().custom_metadata_map["nntune"])
    assert meta["class_names"] == ds.class_names and meta["input_shape"] == list(ds.input_shape)
    expected = art.predict_proba(ds.x[:33])
    for batch in (1, 7, 33):  # raw inputs: the scaler is inside the file
        got = session.run(None, {"input": ds.x[:batch].numpy()})[0]
        assert got.shape == (batch, len(ds.class_names))
        assert np.abs(got - expected[:batch]).max() <= 1e-4
        assert (got.argmax(1) == expected[:batch].argmax(1)).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated, still what users load
def test_torchscript_loads_with_torch_jit_alone(exported):
    tmp, ds = exported
    art = artifacts.load(tmp / "run" / "best")
    extra = {"nntune.json": ""}
    module = torch.jit.load(str(tmp / "model.pt"), _extra_files=extra)
    assert json.loads(extra["nntune.json"])["task"] == "classification"
    with torch.no_grad():
        got = module(ds.x[:5])
    assert got.shape == (5, len(ds.class_names))
    assert np.abs(got.numpy() - art.predict_proba(ds.x[:5])).max() <= 1e-4
    report = json.loads((tmp / "onnx.json").read_text())
    assert report["checked_samples"] > 0 and report["max_abs_diff"] <= 1e-4


def test_regression_exports_values_with_the_unit_scaler(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=300)
    with (tmp_path / "reg.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "c", "d", "y"])
        w.writerows(np.column_stack([x, y]).tolist())
    _cli("train", "--data", tmp_path / "reg.csv", "--target", "y", "--scaler", "unit", "--epochs", "2", "--quiet",
         "--out", tmp_path / "run")
    art = artifacts.load(tmp_path / "run" / "best")
    for fmt in ("onnx", "torchscript"):
        _cli("export", tmp_path / "run" / "best", "--format", fmt)
        exported = load_exported(tmp_path / "run" / "best" / ("model.onnx" if fmt == "onnx" else "model.pt"))
        xs = torch.tensor(x[:20], dtype=torch.float32)
        assert exported.task == "regression" and exported.predict(xs).shape == (20,)
        assert np.abs(exported.predict(xs) - art.predict(xs)).max() <= 1e-4


def test_raw_input_model_is_the_artifact(exported):
    tmp, ds = exported
    art = artifacts.load(tmp / "run" / "best")
    with torch.no_grad():
        assert np.allclose(RawInputModel(art)(ds.x[:10]).numpy(), art.predict_proba(ds.x[:10]), atol=1e-6)


def test_bad_exports_and_exported_inputs_are_one_line_errors(exported, tmp_path, capsys):
    tmp, _ = exported
    for args, expected in (
        (["export", tmp_path / "nothing"], "not a model directory"),
        (["predict", tmp / "x.npz", "--data", tmp / "x.npz"], "not an exported model"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and expected in err and "Traceback" not in err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((3, 1, 5, 5), dtype=np.float32))
    with pytest.raises(SystemExit):
        main(["predict", str(tmp / "model.onnx"), "--data", str(wrong)])
    assert "the model expects" in capsys.readouterr().err
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(SystemExit):
        main(["predict", str(broken), "--data", str(tmp / "x.npz")])
    assert "not a readable ONNX model" in capsys.readouterr().err
