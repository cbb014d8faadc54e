"""Grid tuner: the same numbers as GridSearchCV, one stored trial per point, shared by workers."""

from __future__ import annotations

import csv
import io

import optuna
import pytest
from conftest import MODELS, cli, write_study
from optuna.trial import TrialState

PLAIN = MODELS / "plain.py"
GRID = {"epochs": [1, 2, 3], "batch_size": [32, 64]}


@pytest.fixture
def restore_tf_determinism():
    """SciKeras' random_state switches TensorFlow op determinism on for this process and
    leaves it on; later in-process tests with unseeded random ops would then fail."""
    yield
    from tensorflow.python.framework import config  # no public "disable"; SciKeras uses the same call

    config.disable_op_determinism()


def test_grid_equals_gridsearchcv_and_is_shared_by_three_workers(workdir, restore_tf_determinism):
    from sklearn.base import is_classifier
    from sklearn.model_selection import GridSearchCV, ParameterGrid

    from tuner_service import data as data_mod
    from tuner_service.runners._scikeras import KerasClassifier
    from tuner_service.runners.grid import _cv_data
    from tuner_service.spec import StudySpec

    study_file = write_study(workdir, "g", model=f"{PLAIN}:build_model",
                             tuner={"name": "grid", "param_grid": GRID, "cv": 3}, budget={"max_trials": None, "max_epochs": 3},
                             fit={"batch_size": 32}, seed=0)
    out = cli("submit", study_file, "--workers", "3", "--storage", "sqlite:///t.db", cwd=workdir, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="g", storage="sqlite:///t.db")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert len({t.user_attrs["pid"] for t in trials}) >= 2
    # Every point of ParameterGrid exactly once, in its order.
    assert [t.params for t in trials] == list(ParameterGrid(GRID))
    for t in trials:
        assert sum(k.startswith("split") for k in t.user_attrs) == 3
        assert len(t.system_attrs["fold_histories"]) == 3
        assert len(t.intermediate_values) == 3

    spec = StudySpec.model_validate(study.user_attrs["spec"])
    x, y = _cv_data(data_mod.load(spec.data, spec.seed))
    est = KerasClassifier(model=_import_plain(), epochs=3, batch_size=32, shuffle=True, verbose=0, random_state=0)
    assert is_classifier(est)  # so GridSearchCV stratifies, as it does for any classifier
    reference = GridSearchCV(est, GRID, cv=3).fit(x, y)
    ours = [t.value for t in trials]
    assert ours == pytest.approx(list(reference.cv_results_["mean_test_score"]), abs=1e-6)
    assert study.best_trial.params == reference.best_params_
    assert study.best_value == pytest.approx(reference.best_score_, abs=1e-6)

    # cv_results_-shaped export.
    table = list(csv.DictReader(io.StringIO(cli("trials", "g", "--storage", "sqlite:///t.db", "-f", "csv",
                                                   cwd=workdir).stdout)))
    assert [float(r["mean_test_score"]) for r in table] == pytest.approx(ours)
    assert [int(r["rank_test_score"]) for r in table] == list(reference.cv_results_["rank_test_score"])
    assert {"split0_test_score", "std_test_score", "mean_fit_time", "param_epochs"} <= set(table[0])


def _import_plain():
    import importlib.util

    spec = importlib.util.spec_from_file_location("plain_ref", PLAIN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_model


def test_grid_derived_from_hp_space(workdir):
    study_file = write_study(workdir, "hpg", model=f"{PLAIN}:build_hp", tuner={"name": "grid", "cv": 2},
                             budget={"max_trials": None, "max_epochs": 1})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="hpg", storage="sqlite:///t.db")
    assert sorted((t.params["units"], t.params["optimizer"]) for t in study.trials) == [
        (16, "adam"), (16, "rmsprop"), (32, "adam"), (32, "rmsprop")]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


@pytest.mark.parametrize("tuner, model, expected", [
    ({"name": "grid", "param_grid": {"model__unitz": [1, 2]}}, "build_model", "has no argument 'unitz'"),
    ({"name": "grid", "param_grid": {"colour": [1, 2]}}, "build_model", "Invalid parameter colour"),
    ({"name": "grid", "param_grid": {"epochs": []}}, "build_model", "non-empty sequence"),
    ({"name": "grid", "param_grid": {"epochs": 3}}, "build_model", "Single values need to be wrapped"),
    ({"name": "grid", "param_grid": {"epochs": [1]}, "cv": 500}, "build_model", "larger than the smallest class"),
    ({"name": "grid", "cv": 2}, "build_continuous", "continuous Float with no step"),
    ({"name": "grid", "param_grid": {"epochs": [1]}, "scoring": "accuracyy"}, "build_model", "not a scikit-learn scorer"),
    ({"name": "grid", "param_grid": {"epochs": [1]}, "cv": {"name": "Bogus"}}, "build_model", "not a scikit-learn splitter"),
])
def test_grid_bad_input(workdir, tuner, model, expected):
    study_file = write_study(workdir, "bad", model=f"{PLAIN}:{model}", tuner=tuner, budget={"max_trials": None})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert not (workdir / "t.db").exists()
