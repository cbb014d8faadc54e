"""The drop-in's oracles and tuners beyond the ready-made searches: ``kt.Tuner`` subclasses with
``oracle=``, user ``Oracle`` subclasses (``populate_space``), keras-tuner's Hyperband schedule,
GridSearch over builds that fail, ``FatalError``, ``SklearnTuner``, ``distribution_strategy``,
the console output against keras-tuner's own, and an import that changes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import numpy as np
import optuna
import pytest
from conftest import ENV
from optuna.trial import TrialState
from sklearn.datasets import load_digits
from test_keras_tuner_guides import structure

import tuner_service.keras_tuner as kt
from tuner_service.keras_tuner._strategies import BRACKET_ATTR, HyperbandPruner, HyperbandSchedule
from tuner_service.tuners import hyperband_bracket_trials


def _study(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / name}.db")


def _states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.data / 16.0).astype("float32"), d.target


# ---------------------------------------------------------------------------- kt.Tuner + oracles


class CustomLoopTuner(kt.Tuner):
    """A custom training loop in run_trial (keras-tuner's "custom tuner" pattern): the batch
    size is tuned outside the model, the objective is returned as a dict."""

    def run_trial(self, trial: Any, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> dict[str, float]:
        hp = trial.hyperparameters
        batch_size = hp.Int("batch_size", 32, 128, step=32, default=64)
        model = self.hypermodel.build(hp)
        optimizer = keras.optimizers.Adam(hp.Float("learning_rate", 1e-3, 3e-2, sampling="log", default=1e-2))
        loss_fn = keras.losses.SparseCategoricalCrossentropy()
        model.compile(optimizer=optimizer, loss=loss_fn)
        for epoch in range(2):
            self.on_epoch_begin(trial, model, epoch, logs={})
            for start in range(0, len(x), batch_size):
                model.train_on_batch(x[start:start + batch_size], y[start:start + batch_size])
            loss = float(loss_fn(y, model.predict(x, verbose=0)))
            self.on_epoch_end(trial, model, epoch, logs={"loss": loss})
        return {"loss": loss}


def dense_model(hp: Any) -> keras.Model:
    return keras.Sequential([keras.layers.Input(shape=(64,)),
                             keras.layers.Dense(hp.Int("units", 8, 32, step=8), activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def test_tuner_subclass_with_bayesian_oracle(tmp_path: Path, digits: Any) -> None:
    x, y = digits
    oracle = kt.oracles.BayesianOptimizationOracle(objective=kt.Objective("loss", "min"), max_trials=4,
                                                   num_initial_points=2, seed=3)
    tuner = CustomLoopTuner(oracle=oracle, hypermodel=dense_model, directory=str(tmp_path), project_name="loop",
                            overwrite=True)
    assert tuner.oracle is oracle and isinstance(oracle, keras_tuner.Oracle)  # keras-tuner's own class
    tuner.search(x[:300], y[:300], verbose=0)
    study = _study(tmp_path, "loop")
    assert _states(study) == {"COMPLETE": 4}
    assert type(tuner._get_study().sampler).__name__ == "BayesianSampler"  # the service's GP sampler
    # Hyperparameters registered in run_trial (not in build) join the space after the first
    # trial, as in keras-tuner, and are drawn by the sampler from then on.
    first, *rest = sorted(study.trials, key=lambda t: t.number)
    assert set(first.params) == {"units"} and all(set(t.params) == {"units", "batch_size", "learning_rate"}
                                                  for t in rest)
    best = tuner.get_best_hyperparameters(1)[0]
    assert isinstance(best, keras_tuner.HyperParameters)
    assert {k: best.values[k] for k in study.best_params} == study.best_params
    assert tuner.oracle.get_best_trials(1)[0].score == pytest.approx(study.best_value)
    assert len(tuner.oracle.trials) == 4 and tuner.remaining_trials == 0


class UpdateTrialTuner(kt.Tuner):
    """keras-tuner's deprecated reporting: oracle.update_trial() inside run_trial."""

    def run_trial(self, trial: Any, **kwargs: Any) -> None:
        x = trial.hyperparameters.Float("x", -2.0, 2.0)
        self.oracle.update_trial(trial.trial_id, {"score": (x - 1) ** 2})


def test_run_trial_reporting_through_oracle_update_trial(tmp_path: Path) -> None:
    tuner = UpdateTrialTuner(oracle=kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "min"),
                                                                  max_trials=3, seed=1),
                             directory=str(tmp_path), project_name="upd", overwrite=True)
    with pytest.warns(DeprecationWarning, match="update_trial"):
        tuner.search(verbose=0)
    study = _study(tmp_path, "upd")
    assert _states(study) == {"COMPLETE": 3}
    for t in study.trials:
        assert t.value == pytest.approx((t.params.get("x", -2.0) - 1) ** 2)


