import optuna

from nntune.config import RunConfig
from nntune.search.space import resolve_space
from nntune.search.warm_start import warm_trials


def _tied_study() -> optuna.Study:
    """Three complete trials at the same validation score, recorded validation losses 0.3, 0.1 and 0.2, and one
    trial below them with the lowest loss."""
    study = optuna.create_study(direction="maximize")
    for act, value, loss in (("relu", 0.9, 0.3), ("gelu", 0.9, 0.1), ("tanh", 0.9, 0.2), ("elu", 0.8, 0.01)):
        study.enqueue_trial({"model.activation": act})
        trial = study.ask()
        trial.suggest_categorical("model.activation", ["relu", "gelu", "tanh", "elu"])
        trial.set_user_attr("val", {"loss": loss})
        study.tell(trial, value)
    return study


def test_warm_start_takes_tied_trials_by_validation_loss():
    params = resolve_space(RunConfig(), "tabular", (4,))
    warm = warm_trials(_tied_study(), params, 3)
    # before: the earliest of equals (relu, gelu, tanh); now the lowest loss first, and a lower score stays out
    assert [w["values"]["model.activation"] for w in warm] == ["gelu", "tanh", "relu"]
    assert [w["number"] for w in warm] == [1, 2, 0] and {w["value"] for w in warm} == {0.9}
