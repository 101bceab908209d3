import numpy as np
import pytest
import torch

from nntune import artifacts, atomic
from nntune.config import RunConfig, apply_overrides
from nntune.errors import ArtifactError
from nntune.training.pipeline import fit_model, prepare_data


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = apply_overrides(RunConfig(), {"train.epochs": 2, "model.batch_norm": True})
    data = prepare_data(cfg)
    model, trainer, _ = fit_model(cfg, data)
    out = artifacts.save(tmp_path_factory.mktemp("a") / "best", model, cfg, data.scaler, data.dataset.meta())
    return out, trainer, data


def test_roundtrip_predicts_identically_on_raw_inputs(saved):
    out, trainer, data = saved
    art = artifacts.load(out)
    raw = data.dataset.x[data.split.test]
    assert torch.allclose(art.predict_raw(raw), trainer.predict(data.x_test), atol=1e-5)
    probs = art.predict_proba(raw)
    assert isinstance(probs, np.ndarray) and np.allclose(probs.sum(1), 1.0, atol=1e-6)
    labels = art.predict(raw)  # class names, as the estimators answer
    assert labels.shape == (len(raw),) and list(labels) == [art.class_names[i] for i in probs.argmax(1)]
    assert art.class_names == [str(i) for i in range(10)] and art.config.model.batch_norm


def test_corrupt_and_missing_files_name_the_file(saved, tmp_path):
    out, _, _ = saved
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match=r"weights.safetensors: corrupt safetensors"):
        artifacts.load(broken)
    (broken / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"model.json: corrupt"):
        artifacts.load(broken)
    with pytest.raises(ArtifactError, match="not a model directory"):
        artifacts.load(tmp_path / "nothing")


def test_predict_takes_arrays_data_frames_and_lists_as_well_as_tensors(saved):
    art = artifacts.load(saved[0])
    raw = saved[2].dataset.x[:6]
    expected = art.predict_proba(raw)
    as_numpy = raw.numpy().astype(np.float64)  # any numeric dtype
    assert np.allclose(art.predict_proba(as_numpy), expected)
    assert np.array_equal(art.predict(as_numpy), art.predict(raw))
    assert torch.allclose(art.predict_raw(raw.tolist()), art.predict_raw(raw))
    with pytest.raises(ArtifactError, match="takes numbers"):
        art.predict(np.array([["a"] * 8] * 8, dtype=object)[None, None])


def test_predict_takes_a_data_frame_for_a_table_model(tmp_path):
    pd = pytest.importorskip("pandas")
    cfg = apply_overrides(RunConfig(), {"data.dataset": "wine", "train.epochs": 1})
    data = prepare_data(cfg)
    model, _, _ = fit_model(cfg, data)
    art = artifacts.load(artifacts.save(tmp_path / "best", model, cfg, data.scaler, data.dataset.meta()))
    raw = data.dataset.x[:5]
    frame = pd.DataFrame(raw.numpy(), columns=[f"f{i}" for i in range(raw.shape[1])])
    assert np.allclose(art.predict_proba(frame), art.predict_proba(raw))


def test_wrong_input_shape(saved):
    art = artifacts.load(saved[0])
    with pytest.raises(ArtifactError, match=r"expects \(1, 8, 8\)"):
        art.predict(torch.zeros(2, 64))


def test_empty_input_gives_empty_predictions(saved):
    art = artifacts.load(saved[0])
    assert art.predict_proba(torch.zeros(0, 1, 8, 8)).shape == (0, 10)


def test_result_json_round_trip_leaves_no_temporary_file(tmp_path):
    from nntune.artifacts import read_result, write_result

    write_result(tmp_path, {"a": 1})
    write_result(tmp_path, {"a": 2, "evidence": {"lr": {}}})
    assert read_result(tmp_path) == {"a": 2, "evidence": {"lr": {}}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    (tmp_path / "result.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="result.json: corrupt"):
        read_result(tmp_path)
    with pytest.raises(ArtifactError, match="result.json: missing"):
        read_result(tmp_path / "elsewhere")


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])


def _header_claims_more(path):
    import json as _json
    import struct

    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = _json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10_000  # the tensor now claims bytes past the end of the file
    raw = _json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _edit_meta(path, change):
    import json as _json

    meta = _json.loads(path.read_text())
    change(meta)
    path.write_text(_json.dumps(meta))