class CyclingOracle(kt.Oracle):
    """A user's oracle: proposes the ``units`` not tried yet (it reads ``self.trials``), is
    busy (IDLE) once, and stops when every value was tried."""

    CHOICES = (8, 16, 24)
    idled = 0

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        tried = [t.hyperparameters.values.get("units") for t in self.trials.values()]
        left = [u for u in self.CHOICES if u not in tried]
        if len(tried) == 1 and not type(self).idled:
            type(self).idled += 1
            return {"status": "IDLE"}
        if not left:
            return {"status": "STOPPED", "values": None}
        return {"status": "RUNNING", "values": {"units": left[0]}}


class FitDigits(kt.HyperModel):
    def build(self, hp: Any) -> keras.Model:
        model = dense_model(hp)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model


def test_oracle_subclass_proposes_the_values(tmp_path: Path, digits: Any) -> None:
    x, y = digits
    CyclingOracle.idled = 0
    tuner = kt.Tuner(oracle=CyclingOracle(objective="val_accuracy"), hypermodel=FitDigits(),
                     directory=str(tmp_path), project_name="cyc", overwrite=True)
    tuner.search(x[:300], y[:300], epochs=1, validation_data=(x[300:500], y[300:500]), verbose=0)
    study = _study(tmp_path, "cyc")
    # Its proposals are the trials' parameters, in order; STOPPED ended the search without a
    # trial for it (max_trials=None: the oracle decides).
    assert [t.params["units"] for t in sorted(study.trials, key=lambda t: t.number)] == [8, 16, 24]
    assert _states(study) == {"COMPLETE": 3} and tuner.remaining_trials is None
    assert CyclingOracle.idled == 1  # IDLE: asked again, the search went on
    assert study.user_attrs["tuner"] == "oracle"
    best = tuner.get_best_hyperparameters(1)[0]
    assert best.values["units"] == study.best_params["units"]
    # A resumed search asks the oracle again, which stops at once.
    again = kt.Tuner(oracle=CyclingOracle(objective="val_accuracy"), hypermodel=FitDigits(),
                     directory=str(tmp_path), project_name="cyc")
    again.search(x[:300], y[:300], epochs=1, validation_data=(x[300:500], y[300:500]), verbose=0)
    assert len(_study(tmp_path, "cyc").trials) == 3


class Quadratic(kt.RandomSearch):
    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> float:
        return (trial.hyperparameters.Choice("x", [1, 2, 3]) - 2) ** 2


def test_random_search_without_max_trials_runs_until_the_space_is_exhausted(tmp_path: Path) -> None:
    tuner = Quadratic(max_trials=None, seed=5, directory=str(tmp_path), project_name="exh", overwrite=True)
    tuner.search(verbose=0)  # keras-tuner's own random proposals, until they only repeat
    assert len(_study(tmp_path, "exh").trials) == 3
    # "x" is registered in run_trial: the first trial uses its default (as in keras-tuner).
    assert sorted(t.hyperparameters["x"] for t in tuner.oracle.trials.values()) == [1, 2, 3]
    assert tuner.get_best_hyperparameters(1)[0]["x"] == 2


