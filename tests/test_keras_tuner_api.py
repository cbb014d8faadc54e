"""The drop-in keras-tuner API (``import tuner_service.keras_tuner as kt``) on real tiny Keras
models and digits: results with keras-tuner's semantics, agreement with the stored Optuna
trials and the CLI, resuming, worker processes, and bad input. Oracles, ``kt.Tuner``
subclasses, failures and the console are in test_keras_tuner_oracles.py."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna
import pytest
from conftest import ENV, cli
from optuna.trial import TrialState
from sklearn.datasets import load_digits

import tuner_service.keras_tuner as kt
from tuner_service import study as study_mod
from tuner_service.keras_tuner import _processes


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype("float32")
    x_tr, x_val, y_tr, y_val = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    return x_tr, y_tr, x_val, y_val


def build_model(hp: Any) -> keras.Model:
    """A conditional space: the number of layers decides which units_i exist."""
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten()])
    for i in range(hp.Int("num_layers", 1, 2)):
        model.add(keras.layers.Dense(hp.Int(f"units_{i}", 8, 32, step=8), activation="relu"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    lr = hp.Float("learning_rate", 1e-3, 2e-2, sampling="log")
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class CountingHyperModel(kt.HyperModel):
    """Counts fits, to prove a resumed search reruns nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.fits = 0

    def build(self, hp: Any) -> keras.Model:
        return build_model(hp)

    def fit(self, hp: Any, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        self.fits += 1
        return model.fit(*args, **kwargs)


class NormalizingHyperModel(kt.HyperModel):
    """Tunes a preprocessing flag in fit(), as in keras-tuner's "tune the fit" guide."""

    def __init__(self) -> None:
        super().__init__()
        self.callback_types: list[list[str]] = []

    def build(self, hp: Any) -> keras.Model:
        model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten(),
                                  keras.layers.Dense(hp.Choice("units", [16, 32]), activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    def fit(self, hp: Any, model: keras.Model, x: Any, y: Any, validation_data: Any = None, **kwargs: Any) -> Any:
        self.callback_types.append([type(c).__name__ for c in kwargs.get("callbacks", [])])
        if hp.Boolean("normalize"):
            norm = keras.layers.Normalization(axis=None)
            norm.adapt(x)
            x = norm(x)
            validation_data = (norm(validation_data[0]), validation_data[1])
        return model.fit(x, y, validation_data=validation_data, **kwargs)


def _study(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / name}.db")


def _states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ---------------------------------------------------------------------------- random search


def test_random_search_results_match_keras_tuner_and_storage(
    tmp_path: Path, digits: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    x_tr, y_tr, x_val, y_val = digits
    hypermodel = CountingHyperModel()
    tuner = kt.RandomSearch(hypermodel, objective="val_accuracy", max_trials=3, seed=3,
                            directory=str(tmp_path), project_name="rs", overwrite=True)
    tuner.search(x_tr, y_tr, epochs=2, validation_data=(x_val, y_val), verbose=0)
    assert hypermodel.fits == 3

    study = _study(tmp_path, "rs")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == len(study.trials) == len(tuner.oracle.trials) == 3

    best_hp = tuner.get_best_hyperparameters(1)[0]
    assert isinstance(best_hp, kt.HyperParameters)
    assert best_hp.values == study.best_params
    assert best_hp.get("num_layers") == study.best_params["num_layers"]
    best_trial = tuner.oracle.get_best_trials(1)[0]
    assert best_trial.score == study.best_value
    assert best_trial.trial_id == str(study.best_trial.number)
    assert best_trial.status == "COMPLETED"

    # get_best_models: the best epoch's weights, not the last epoch's.
    model = tuner.get_best_models(1)[0]
    accuracy = model.evaluate(x_val, y_val, verbose=0, return_dict=True)["accuracy"]
    history = study.best_trial.system_attrs["history"]["val_accuracy"]
    best_epoch = study.best_trial.user_attrs["best_epoch"]
    assert abs(accuracy - history[best_epoch - 1]) < 1e-6
    assert abs(accuracy - study.best_value) < 1e-6
    assert os.path.isfile(os.path.join(tuner.project_dir, f"trial_{best_trial.trial_id}", "checkpoint.weights.h5"))

    # keras-tuner's Trial API, backed by the stored per-epoch history.
    assert best_trial.metrics.get_best_value("val_accuracy") == pytest.approx(study.best_value)
    assert best_trial.metrics.get_last_value("val_accuracy") == pytest.approx(history[-1])
    assert [o.step for o in best_trial.metrics.get_history("val_accuracy")] == [0, 1]
    assert best_trial.best_step == best_epoch - 1
    best_trial.summary()
    tuner.results_summary(2)
    tuner.search_space_summary()
    out = capsys.readouterr().out
    assert f"Trial {best_trial.trial_id} summary" in out and "Results summary" in out
    assert "Search space summary" in out and "num_layers (Int)" in out

    # What a worker records, for the CLI and the dashboard.
    attrs = study.best_trial.user_attrs
    for key in ("param_count", "best_epoch", "epochs_run", "fit_seconds", "host", "pid", "keras_backend"):
        assert key in attrs, key
    for key in ("model_summary", "history"):  # long texts: system attrs, off the dashboard's attr list
        assert key in study.best_trial.system_attrs, key
    result = cli("best", "rs", "--storage", f"sqlite:///{tmp_path / 'rs'}.db", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert f'"number": {study.best_trial.number}' in result.stdout and "val_accuracy" in result.stdout

    # Re-fit the best configuration on train + validation, keras-tuner style.
    refit = tuner.hypermodel.build(best_hp)
    refit.fit(np.concatenate([x_tr, x_val]), np.concatenate([y_tr, y_val]), epochs=1, verbose=0)

    # overwrite=False on a finished project: nothing is rerun.
    again = CountingHyperModel()
    resumed = kt.RandomSearch(again, objective="val_accuracy", max_trials=3, seed=3,
                              directory=str(tmp_path), project_name="rs")
    resumed.search(x_tr, y_tr, epochs=2, validation_data=(x_val, y_val), verbose=0)
    assert again.fits == 0
    assert len(_study(tmp_path, "rs").trials) == 3
    assert resumed.get_best_hyperparameters(1)[0].values == best_hp.values


class _StopOnSecondTrial(keras.callbacks.Callback):
    """Simulates Ctrl-C during the second trial (class state: callbacks are deep-copied)."""

    trials_started = 0

    def on_train_begin(self, logs: Any = None) -> None:
        type(self).trials_started += 1
        if type(self).trials_started == 2:
            raise KeyboardInterrupt


def test_interrupted_search_resumes_to_exactly_max_trials(tmp_path: Path, digits: Any) -> None:
    x_tr, y_tr, x_val, y_val = digits
    args = dict(objective="val_accuracy", max_trials=3, seed=5, directory=str(tmp_path), project_name="cut")
    first = CountingHyperModel()
    tuner = kt.RandomSearch(first, overwrite=True, **args)
    with pytest.raises(KeyboardInterrupt):
        tuner.search(x_tr[:400], y_tr[:400], epochs=1, validation_data=(x_val, y_val), verbose=0,
                     callbacks=[_StopOnSecondTrial()])
    assert tuner.remaining_trials == 2
    handed_back = [t for t in _study(tmp_path, "cut").trials if t.state == TrialState.WAITING and t.params]
    assert len(handed_back) == 1  # the interrupted trial, re-queued with its parameters

    second = CountingHyperModel()
    resumed = kt.RandomSearch(second, **args)
    resumed.search(x_tr[:400], y_tr[:400], epochs=1, validation_data=(x_val, y_val), verbose=0)
    assert second.fits == 2
    study = _study(tmp_path, "cut")
    assert _states(study) == {"COMPLETE": 3, "FAIL": 1}
    assert len(resumed.oracle.trials) == 3 and resumed.remaining_trials == 0
    retry = [t for t in study.trials if t.system_attrs.get("retry_history")][0]
    assert retry.params == handed_back[0].params

    # A larger max_trials on resume runs only the extra trials (keras-tuner's remaining_trials).
    third = CountingHyperModel()
    kt.RandomSearch(third, **{**args, "max_trials": 4}).search(
        x_tr[:400], y_tr[:400], epochs=1, validation_data=(x_val, y_val), verbose=0)
    assert third.fits == 1 and _states(_study(tmp_path, "cut")) == {"COMPLETE": 4, "FAIL": 1}


# ---------------------------------------------------------------------------- hyperband, bayesian, grid


def test_hyperband_with_tuned_fit_and_user_callbacks(tmp_path: Path, digits: Any) -> None:
    x_tr, y_tr, x_val, y_val = digits
    hypermodel = NormalizingHyperModel()
    tuner = kt.Hyperband(hypermodel, objective="val_accuracy", max_epochs=3, factor=3, seed=2,
                         directory=str(tmp_path), project_name="hb", overwrite=True)
    tuner.search(x_tr[:600], y_tr[:600], validation_data=(x_val, y_val), verbose=0,
                 callbacks=[keras.callbacks.EarlyStopping(patience=2)])
    study = _study(tmp_path, "hb")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 5  # keras-tuner's count for one iteration of max_epochs=3, factor=3: brackets of 3 and 2
    assert study.user_attrs["spec"]["tuner"] == {"name": "hyperband", "options": {
        "factor": 3, "min_epochs": 1, "hyperband_iterations": 1, "sampler": "random"}}
    assert [t.system_attrs["kt_bracket"] for t in trials] == [[0, 1]] * 3 + [[0, 0]] * 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # Bracket 1 trains its 3 configurations 1 epoch, then keeps 1 of them to 3 epochs.
    assert sum(t.user_attrs["epochs_run"] > 1 for t in trials[:3]) <= 1
    assert all(t.user_attrs["epochs_run"] == 1 for t in trials[:3] if t.state == TrialState.PRUNED)
    assert all(t.intermediate_values for t in trials)
    # "normalize" is first registered in fit(): as in keras-tuner, the first trial uses its
    # default, then it is part of the space and drawn like the others.
    assert "normalize" not in trials[0].params and all({"normalize", "units"} <= set(t.params) for t in trials[1:])
    # The user's EarlyStopping reached every fit, next to the tuner's own callbacks.
    assert all(types[0] == "EarlyStopping" and "SaveBestEpoch" in types for types in hypermodel.callback_types)
    best = tuner.get_best_hyperparameters(1)[0]
    # As keras-tuner's, the best values hold every hyperparameter of the space: when trial 0 is
    # best, the "normalize" it never drew (registered in its fit) is there with its default.
    values = {k: v for k, v in best.values.items() if not k.startswith("tuner/")}
    assert values == {"normalize": False, **study.best_params}
    assert best.values["tuner/epochs"] == 3 and best.values["tuner/bracket"] in (0, 1)
    assert {t.status for t in tuner.oracle.trials.values()} == {"COMPLETED"}  # keras-tuner's round trials


def test_builds_do_not_run_a_full_garbage_collection_each(tmp_path: Path, digits: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """keras-tuner runs two full collections per build (clear_session's and its own; ~0.25 s
    each in a large process); the drop-in clears the session as the service's runner does,
    collecting every GC_EVERY (10) builds."""
    import gc

    calls = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(a) or collect(*a))
    x_tr, y_tr, x_val, y_val = digits
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=4, seed=1, directory=str(tmp_path),
                            project_name="gc", overwrite=True)
    tuner.search(x_tr[:200], y_tr[:200], epochs=1, validation_data=(x_val, y_val), verbose=0)
    assert _states(_study(tmp_path, "gc")) == {"COMPLETE": 4}
    assert calls == []  # keras-tuner: 8
    import cloudpickle

    assert cloudpickle.loads(cloudpickle.dumps(tuner)).project_name == "gc"  # as search(workers=N) sends it


def test_bayesian_optimization(tmp_path: Path, digits: Any) -> None:
    x_tr, y_tr, x_val, y_val = digits
    tuner = kt.BayesianOptimization(build_model, objective="val_accuracy", max_trials=4, num_initial_points=2,
                                    alpha=1e-3, beta=3.0, seed=4, directory=str(tmp_path), project_name="bo",
                                    overwrite=True)
    tuner.search(x_tr[:600], y_tr[:600], epochs=1, validation_data=(x_val, y_val), verbose=0)
    study = _study(tmp_path, "bo")
    assert _states(study) == {"COMPLETE": 4}
    assert study.user_attrs["spec"]["tuner"]["options"] == {"num_initial_points": 2, "alpha": 1e-3, "acquisition": "ucb",
                                                           "beta": 3.0}  # keras-tuner's model
    assert type(tuner._get_study().sampler).__name__ == "BayesianSampler"
    assert tuner.get_best_hyperparameters(1)[0].values == study.best_params


def build_grid_model(hp: Any) -> keras.Model:
    model = keras.Sequential([keras.layers.Input(shape=(8, 8)), keras.layers.Flatten()])
    if hp.Boolean("hidden"):
        model.add(keras.layers.Dense(hp.Choice("units", [16, 8]), activation="relu"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile(optimizer=hp.Choice("optimizer", ["adam", "sgd"]), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_grid_search_runs_every_combination_once(tmp_path: Path, digits: Any) -> None:
    x_tr, y_tr, x_val, y_val = digits
    tuner = kt.GridSearch(build_grid_model, objective="val_accuracy", directory=str(tmp_path),
                          project_name="grid", overwrite=True)
    tuner.search(x_tr[:100], y_tr[:100], epochs=1, validation_data=(x_val[:100], y_val[:100]), verbose=0)
    study = _study(tmp_path, "grid")
    points = [t.hyperparameters.values for t in tuner.oracle.trials.values()]
    # keras-tuner's order: defaults first, the last hyperparameter varying fastest. "units" is
    # only registered when hidden=True, so (as keras-tuner's GridSearch) the first such trials
    # use its default and the grid then continues over it: the same 6 points keras-tuner runs.
    assert points == [
        {"hidden": False, "optimizer": "adam"}, {"hidden": False, "optimizer": "sgd"},
        {"hidden": True, "optimizer": "adam", "units": 16}, {"hidden": True, "optimizer": "sgd", "units": 16},
        {"hidden": True, "optimizer": "adam", "units": 8}, {"hidden": True, "optimizer": "sgd", "units": 8},
    ]
    assert _states(study) == {"COMPLETE": 6}
    assert study.user_attrs["tuner"] == "gridsearch"

    # A hyperparameter first registered in HyperModel.fit joins the grid after the first
    # trial (keras-tuner's GridSearch does the same): every combination runs once.
    tuner = kt.GridSearch(NormalizingHyperModel(), objective="val_accuracy", directory=str(tmp_path),
                          project_name="gridfit", overwrite=True)
    tuner.search(x_tr[:100], y_tr[:100], epochs=1, validation_data=(x_val, y_val), verbose=0)
    study = _study(tmp_path, "gridfit")
    ran = sorted((t.params["units"], t.params.get("normalize", False)) for t in study.trials)
    assert ran == [(16, False), (16, True), (32, False), (32, True)]
    assert _states(study) == {"COMPLETE": 4} and tuner.remaining_trials == 0


# ---------------------------------------------------------------------------- objectives and executions


def test_list_objective_is_keras_tuners_combined_objective(tmp_path: Path, digits: Any) -> None:
    x_tr, y_tr, x_val, y_val = digits
    tuner = kt.RandomSearch(build_model, objective=["val_accuracy", kt.Objective("val_loss", "min")],
                            max_trials=2, seed=1, directory=str(tmp_path), project_name="multi", overwrite=True)
    tuner.search(x_tr[:400], y_tr[:400], epochs=2, validation_data=(x_val, y_val), verbose=0)
    study = _study(tmp_path, "multi")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for t in study.trials:
        h = t.system_attrs["history"]
        combined = [loss - acc for loss, acc in zip(h["val_loss"], h["val_accuracy"], strict=True)]
        assert t.value == pytest.approx(min(combined))
    best = tuner.oracle.get_best_trials(1)[0]
    assert best.metrics.get_best_value("multi_objective") == pytest.approx(study.best_value)


class TensorBoardProbe(kt.HyperModel):
    """TensorBoard is not installed here: record the log_dir the tuner set, then drop the callback."""

    log_dirs: list[str] = []

    def build(self, hp: Any) -> keras.Model:
        return build_model(hp)

    def fit(self, hp: Any, model: keras.Model, *args: Any, callbacks: Any = (), **kwargs: Any) -> Any:
        boards = [c for c in callbacks if isinstance(c, keras.callbacks.TensorBoard)]
        type(self).log_dirs += [c.log_dir for c in boards]
        return model.fit(*args, callbacks=[c for c in callbacks if c not in boards], **kwargs)


def test_executions_average_and_tensorboard_dir_per_trial(tmp_path: Path, digits: Any) -> None:
    x_tr, y_tr, x_val, y_val = digits
    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path / "logs"))
    tuner = kt.RandomSearch(TensorBoardProbe(), objective="val_accuracy", max_trials=1, executions_per_trial=2,
                            seed=1, directory=str(tmp_path), project_name="exec", overwrite=True)
    tuner.search(x_tr[:400], y_tr[:400], epochs=2, validation_data=(x_val, y_val), verbose=0, callbacks=[board])
    trial = _study(tmp_path, "exec").trials[0]
    per_execution = [max(h["val_accuracy"]) for h in trial.system_attrs["execution_histories"]]
    assert len(per_execution) == 2
    assert trial.value == pytest.approx(np.mean(per_execution))
    tid = tuner.oracle.get_best_trials(1)[0].trial_id
    assert TensorBoardProbe.log_dirs == [str(tmp_path / "logs" / tid / f"execution{i}") for i in range(2)]
    assert board.log_dir == str(tmp_path / "logs")  # the user's callback itself is untouched


# ---------------------------------------------------------------------------- worker processes


def test_spill_files_round_trip_memory_mapped(tmp_path: Path) -> None:
    data = ((np.arange(12.0).reshape(3, 4), {"a": np.ones(3, "int64"), "b": [np.zeros(2)]}), {"epochs": 2})
    spilled = _processes._spill(data, str(tmp_path), itertools.count())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["array_0.npy", "array_1.npy", "array_2.npy"]
    back = _processes._unspill(spilled)
    assert isinstance(back[0][0], np.memmap) and not back[0][0].flags.writeable
    np.testing.assert_array_equal(back[0][0], data[0][0])
    np.testing.assert_array_equal(back[0][1]["b"][0], np.zeros(2))
    assert back[1] == {"epochs": 2}


def test_two_worker_processes_share_the_budget(tmp_path: Path, digits: Any) -> None:
    x_tr, y_tr, x_val, y_val = digits
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=4, seed=7,
                            directory=str(tmp_path), project_name="par", overwrite=True)
    tuner.search(x_tr[:600], y_tr[:600], epochs=1, validation_data=(x_val, y_val), verbose=0,
                 callbacks=[keras.callbacks.EarlyStopping(patience=1)], workers=2)
    study = _study(tmp_path, "par")
    assert _states(study) == {"COMPLETE": 4}
    pids = {t.user_attrs["pid"] for t in study.trials}
    assert len(pids) == 2 and os.getpid() not in pids
    assert not any((tmp_path / "par" / "spill").iterdir())  # spill files removed
    model = tuner.get_best_models(1)[0]  # checkpoints written by the workers
    accuracy = model.evaluate(x_val, y_val, verbose=0, return_dict=True)["accuracy"]
    assert abs(accuracy - study.best_value) < 1e-6


# ---------------------------------------------------------------------------- refusals


def test_bad_arguments_name_the_value_and_the_fix(tmp_path: Path, digits: Any) -> None:
    common = dict(objective="val_accuracy", max_trials=1, directory=str(tmp_path), project_name="no")
    with pytest.raises(ValueError, match=r"Unrecognized arguments \['max_modelsize'\].*supported: .*max_model_size"):
        kt.RandomSearch(build_model, **common, max_modelsize=10)
    with pytest.raises(ValueError, match="project_name 'my project' is not valid"):
        kt.RandomSearch(build_model, objective="val_accuracy", max_trials=1, project_name="my project")
    with pytest.raises(ValueError, match="max_trials must be at least 1 .got 0."):
        kt.RandomSearch(build_model, **{**common, "max_trials": 0})
    with pytest.raises(ValueError, match="Expected `oracle` argument to be an instance of `Oracle`"):
        kt.Tuner(oracle="random", hypermodel=build_model, directory=str(tmp_path))
    with pytest.warns(DeprecationWarning, match="logger"):  # keras-tuner accepts and ignores it
        kt.RandomSearch(build_model, **common, logger=object(), overwrite=True)

    x_tr, y_tr, x_val, y_val = digits
    tuner = kt.RandomSearch(build_model, **common)

    def batches() -> Any:
        yield x_tr[:32], y_tr[:32]

    with pytest.raises(NotImplementedError, match="workers=1"):
        tuner.search(batches(), epochs=1, workers=2)
    import tensorflow as tf

    with pytest.raises(NotImplementedError, match=r"tf\.data\.Dataset.*workers=1"):
        tuner.search(tf.data.Dataset.from_tensor_slices((x_tr, y_tr)).batch(32), epochs=1, workers=2)
    study = _study(tmp_path, "no")
    assert _states(study) == {}  # nothing ran: the one trial is still a slot of the budget
    assert study_mod.remaining_budget(study._storage, study._study_id) == 1


def test_declared_hyperparameters_and_entry_rules(tmp_path: Path, digits: Any) -> None:
    x_tr, y_tr, x_val, y_val = digits
    declared = kt.HyperParameters()
    declared.Choice("num_layers", [2])
    declared.Fixed("learning_rate", 5e-3)
    with pytest.raises(RuntimeError, match="allow_new_entries"):  # as keras-tuner, at construction
        kt.RandomSearch(build_model, objective="val_accuracy", max_trials=1, hyperparameters=declared,
                        allow_new_entries=False, directory=str(tmp_path), project_name="strict")
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=1, hyperparameters=declared,
                            tune_new_entries=False, directory=str(tmp_path), project_name="decl", overwrite=True)
    tuner.search(x_tr[:200], y_tr[:200], epochs=1, validation_data=(x_val, y_val), verbose=0)
    trial = _study(tmp_path, "decl").trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.params == {"num_layers": 2, "learning_rate": 5e-3}  # the others are not tuned
    best = tuner.get_best_hyperparameters(1)[0]
    assert best.values == {"num_layers": 2, "learning_rate": 5e-3, "units_0": 8, "units_1": 8}  # defaults


def test_failing_trials_stop_the_search_with_the_reason(tmp_path: Path, digits: Any) -> None:
    x_tr, y_tr, _, _ = digits
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=3, max_model_size=10,
                            directory=str(tmp_path), project_name="big", overwrite=True)
    with pytest.raises(RuntimeError, match="(?s)consecutive failures exceeded the limit of 3.*Oversized model"):
        tuner.search(x_tr[:100], y_tr[:100], epochs=1, verbose=0)
    assert _states(_study(tmp_path, "big")) == {"FAIL": 3}

    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=2, max_consecutive_failed_trials=2,
                            directory=str(tmp_path), project_name="noval", overwrite=True)
    with pytest.raises(RuntimeError, match="'val_accuracy' is not logged by the model .*pass validation data"):
        tuner.search(x_tr[:100], y_tr[:100], epochs=1, verbose=0)  # no validation data: no val_accuracy
    assert [t.status for t in tuner.oracle.trials.values()] == ["FAILED", "FAILED"]