HOSTILE = [  # (what, file, how to break it, the words of the one-line error)
    ("truncated weights", "weights.safetensors", lambda p: _truncate(p, -100), "weights.safetensors: corrupt"),
    ("weights cut inside the header", "weights.safetensors", lambda p: _truncate(p, 20),
     "weights.safetensors: corrupt"),
    ("empty scaler", "scaler.safetensors", lambda p: p.write_bytes(b""), "scaler.safetensors: corrupt"),
    ("header claims more bytes", "weights.safetensors", _header_claims_more, "weights.safetensors: corrupt"),
    ("binary garbage for model.json", "model.json", lambda p: p.write_bytes(b"\x89PNG\x00\xff"), "model.json: corrupt"),
    ("model.json not an object", "model.json", lambda p: p.write_text("[1, 2]"), "model.json: corrupt"),
    ("model.json from a future version", "model.json", lambda p: _edit_meta(p, lambda m: m.update(format=99)),
     "written by a newer nntune"),
    ("weights of another architecture", "model.json",
     lambda p: _edit_meta(p, lambda m: m["config"]["model"].update(units=17)), "weights do not fit the saved config"),
    ("a missing weights file", "weights.safetensors", lambda p: p.unlink(), "weights.safetensors: missing"),
    ("a missing model.json", "model.json", lambda p: p.unlink(), "model.json: missing"),
    # checked against the weights header on the meta device: nothing is allocated for a huge or impossible model
    ("model.json with a negative input shape", "model.json",
     lambda p: _edit_meta(p, lambda m: m["data"].update(input_shape=[1, -8, 8])), "model.json: corrupt"),
    ("model.json with a huge input shape", "model.json",
     lambda p: _edit_meta(p, lambda m: m["data"].update(input_shape=[10**6, 10**6])), "model.json: corrupt"),
    ("model.json with a huge width", "model.json",
     lambda p: _edit_meta(p, lambda m: m["config"]["model"].update(units=10**9)),
     "weights do not fit the saved config"),
    ("model.json with a negative width", "model.json",
     lambda p: _edit_meta(p, lambda m: m["config"]["model"].update(widths=[64, -3])), "widths must be positive"),
]


@pytest.mark.parametrize("what,name,breaks,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_artifacts_are_one_line_errors(saved, tmp_path, capsys, what, name, breaks, words):
    import shutil

    from nntune.cli import main

    out, _, data = saved
    broken = tmp_path / "best"
    shutil.copytree(out, broken)
    breaks(broken / name)
    with pytest.raises(ArtifactError, match=words):
        artifacts.load(broken)
    npz = tmp_path / "x.npz"
    import numpy as np

    np.savez(npz, x=data.dataset.x[:5].numpy())
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(broken), "--data", str(npz), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and words.split(":")[0] in err and len(err.splitlines()) <= 2
    assert "Traceback" not in err and not (tmp_path / "p.csv").exists()


def test_saving_replaces_the_whole_directory_and_leaves_no_temporary_files(saved, tmp_path):
    out, _, data = saved
    art = artifacts.load(out)
    target = tmp_path / "best"
    artifacts.save(target, art.model, art.config, art.scaler, art.data)
    other = apply_overrides(art.config, {"model.units": 32})
    from nntune.models.builders import build_model

    small = build_model(other.model, data.dataset.input_shape, data.dataset.n_outputs)
    artifacts.save(target, small, other, art.scaler, art.data)
    assert artifacts.load(target).config.model.units == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "scaler.safetensors", "weights.safetensors"]
    # a save interrupted between its two renames left the old directory as best.previous: it still loads
    (tmp_path / "best").rename(tmp_path / "best.previous")
    assert artifacts.load(target).config.model.units == 32


def test_writing_into_a_read_only_directory_is_a_one_line_error(saved, tmp_path):
    import os

    from nntune.atomic import write_text

    out, _, _ = saved
    art = artifacts.load(out)
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: nothing to test here
            pytest.skip("running as root: a read-only directory is still writable")
        with pytest.raises(ArtifactError, match=r"locked/best: cannot write \(Permission denied\)"):
            artifacts.save(locked / "best", art.model, art.config, art.scaler, art.data)
        with pytest.raises(ArtifactError, match=r"result.json: cannot write"):
            write_text(locked / "result.json", "{}")
    finally:
        os.chmod(locked, 0o700)


def test_a_full_disk_is_a_one_line_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno
    import os

    from nntune import atomic

    target = tmp_path / "result.json"
    atomic.write_text(target, '{"v": 1}')

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(ArtifactError, match=r"result.json: cannot write \(No space left on device\)"):
        atomic.write_text(target, '{"v": 2}')
    monkeypatch.undo()
    assert target.read_text() == '{"v": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    # a parent that is a file, not a directory, also fails in one line
    with pytest.raises(ArtifactError, match=r"cannot write \(Not a directory\)"):
        atomic.write_text(target / "x.json", "{}")