# ---------------------------------------------------------------------------- hyperband


@pytest.mark.parametrize(("max_epochs", "factor"), [(10, 3), (2, 3), (9, 3), (27, 3), (100, 3), (8, 2), (81, 3)])
def test_hyperband_counts_and_brackets_are_keras_tuners(max_epochs: int, factor: int) -> None:
    reference = keras_tuner.oracles.HyperbandOracle(objective="loss", max_epochs=max_epochs, factor=factor)
    brackets = reference._get_num_brackets()
    schedule = HyperbandSchedule(max_epochs, factor)
    assert schedule.brackets == brackets
    for b in range(brackets):
        for r in range(b + 1):
            assert schedule.size(b, r) == reference._get_size(b, r)
            assert schedule.epochs(b, r) == reference._get_epochs(b, r)
    first_rounds = sum(reference._get_size(b, 0) for b in range(brackets))
    assert schedule.trials_per_iteration == hyperband_bracket_trials(max_epochs, factor) == first_rounds
    assert hyperband_bracket_trials(10, 3) == 22 and hyperband_bracket_trials(2, 3) == 2


def declare_x(hp: Any) -> None:
    hp.Float("x", 0.0, 1.0)


class HyperbandBlackBox(kt.Hyperband):
    """No Keras: the objective is returned directly, to count trials and brackets quickly."""

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> float:
        return trial.hyperparameters["x"]


def test_hyperband_runs_keras_tuners_number_of_configurations(tmp_path: Path) -> None:
    real = type("RealHB", (keras_tuner.Hyperband,), {"run_trial": HyperbandBlackBox.run_trial})
    reference = real(declare_x, objective="loss", max_epochs=10, factor=3, directory=str(tmp_path / "kt"), seed=1)
    reference.search(verbose=0)
    kt_first_rounds = [t for t in reference.oracle.trials.values() if t.hyperparameters.values["tuner/round"] == 0]

    tuner = HyperbandBlackBox(declare_x, objective="loss", max_epochs=10, factor=3, hyperband_iterations=2, seed=1,
                              directory=str(tmp_path), project_name="hb22", overwrite=True)
    tuner.search(verbose=0)
    study = _study(tmp_path, "hb22")
    assert len(kt_first_rounds) == 22 and len(study.trials) == 2 * 22
    brackets = [tuple(t.system_attrs[BRACKET_ATTR]) for t in sorted(study.trials, key=lambda t: t.number)]
    one_iteration = [2] * 12 + [1] * 6 + [0] * 4  # the most aggressive bracket first, as keras-tuner
    assert brackets == [(0, b) for b in one_iteration] + [(1, b) for b in one_iteration]
    kt_brackets = sorted(t.hyperparameters.values["tuner/bracket"] for t in kt_first_rounds)
    assert kt_brackets == sorted(one_iteration)