class BlackBoxTuner(kt.RandomSearch):
    """keras-tuner's "tune anything" pattern: run_trial returns the objective, no hypermodel."""

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> float:
        x = trial.hyperparameters.Float("x", -1.0, 1.0)
        return x * x + 1


def test_run_trial_override_without_hypermodel(tmp_path: Path) -> None:
    tuner = BlackBoxTuner(max_trials=3, seed=1, directory=str(tmp_path), project_name="bb", overwrite=True)
    tuner.search()
    study = _study(tmp_path, "bb")
    assert _states(study) == {"COMPLETE": 3}
    assert study.direction == optuna.study.StudyDirection.MINIMIZE  # keras-tuner's default objective
    best = tuner.get_best_hyperparameters(1)[0]
    assert study.best_value == pytest.approx(best["x"] ** 2 + 1)
    with pytest.raises(ValueError, match="hypermodel=None"):
        kt.RandomSearch(max_trials=1, directory=str(tmp_path), project_name="none")


KILLED_SCRIPT = """
import sys, time
import keras
import numpy as np
import tuner_service.keras_tuner as kt
from sklearn.datasets import load_digits

class Hang(keras.callbacks.Callback):
    trials = 0
    def on_train_begin(self, logs=None):
        type(self).trials += 1
        if type(self).trials == 2:
            open(sys.argv[2], "w").close()
            time.sleep(120)

def build_model(hp):
    model = keras.Sequential([keras.layers.Input(shape=(64,)), keras.layers.Dense(hp.Choice("units", [8, 16]),
                              activation="relu"), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model

d = load_digits()
tuner = kt.RandomSearch(build_model, objective="accuracy", max_trials=3, seed=1, directory=sys.argv[1],
                        project_name="killed", overwrite=True)
tuner.search(d.data[:200] / 16, d.target[:200], epochs=1, verbose=0, callbacks=[Hang()])
"""


def test_search_killed_outright_resumes_at_once(tmp_path: Path) -> None:
    script, marker = tmp_path / "killed.py", tmp_path / "second_trial_started"
    script.write_text(KILLED_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(marker)], env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the search did not reach its second trial"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = _study(tmp_path, "killed")
    assert _states(killed) == {"COMPLETE": 1, "RUNNING": 1}
    assert study_mod.remaining_budget(killed._storage, killed._study_id) == 1

    d = load_digits()
    tuner = kt.RandomSearch(_killed_build, objective="accuracy", max_trials=3, seed=1, directory=str(tmp_path),
                            project_name="killed")
    tuner.search(d.data[:200] / 16, d.target[:200], epochs=1, verbose=0)
    study = _study(tmp_path, "killed")
    assert _states(study) == {"COMPLETE": 3, "FAIL": 1}
    # Reclaimed because its process is gone, not after the heartbeat grace period ("heartbeat stale").
    assert "is gone" in [t for t in study.trials if t.state == TrialState.FAIL][0].user_attrs["fail_reason"]


def _killed_build(hp: Any) -> keras.Model:
    model = keras.Sequential([keras.layers.Input(shape=(64,)), keras.layers.Dense(hp.Choice("units", [8, 16]),
                              activation="relu"), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
