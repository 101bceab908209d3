"""The scikit-learn estimators: scikit-learn's own estimator checks, pipelines, cross-validation, string labels,
save/load, and the array forms of nntune.train / nntune.tune."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import nntune
from nntune import NNTuneClassifier, NNTuneRegressor
from nntune.errors import InputError, NNTuneError

# a tiny, fast configuration: one training run of a small MLP (the checks fit a few hundred times)
FAST = {"trials": 1, "epochs": 25, "config": {"model": {"units": 32, "hidden_layers": 1},
                                               "train": {"lr": 0.01, "early_stopping": {"patience": 25}}}}

# checks that cannot apply to a neural network trained this way, each with the reason
SKIPPED = {
    "check_methods_subset_invariance": "float32 matrix products may differ in the last bit with the batch size (the "
                                       "BLAS picks kernels by shape): outputs agree to ~1e-7, not to the 1e-7 rtol "
                                       "and atol asked; labels and probabilities to 1e-6 are unaffected",
}


@parametrize_with_checks([NNTuneClassifier(**FAST), NNTuneRegressor(**FAST)],
                         expected_failed_checks=lambda est: SKIPPED)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def cancer():
    return load_breast_cancer(return_X_y=True, as_frame=True)


def test_cross_val_score_three_folds_on_breast_cancer(cancer):
    X, y = cancer
    scores = cross_val_score(NNTuneClassifier(trials=1, epochs=15), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


def test_a_pipeline_with_a_column_transformer_in_front(cancer):
    X, y = cancer
    X = X.iloc[:, :6].copy()
    X["size"] = np.where(X["mean radius"] > X["mean radius"].median(), "large", "small")  # a text column
    prep = ColumnTransformer([("num", StandardScaler(), list(X.columns[:6])), ("cat", OneHotEncoder(), ["size"])])
    pipe = Pipeline([("prep", prep), ("net", NNTuneClassifier(trials=1, epochs=15, scaler="none"))])
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.85 and pipe.predict_proba(X.iloc[:4]).shape == (4, 2)
    assert clone(pipe).get_params()["net__epochs"] == 15


def test_string_labels_round_trip_and_save_load_predicts_identically(cancer, tmp_path):
    X, y = cancer
    labels = np.where(y == 1, "benign", "malignant")
    clf = NNTuneClassifier(trials=1, epochs=10).fit(X, labels)
    assert list(clf.classes_) == ["benign", "malignant"] and set(clf.predict(X)) <= {"benign", "malignant"}
    assert list(clf.feature_names_in_) == list(X.columns) and clf.n_features_in_ == X.shape[1]
    clf.save(tmp_path / "model")
    again = nntune.load(tmp_path / "model")
    assert isinstance(again, NNTuneClassifier) and list(again.classes_) == ["benign", "malignant"]
    assert (again.predict(X) == clf.predict(X)).all()
    assert np.array_equal(again.predict_proba(X), clf.predict_proba(X))
    assert again.get_params() == clf.get_params()


def test_search_keeps_the_trial_table_and_best_params(cancer):
    X, y = cancer
    clf = NNTuneClassifier(trials=4, trial_epochs=3, epochs=3, finalists=0, population=2, family="mlp").fit(X, y)
    assert len(clf.cv_results_["number"]) == 4 and set(clf.cv_results_["state"]) <= {"COMPLETE", "PRUNED"}
    assert clf.best_params_ and "train.lr" in clf.best_params_ and 0 <= clf.test_score_["accuracy"] <= 1


def test_images_as_tensors_and_the_functional_forms(digits):
    X, y = digits.x[:600], digits.y[:600]  # torch tensors (N, 1, 8, 8)
    clf = nntune.train(X, y, family="cnn", epochs=5)
    assert isinstance(clf, NNTuneClassifier) and clf.input_shape_ == (1, 8, 8) and clf.score(X, y) > 0.8
    reg = nntune.train(np.random.default_rng(0).normal(size=(200, 3)), np.linspace(0, 1, 200), epochs=3)
    assert isinstance(reg, NNTuneRegressor) and reg.predict(np.zeros((2, 3))).shape == (2,)
    tuned = nntune.tune(X.numpy(), y.numpy(), trials=2, trial_epochs=2, epochs=2, finalists=0, family="mlp")
    assert isinstance(tuned, NNTuneClassifier) and len(tuned.cv_results_["number"]) == 2


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_bad_input_is_a_value_error_from_nntune(cancer):
    X, y = cancer
    clf = NNTuneClassifier(trials=1, epochs=2)
    for bad_X, bad_y, message in (
        (X.iloc[[0, 1, 2, 3, 19, 20]], y.iloc[[0, 1, 2, 3, 19, 20]], "has 2 sample"),
        (X, np.zeros(len(X)), "at least 2 classes"),
        (np.zeros((10, 2, 2, 2, 2)), np.arange(10) % 2, "dimensions"),
        (np.full((30, 2), np.nan), np.arange(30) % 2, "NaN"),
        (np.ones((30, 2)), np.linspace(0, 1, 30), "Unknown label type"),
    ):
        with pytest.raises(InputError, match=message) as err:
            clf.fit(bad_X, bad_y)
        assert isinstance(err.value, ValueError) and isinstance(err.value, NNTuneError)
    fitted = NNTuneClassifier(trials=1, epochs=2).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        fitted.predict(X.iloc[:, :5].to_numpy())
    with pytest.raises(InputError, match="nntune.tune"):
        nntune.train(X, y, trials=5)


def test_a_kept_run_directory_gets_one_folder_per_fit(cancer, tmp_path):
    X, y = cancer
    clf = NNTuneClassifier(trials=2, trial_epochs=2, epochs=2, finalists=0, family="mlp", out=str(tmp_path))
    first = clf.fit(X, y).run_dir_
    second = clf.fit(X, y).run_dir_
    assert first != second and (tmp_path / "fit-1" / "result.json").exists() and (tmp_path / "fit-2").is_dir()