def test_hyperband_pruner_keeps_keras_tuners_round_sizes(tmp_path: Path) -> None:
    """Bracket 1 of max_epochs=9, factor=3: 5 configurations trained 3 epochs, the best 2 go on
    to 9. A configuration at its round's end goes on unless 2 bracket-mates already scored
    better there, or 2 already went on."""
    schedule = HyperbandSchedule(9, 3)
    assert (schedule.size(1, 0), schedule.size(1, 1), schedule.epochs(1, 0)) == (5, 2, 3)
    pruner = HyperbandPruner(schedule)
    storage = f"sqlite:///{tmp_path / 'p.db'}"

    def study_with(*mates: tuple[list[float], int]) -> optuna.Study:
        study = optuna.create_study(storage=storage, direction="maximize")
        for curve, bracket in mates:
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.PRUNED, intermediate_values={i + 1: v for i, v in enumerate(curve)},
                system_attrs={BRACKET_ATTR: [0, bracket]}))
        return study

    def prune(study: optuna.Study, curve: list[float]) -> bool:
        study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={BRACKET_ATTR: [0, 1]},
                                                  intermediate_values={i + 1: v for i, v in enumerate(curve)}))
        return pruner.prune(study, study.get_trials(deepcopy=False)[-1])

    mine = [0.5, 0.6, 0.7]
    assert prune(study_with(), mine) is False  # the first at the round's end goes on
    assert prune(study_with(([0.9, 0.9, 0.9], 1)), mine) is False  # one better: still among the best 2
    assert prune(study_with(([0.9, 0.9, 0.9], 1), ([0.8, 0.8, 0.8], 1)), mine) is True  # two better
    assert prune(study_with(([0.9, 0.9, 0.9], 0), ([0.8, 0.8, 0.8], 0)), mine) is False  # another bracket
    assert prune(study_with(([0.1, 0.1, 0.1, 0.2], 1), ([0.2, 0.2, 0.2, 0.3], 1)), [0.9, 0.95, 0.9]) is True
    assert prune(study_with(([0.9, 0.9, 0.9], 1), ([0.8, 0.8, 0.8], 1)), [0.5, 0.6]) is False  # not a round's end


# ---------------------------------------------------------------------------- failures


def sized_model(hp: Any) -> keras.Model:
    """keras-tuner's failed_trials guide: too large above 1200 parameters (5 of 12 points)."""
    units_1, units_2 = hp.Int("units_1", 10, 40, step=10), hp.Int("units_2", 10, 30, step=10)
    model = keras.Sequential([keras.layers.Input(shape=(20,)), keras.layers.Dense(units_1),
                              keras.layers.Dense(units_2), keras.layers.Dense(1)])
    model.compile(loss="mse")
    n_params = model.count_params()
    if n_params > 1200:
        raise ERROR["raise"](f"Model too large! It contains {n_params} params.")
    return model


ERROR: dict[str, type[Exception]] = {"raise": ValueError}
_X, _Y = np.random.default_rng(0).random((40, 20)), np.random.default_rng(1).random((40, 1))


@pytest.mark.parametrize(("error", "runs_per_failure"), [(ValueError, 2), (keras_tuner.errors.FailedTrialError, 1)])
def test_grid_search_records_failing_builds_as_failed_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             error: type[Exception], runs_per_failure: int) -> None:
    monkeypatch.setitem(ERROR, "raise", error)
    tuner = kt.GridSearch(sized_model, objective="val_loss", max_retries_per_trial=1, max_consecutive_failed_trials=8,
                          directory=str(tmp_path), project_name="grid", overwrite=True)  # builds nothing but defaults
    tuner.search(_X, _Y, validation_data=(_X, _Y), epochs=1, verbose=0)
    statuses = [t.status for t in tuner.oracle.trials.values()]
    assert statuses.count("COMPLETED") == 7 and statuses.count("FAILED") == 5  # keras-tuner's 7 and 5
    study = _study(tmp_path, "grid")
    assert _states(study) == {"COMPLETE": 7, "FAIL": 5 * runs_per_failure}  # ValueError is retried once
    failed = [t for t in tuner.oracle.trials.values() if t.status == "FAILED"]
    assert {(t.hyperparameters["units_1"], t.hyperparameters["units_2"]) for t in failed} == {
        (30, 20), (30, 30), (40, 10), (40, 20), (40, 30)}
    assert all("Model too large!" in t.message for t in failed)