def test_a_full_disk_inside_safetensors_is_one_line_and_keeps_the_old_model(saved, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    out, trainer, data = saved
    cfg = RunConfig()
    target = artifacts.save(tmp_path / "best", trainer.model, cfg, data.scaler, data.dataset.meta())
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(artifacts, "save_file", full)
    with pytest.raises(ArtifactError, match=r"weights.safetensors: cannot write \(.*No space left on device"):
        artifacts.save(target, trainer.model, cfg, data.scaler, data.dataset.meta())
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no staging directory left


def test_saved_files_get_the_ordinary_mode(saved):
    out, _, _ = saved
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == \
        {name: atomic.FILE_MODE for name in ("model.json", "scaler.safetensors", "weights.safetensors")}


@pytest.fixture
def ensemble_dir(saved, tmp_path):
    """The saved model and a second, untrained member of its architecture, saved as one ensemble."""
    from nntune.models.builders import build_model
    from nntune.models.ensemble import Ensemble

    out, _, data = saved
    art = artifacts.load(out)
    other = build_model(art.config.model, data.dataset.input_shape, 10, seed=7)
    ens_dir = artifacts.save(tmp_path / "ens", Ensemble([art.model, other], True), art.config, art.scaler,
                             data.dataset.meta())
    return ens_dir, art, artifacts.Artifact(other, art.scaler, art.config, art.data)


def test_an_ensemble_saves_loads_and_predicts_the_mean_of_its_members(saved, ensemble_dir):
    import json

    from nntune.models.ensemble import Ensemble

    out, _, data = saved
    ens_dir, art, alone = ensemble_dir
    meta = json.loads((ens_dir / "model.json").read_text())
    assert meta["format"] == 2 and meta["ensemble"] == 2
    assert json.loads((out / "model.json").read_text())["format"] == 1  # a single model stays readable by old nntune
    loaded = artifacts.load(ens_dir)
    raw = data.dataset.x[data.split.test][:20]
    expected = (art.predict_proba(raw) + alone.predict_proba(raw)) / 2
    assert isinstance(loaded.model, Ensemble) and np.allclose(loaded.predict_proba(raw), expected, atol=1e-6)
    assert list(loaded.predict(raw)) == [loaded.class_names[i] for i in expected.argmax(1)]

    meta["ensemble"] = 1000
    (ens_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"model.json: corrupt model description .*ensemble 1000"):
        artifacts.load(ens_dir)


def test_an_ensemble_of_several_architectures_lists_each_members_config(saved, tmp_path):
    import json

    from nntune.models.builders import build_model
    from nntune.models.ensemble import Ensemble

    out, _, data = saved
    art = artifacts.load(out)
    wide = art.config.model.model_copy(update={"units": 24, "hidden_layers": 1})
    other = build_model(wide, data.dataset.input_shape, 10, seed=3)
    ens = Ensemble([art.model, other], True, [art.config.model, wide])
    ens_dir = artifacts.save(tmp_path / "mixed", ens, art.config, art.scaler, data.dataset.meta())
    meta = json.loads((ens_dir / "model.json").read_text())
    assert meta["format"] == 3 and meta["ensemble"] == 2 and meta["members"][1]["units"] == 24
    loaded = artifacts.load(ens_dir)
    raw = data.dataset.x[data.split.test][:20]
    alone = artifacts.Artifact(other, art.scaler, art.config, art.data)
    expected = (art.predict_proba(raw) + alone.predict_proba(raw)) / 2  # the oracle: each member's own output
    assert [len(m.fc1.weight) for m in loaded.model.members] == [art.config.model.units, 24]
    assert np.allclose(loaded.predict_proba(raw), expected, atol=1e-6)

    for change, words in ((lambda m: m.update(members=m["members"][:1]), "one model config per ensemble member"),
                          (lambda m: m["members"][1].update(units=25), "weights do not fit the saved config"),
                          (lambda m: m["members"][1].update(activation="sigh"), r"members\[1\]")):
        _edit_meta(ens_dir / "model.json", change)
        with pytest.raises(ArtifactError, match=words):
            artifacts.load(ens_dir)
        artifacts.save(ens_dir, ens, art.config, art.scaler, data.dataset.meta())


def test_fine_tuning_an_ensemble_is_a_one_line_error(ensemble_dir):
    from nntune.errors import ConfigError
    from nntune.training.finetune import saved_model

    with pytest.raises(ConfigError, match=r"is an ensemble of 2 models; fine-tune one of them"):
        saved_model(apply_overrides(RunConfig(), {"finetune.init_from": str(ensemble_dir[0])}))
