import pytest
import torch

from nntune import artifacts
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
    assert torch.allclose(probs.sum(1), torch.ones(len(raw))) and art.predict(raw).shape == (len(raw),)
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