def test_fatal_error_ends_the_search_and_its_trial_stays_visible(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ERROR, "raise", keras_tuner.errors.FatalError)
    args = dict(objective="val_loss", max_consecutive_failed_trials=8, directory=str(tmp_path), project_name="fatal")
    tuner = kt.GridSearch(sized_model, overwrite=True, **args)
    with pytest.raises(kt.errors.FatalError, match="Model too large"):
        tuner.search(_X, _Y, validation_data=(_X, _Y), epochs=1, verbose=0)
    trials = tuner.oracle.trials
    assert [t.status for t in trials.values()] == ["COMPLETED"] * 7 + ["INVALID"]
    fatal = list(trials.values())[-1]
    assert (fatal.hyperparameters["units_1"], fatal.hyperparameters["units_2"]) == (30, 20)
    assert "FatalError: Model too large" in fatal.message
    # The trial is re-queued with its values, like keras-tuner's reloaded ongoing trial: once
    # the bug is fixed, a resumed search reruns it and completes the grid.
    monkeypatch.setitem(ERROR, "raise", keras_tuner.errors.FailedTrialError)
    resumed = kt.GridSearch(sized_model, **args)
    resumed.search(_X, _Y, validation_data=(_X, _Y), epochs=1, verbose=0)
    statuses = [t.status for t in resumed.oracle.trials.values()]
    assert len(statuses) == 12 and statuses.count("COMPLETED") == 7 and statuses.count("FAILED") == 5


# ---------------------------------------------------------------------------- scikit-learn, strategies


def test_sklearn_tuner_runs_through_the_lifecycle(tmp_path: Path, digits: Any) -> None:
    from sklearn import ensemble, linear_model, metrics, model_selection

    def build(hp: Any) -> Any:
        if hp.Choice("model_type", ["random_forest", "ridge"]) == "random_forest":
            return ensemble.RandomForestClassifier(n_estimators=hp.Int("n_estimators", 5, 20, step=5),
                                                   max_depth=hp.Int("max_depth", 2, 6), random_state=0)
        return linear_model.RidgeClassifier(alpha=hp.Float("alpha", 1e-3, 1, sampling="log"))

    x, y = digits
    tuner = kt.SklearnTuner(oracle=kt.oracles.BayesianOptimizationOracle(objective=kt.Objective("score", "max"),
                                                                         max_trials=3, seed=2),
                            hypermodel=build, scoring=metrics.make_scorer(metrics.accuracy_score),
                            cv=model_selection.StratifiedKFold(3), directory=str(tmp_path), project_name="skl",
                            overwrite=True)
    assert isinstance(tuner, keras_tuner.SklearnTuner)
    tuner.search(x[:400], y[:400])
    study = _study(tmp_path, "skl")
    assert _states(study) == {"COMPLETE": 3} and all(0 < t.value <= 1 for t in study.trials)
    best = tuner.get_best_models(1)[0]
    assert best.score(x[400:600], y[400:600]) > 0.5
    assert tuner.get_best_hyperparameters(1)[0]["model_type"] == study.best_params["model_type"]


