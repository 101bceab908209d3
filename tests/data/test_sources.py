import numpy as np
import pytest
import torch
from PIL import Image

from nntune.data.sources import infer_task, load_dataset, load_mnist5k
from nntune.errors import DataError


def test_digits_default(digits):
    ds = load_dataset()
    assert ds.name == "digits" and ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == torch.float32
    assert ds.task == "classification" and ds.n_outputs == 10 and ds.kind == "image"
    assert torch.equal(ds.y.unique(), torch.arange(10))


def test_mnist5k():
    ds = load_mnist5k()
    assert ds.x.shape == (5000, 1, 28, 28) and ds.x.max() == 255 and ds.n_outputs == 10


def test_task_inference():
    assert infer_task(np.array([0, 1, 2, 1])) == "classification"
    assert infer_task(np.array([0.0, 1.0, 2.0])) == "classification"
    assert infer_task(np.array([0.5, 1.2, 2.0])) == "regression"
    assert infer_task(np.arange(500)) == "regression"
    assert infer_task(np.array(["cat", "dog"])) == "classification"


def _csv(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_classification_with_string_labels(tmp_path):
    p = _csv(tmp_path, "a,b,label\n1,2,cat\n3,4,dog\n5,6,cat\n")
    ds = load_dataset(path=p, target="label")
    assert ds.x.shape == (3, 2) and ds.feature_names == ["a", "b"]
    assert ds.class_names == ["cat", "dog"] and ds.y.tolist() == [0, 1, 0] and ds.kind == "tabular"


def test_csv_regression_and_task_override(tmp_path):
    p = _csv(tmp_path, "a,y\n1,0.5\n2,1.5\n3,2.25\n")
    assert load_dataset(path=p, target="y").task == "regression"
    p2 = _csv(tmp_path, "a,y\n1,0\n2,1\n3,2\n", "r.csv")
    ds = load_dataset(path=p2, target="y", task="regression")
    assert ds.task == "regression" and ds.y.dtype == torch.float32 and ds.y.tolist() == [0.0, 1.0, 2.0]


def test_csv_errors_name_file_and_column(tmp_path):
    p = _csv(tmp_path, "a,color,y\n1,red,0\n2,blue,1\n")
    with pytest.raises(DataError, match=r"target column 'label' not found"):
        load_dataset(path=p, target="label")
    with pytest.raises(DataError, match=r"--target"):
        load_dataset(path=p)
    bad = _csv(tmp_path, "a,y\n1,0\n2\n", "bad.csv")
    with pytest.raises(DataError, match=r"bad.csv: line 3 has 1 fields"):
        load_dataset(path=bad, target="y")


def test_npz_shapes_and_errors(tmp_path):
    p = tmp_path / "sig.npz"
    np.savez(p, x=np.random.rand(20, 2, 50).astype(np.float32), y=np.arange(20) % 2)
    ds = load_dataset(path=p)
    assert ds.kind == "signal" and ds.input_shape == (2, 50) and ds.n_outputs == 2
    q = tmp_path / "noy.npz"
    np.savez(q, x=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"noy.npz: missing array 'y'"):
        load_dataset(path=q)
    r = tmp_path / "corrupt.npz"
    r.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"corrupt.npz: not a readable NPZ"):
        load_dataset(path=r)


def test_image_folder_resizes_to_common_size(tmp_path):
    for cls, sizes in {"a": [(10, 12), (10, 12)], "b": [(10, 12), (20, 20)]}.items():
        (tmp_path / cls).mkdir()
        for i, size in enumerate(sizes):
            Image.new("L", size, color=i * 50).save(tmp_path / cls / f"{i}.png")
    with pytest.warns(UserWarning, match="2 different sizes; resizing all to 10x12"):
        ds = load_dataset(path=tmp_path)
    assert ds.x.shape == (4, 1, 12, 10) and ds.class_names == ["a", "b"] and ds.y.tolist() == [0, 0, 1, 1]


def test_image_folder_unreadable_names_file(tmp_path):
    for cls in "ab":
        (tmp_path / cls).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / cls / "ok.png")
    (tmp_path / "b" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"broken.png: unreadable image"):
        load_dataset(path=tmp_path)


