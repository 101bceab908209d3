"""The one-line-error guarantee over the CLI surface: bad data files and bad configs exit 2 with at most two lines
naming the file, column or key. One row per case: a new case is one line."""

import numpy as np
import pytest

from nntune.cli import main


def _file(name, content, *extra):
    def make(d):
        path = d / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        return [flag for flag in ("--config",) if name.endswith(".yaml")] + \
            ([] if name.endswith(".yaml") else ["--data"]) + [str(path), *extra]
    return make


def csv(text):
    return _file("data.csv", text, "--target", "y")


def npz(**arrays):
    def make(d):
        np.savez(d / "data.npz", **arrays)
        return ["--data", str(d / "data.npz")]
    return make


def raw(name, data):
    return _file(name, data)


def images(files):
    def make(d):
        root = d / "imgs"
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content)
        root.mkdir(exist_ok=True)
        return ["--data", str(root)]
    return make


def config(text):
    return _file("run.yaml", text)


def png(name, size, mode="L"):
    def make(d):
        from PIL import Image

        root = d / "imgs"
        for cls in ("a", "b"):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.new(mode, size).save(root / cls / name)
        return ["--data", str(root)]
    return make


def flags(*args):
    return lambda d: list(args)


def existing_file(d):
    (d / "out").write_text("not a folder")
    return []


ROWS = "\n".join(f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(40))
CASES = [  # (case, input, words the error must contain)
    ("empty csv", csv(""), "data.csv"),
    ("header-only csv", csv("a,b,y\n"), "data.csv"),
    ("ragged rows", csv("a,b,y\n1,2,0\n3,4\n5,6,1,9\n" + ROWS), "data.csv"),
    ("a word in a numeric column", csv("a,b,y\n" + ROWS + "\ntwelve,1,0\n"), "column 'a' is numeric but for line"),
    ("inf feature", csv("a,b,y\n" + ROWS + "\ninf,1,0\n"), "data.csv"),
    ("single class", csv("a,b,y\n" + "\n".join(f"{i},{i},1" for i in range(40))), "single class"),
    ("text feature column", csv("a,b,y\n" + "\n".join(f"{i},x{i},{i % 2}" for i in range(40))), "'b'"),
    ("missing target column", lambda d: csv("a,b\n1,2\n")(d)[:2] + ["--target", "y"], "'y'"),
    ("too few rows to split", csv("a,b,y\n1,2,0\n3,4,1\n"), "needs at least 3"),
    ("binary garbage csv", raw("data.csv", bytes(range(256)) * 4), "data.csv"),
    ("unsupported suffix", raw("data.parquet", b"PAR1"), "data.parquet"),
    ("npz without x", npz(features=np.zeros((10, 3)), y=np.zeros(10)), "data.npz"),
    ("npz lengths differ", npz(x=np.zeros((10, 3)), y=np.zeros(9)), "data.npz"),
    ("npz rank 5", npz(x=np.zeros((10, 1, 2, 2, 2)), y=np.zeros(10)), "data.npz"),
    ("npz garbage", raw("data.npz", b"PK\x03\x04garbage"), "data.npz"),
    ("empty image folder", images({}), "imgs"),
    ("corrupt image", images({"a/1.png": b"not a png", "b/2.png": b"nor this"}), ".png"),
    ("yaml syntax error", config("train: {lr: 0.1\n"), "run.yaml"),
    ("unknown config key", config("train:\n  learning_rate: 0.1\n"), "learning_rate'; valid keys here: epochs"),
    ("impossible value", config("train:\n  lr: -1\n"), "train.lr"),
    ("config not a mapping", config("- 1\n- 2\n"), "run.yaml"),
    ("binary garbage config", raw("run.yaml", b"\xff\xfe\x00garbage"), "run.yaml: not a UTF-8 text file"),
    # values finite in float64 but not in float32, the training dtype (no RuntimeWarning line either)
    ("csv feature beyond float32", csv("a,b,y\n" + ROWS + "\n1e39,1,0\n"), "float32"),
    ("npz x beyond float32", npz(x=np.full((40, 3), 1e39), y=np.arange(40) % 2), "array 'x' has values outside"),
    ("regression target beyond float32", npz(x=np.random.rand(100, 3), y=np.random.rand(100) * 1e39),
     "array 'y' has values outside"),
    ("npz empty axis", npz(x=np.zeros((40, 0)), y=np.arange(40) % 2), "empty axis"),
    ("oversized image", png("big.png", (4100, 4100)), "big.png: image is 4100x4100 pixels"),
    ("out is an existing file", existing_file, "is a file, not a run directory"),
    ("flag value out of range", flags("--lr", "-1"), "--lr (train.lr): Input should be greater than 0"),
    ("flag value out of range (batch)", flags("--batch-size", "0"), "--batch-size (train.batch_size):"),
]


@pytest.mark.parametrize("case,make,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_short_line(capsys, tmp_path, case, make, words):
    args = make(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["train", *args, "--epochs", "1", "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert "Traceback" not in err and 1 <= len(err.splitlines()) <= 2, err
    assert words in err, err