class StrategyProbe(kt.HyperModel):
    """Records the tf.distribute strategy in effect while the model is built and fitted."""

    seen: list[tuple[str, Any]] = []

    def build(self, hp: Any) -> keras.Model:
        import tensorflow as tf

        type(self).seen.append(("build", tf.distribute.get_strategy()))
        model = dense_model(hp)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    def fit(self, hp: Any, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        import tensorflow as tf

        type(self).seen.append(("fit", tf.distribute.get_strategy()))
        return model.fit(*args, **kwargs)


def test_distribution_strategy_scopes_build_and_fit(tmp_path: Path, digits: Any) -> None:
    import tensorflow as tf

    x, y = digits
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    tuner = kt.RandomSearch(StrategyProbe(), objective="val_accuracy", max_trials=2, distribution_strategy=strategy,
                            directory=str(tmp_path), project_name="dist", overwrite=True)
    StrategyProbe.seen.clear()
    tuner.search(x[:200], y[:200], epochs=1, validation_data=(x[200:300], y[200:300]), verbose=0)
    assert _states(_study(tmp_path, "dist")) == {"COMPLETE": 2}
    assert [kind for kind, _ in StrategyProbe.seen] == ["build", "fit"] * 2
    assert all(seen is strategy for _, seen in StrategyProbe.seen)
    assert tuner.get_best_models(1)[0].distribute_strategy is strategy  # load_model builds under it too


# ---------------------------------------------------------------------------- console, import


class Parabola(keras_tuner.RandomSearch):
    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> float:
        hp = trial.hyperparameters
        return (hp.Float("x", -1.0, 1.0) - 0.5) ** 2 + hp.Choice("shift", [0.0, 1.0])


class ServiceParabola(kt.RandomSearch):
    run_trial = Parabola.run_trial


@pytest.mark.parametrize("verbose", [None, 1, 0])
def test_console_output_is_keras_tuners(tmp_path: Path, verbose: int | None) -> None:
    printed = {}
    kwargs = {} if verbose is None else {"verbose": verbose}
    for name, cls in (("keras_tuner", Parabola), ("tuner_service", ServiceParabola)):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            tuner = cls(max_trials=3, seed=1, directory=str(tmp_path / name), project_name="p", overwrite=True)
            tuner.search(**kwargs)
            tuner.results_summary(2)
            tuner.search_space_summary()
        printed[name] = buffer.getvalue()
    assert structure(printed["tuner_service"]) == structure(printed["keras_tuner"])
    shown = printed["tuner_service"].count("Search: Running Trial #")
    assert shown == (0 if verbose == 0 else 3)
    assert "Results summary" in printed["tuner_service"] and "Search space summary" in printed["tuner_service"]


_IMPORT_PROBE = """
import json, logging, os, warnings
import keras, keras_tuner, optuna  # what the drop-in itself imports: their effects are theirs
before = dict(os.environ)
filters = [repr(f) for f in warnings.filters]
levels = {n: logging.getLogger(n).level for n in ("", "optuna", "tensorflow", "absl", "keras_tuner")}
import tuner_service.keras_tuner
env = {k: (before.get(k), os.environ.get(k)) for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}
print(json.dumps({"env": env, "filters": filters == [repr(f) for f in warnings.filters],
                  "levels": levels == {n: logging.getLogger(n).level for n in levels}}))
"""


def test_import_changes_no_environment_logging_or_warnings() -> None:
    base = {k: v for k, v in ENV.items() if not k.startswith(("TF_", "TUNER_SERVICE_"))}
    result = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, env=base,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"env": {}, "filters": True, "levels": True}
    # And from a fresh interpreter: importing the drop-in first changes exactly what importing Keras does.
    changed = {}
    for module in ("keras", "tuner_service.keras_tuner"):
        code = (f"import json, os; b = dict(os.environ); import {module}; "
                "print(json.dumps(sorted(k for k in set(b) | set(os.environ) if b.get(k) != os.environ.get(k))))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=base, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        changed[module] = json.loads(result.stdout.strip().splitlines()[-1])
    assert changed["tuner_service.keras_tuner"] == changed["keras"]
    assert "TF_ENABLE_ONEDNN_OPTS" not in changed["keras"] and "TF_CPP_MIN_LOG_LEVEL" not in changed["keras"]


def test_public_names_are_keras_tuners() -> None:
    for name in ("HyperModel", "HyperParameters", "Objective", "Oracle", "synchronized"):
        assert getattr(kt, name) is getattr(keras_tuner, name)
    for name in ("BayesianOptimizationOracle", "GridSearchOracle", "HyperbandOracle", "RandomSearchOracle"):
        assert getattr(kt.oracles, name) is getattr(keras_tuner.oracles, name)
    assert kt.errors.FatalError is keras_tuner.errors.FatalError
    assert kt.applications.HyperResNet is keras_tuner.applications.HyperResNet
    for name in ("Tuner", "RandomSearch", "BayesianOptimization", "Hyperband", "GridSearch", "SklearnTuner"):
        assert issubclass(getattr(kt, name), getattr(keras_tuner, name)), name
        assert getattr(kt.tuners, name) is getattr(kt, name)
    assert kt.engine.tuner.Tuner is kt.Tuner and kt.engine.base_tuner.BaseTuner is kt.BaseTuner
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from tuner_service.keras_tuner.applications import HyperXception  # noqa: F401