def test_unknown_dataset_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(path=tmp_path / "nope.csv")


def test_non_finite_and_unconvertible_targets_are_clear_errors(tmp_path):
    p = _csv(tmp_path, "a,y\n1,0\ninf,1\n2,0\n")
    with pytest.raises(DataError, match=r"column 'a' has infinite values \(line 3: 'inf'\)"):
        load_dataset(path=p, target="y")
    q = _csv(tmp_path, "a,y\n1,cat\n2,dog\n", "s.csv")
    with pytest.raises(DataError, match="non-numeric classes"):
        load_dataset(path=q, target="y", task="regression")


def _image_folder(root, mode, values, hidden=True):
    """Two classes of 4x4 images of ``mode`` with the given constant pixel values; hidden entries beside them."""
    for cls, value in zip(("a", "b"), values):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4), value, dtype=np.uint16 if mode == "I;16" else np.uint8)).save(
                root / cls / f"{i}.png")
    if hidden:
        (root / ".ipynb_checkpoints").mkdir()
        Image.new("L", (4, 4)).save(root / ".ipynb_checkpoints" / "x.png")
        Image.new("L", (4, 4)).save(root / "a" / ".hidden.png")
    return root


def test_sixteen_bit_images_keep_their_full_range(tmp_path):
    # 300 and 65000 both clip to 255 when read as 8-bit; scaled by 65535 they stay apart
    ds = load_dataset(path=_image_folder(tmp_path / "imgs", "I;16", (300, 65000), hidden=False))
    assert ds.x.dtype == torch.float32 and ds.x.shape == (6, 1, 4, 4)
    assert torch.allclose(ds.x[ds.y == 0], torch.tensor(300 / 65535)) and \
        torch.allclose(ds.x[ds.y == 1], torch.tensor(65000 / 65535))


def test_eight_bit_images_are_scaled_by_255_and_hidden_entries_skipped(tmp_path):
    ds = load_dataset(path=_image_folder(tmp_path / "imgs", "L", (0, 255)))
    assert ds.class_names == ["a", "b"] and len(ds) == 6  # no '.ipynb_checkpoints' class, no '.hidden.png'
    assert ds.x.min() == 0 and ds.x.max() == 1 and ds.meta()["image_values"] == "unit"
    assert all(not f.split("/")[-1].startswith(".") for f in ds.files)


def test_duplicate_header_names_are_made_unique(tmp_path):
    rows = "\n".join(f"{i},{10 * i},{i % 2}" for i in range(30))
    with pytest.warns(UserWarning, match=r"duplicate column names renamed: 'a' -> 'a.1'"):
        ds = load_dataset(path=_csv(tmp_path, "a,a,y\n" + rows), target="y")
    assert ds.feature_names == ["a", "a.1"]
    assert torch.equal(ds.x[:, 1], ds.x[:, 0] * 10)  # each column read once, from its own place


def test_the_delays_class_is_the_lag_between_two_identical_pulses_and_nothing_local():
    """Without noise, the lag of the autocorrelation's peak names the class (the oracle), while the signal's sorted
    values (every local statistic, position thrown away) are the same two pulses in every class: chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from nntune.data.sources import DELAYS, load_delays

    ds = load_delays(n=400, seed=1, noise=0.0)
    x, y = ds.x[:, 0].double().numpy(), ds.y.numpy()
    assert ds.x.shape == (400, 1, 256) and ds.class_names == [str(d) for d in DELAYS]
    assert np.bincount(y).min() > 60
    lags = np.arange(16, 132)
    peak = lags[np.stack([(x[:, :-lag] * x[:, lag:]).sum(1) for lag in lags], 1).argmax(1)]
    assert (np.abs(peak - np.asarray(DELAYS)[y]) <= 4).all()
    local = cross_val_score(LogisticRegression(max_iter=2000), np.sort(x, 1), y, cv=4).mean()
    assert local < 0.35
    assert torch.equal(load_delays(n=50, seed=3).x, load_delays(n=50, seed=3).x)
    assert load_delays(n=20, length=138).x.shape == (20, 1, 138)  # the shortest that holds the longest delay
    with pytest.raises(ValueError, match="length 137 is too short"):
        load_delays(n=5, length=137)
