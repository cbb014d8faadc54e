"""Every Keras model style through search, retrain and load: the wide-and-deep example (two
inputs, an auxiliary output), a keras.Model subclass, a functional model with a custom layer.
The real CLI in a subprocess; the loaded model is checked against the test metrics retrain
recorded, on the study's own test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import MODELS, cli, write_study

ROOT = Path(__file__).parent.parent
STYLES = MODELS / "styles.py"


def retrained(directory: Path, study: str) -> tuple[Path, dict]:
    runs = sorted((directory / "models" / study).glob("retrain-*"))
    assert len(runs) == 1
    return runs[0], json.loads((runs[0] / "metrics.json").read_text())


def study_data(directory: Path, study: str):
    from tuner_service import data as data_mod
    from tuner_service.spec import StudySpec

    s = optuna.load_study(study_name=study, storage=f"sqlite:///{directory / 't.db'}")
    spec = StudySpec.model_validate(s.user_attrs["spec"])
    return s, data_mod.load(spec.data, spec.seed)


@pytest.mark.slow
def test_wide_and_deep_example_searches_with_two_workers_retrains_and_loads(workdir):
    import keras

    import tuner_service

    study_file = ROOT / "studies" / "wide_deep.yaml"
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", "--workers", "2", "--max-trials", "4",
              "--max-epochs", "3", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    study, d = study_data(workdir, "wide_deep")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and len({t.user_attrs["worker"] for t in complete}) == 2
    assert study.direction == optuna.study.StudyDirection.MINIMIZE  # val_main_root_mean_squared_error
    for t in complete:  # the objective is the main output's RMSE, epoch by epoch
        assert t.value == min(t.intermediate_values.values())
        # CSVLogger by name wrote into the trial's own directory, one row per epoch run
        rows = (workdir / "trials" / "wide_deep" / f"trial-{t.number}" / "epochs.csv").read_text().splitlines()
        assert len(rows) == 1 + t.user_attrs["epochs_run"]
    assert set(d.x_train) == {"wide", "deep"} and set(d.y_train) == {"main", "aux"}

    out = cli("retrain", "wide_deep", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    run, metrics = retrained(workdir, "wide_deep")
    assert (run / "callbacks" / f"seed-{metrics['seeds'][0]}" / "epochs.csv").is_file()
    assert metrics["inputs"] == {"wide": {"shape": [None, 5], "dtype": "float32"},
                                 "deep": {"shape": [None, 6], "dtype": "float32"}}
    model = tuner_service.load_model(run)
    main, aux = model.predict({"wide": d.x_test["wide"], "deep": d.x_test["deep"]}, verbose=0)
    assert main.shape == aux.shape == (len(d.y_test["main"]), 1)
    rmse = float(np.sqrt(np.mean((main[:, 0] - d.y_test["main"]) ** 2)))
    assert rmse == pytest.approx(metrics["test_metrics"]["main_root_mean_squared_error"], rel=1e-4)
    # A functional model of built-in layers: plain Keras reads the file as well.
    assert "keras.models.load_model" in metrics["load"]
    again = keras.models.load_model(run / "model.keras")
    np.testing.assert_allclose(again.predict(d.x_test, verbose=0)[0], main, rtol=1e-5, atol=1e-5)


def test_subclassed_model_searches_retrains_and_loads_back_to_its_test_score(workdir, monkeypatch):
    import keras

    import tuner_service
    from tuner_service.hp import fixed

    study_file = write_study(workdir, "sub", model=f"{STYLES}:build_subclassed", budget={"max_trials": 2, "max_epochs": 2})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    out = cli("retrain", "sub", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    run, metrics = retrained(workdir, "sub")
    _, d = study_data(workdir, "sub")
    assert metrics["restore"] == "rebuild" and "tuner_service.load_model" in metrics["load"]

    model = tuner_service.load_model(run)
    assert type(model).__name__ == "MLP"
    score = model.evaluate(d.x_test, d.y_test, return_dict=True, verbose=0)
    assert score["accuracy"] == pytest.approx(metrics["test_metrics"]["accuracy"], abs=1e-6)
    assert score["loss"] == pytest.approx(metrics["test_metrics"]["loss"], rel=1e-5)

    # The weights and hyperparameters beside the model: build_model(hp) + load_weights, by hand.
    monkeypatch.syspath_prepend(str(MODELS))
    from styles import build_subclassed

    hp_values = json.loads((run / "hyperparameters.json").read_text())
    assert hp_values == metrics["params"]
    by_hand = build_subclassed(fixed(hp_values))
    by_hand(d.x_test[:1])
    by_hand.load_weights(run / "model.weights.h5")
    np.testing.assert_allclose(by_hand.predict(d.x_test, verbose=0), model.predict(d.x_test, verbose=0), atol=1e-6)
    # Why the rebuild: Keras' own load cannot recreate the subclass from model.keras.
    with pytest.raises(Exception, match="MLP"):
        keras.models.load_model(run / "model.keras")


def test_custom_layer_in_a_functional_model_loads_through_the_model_source(workdir):
    import keras

    import tuner_service

    study_file = write_study(workdir, "layer", model=f"{STYLES}:build_custom_layer", budget={"max_trials": 1, "max_epochs": 1})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    out = cli("retrain", "layer", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    run, metrics = retrained(workdir, "layer")
    _, d = study_data(workdir, "layer")
    assert metrics["restore"] == "keras" and "custom_objects" in metrics["load"]
    model = tuner_service.load_model(run)
    scale = next(layer for layer in model.layers if type(layer).__name__ == "Scale")
    assert scale.factor == metrics["params"]["factor"]
    score = model.evaluate(d.x_test, d.y_test, return_dict=True, verbose=0)
    assert score["accuracy"] == pytest.approx(metrics["test_metrics"]["accuracy"], abs=1e-6)
    with pytest.raises(TypeError, match="Could not locate class 'Scale'"):
        keras.models.load_model(run / "model.keras")


def test_inputs_and_targets_as_tuples_search_and_retrain(workdir):
    """The form issue 18 saw fail: load_data returning ((x_wide, x_deep), (y, y))."""
    import tuner_service

    multi = MODELS / "multi_io.py"
    study_file = write_study(workdir, "tup", model=f"{multi}:build_model", data={"source": f"{multi}:load_tuples"},
                             objective="val_main_loss", budget={"max_trials": 1, "max_epochs": 2})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    out = cli("retrain", "tup", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    run, metrics = retrained(workdir, "tup")
    _, d = study_data(workdir, "tup")
    assert isinstance(d.x_test, list) and len(d.x_test) == 2
    # the batch size retrain evaluated with: Keras averages a multi-output model's per-output
    # losses over batches, so they depend on it
    score = tuner_service.load_model(run).evaluate(d.x_test, d.y_test, batch_size=64, return_dict=True, verbose=0)
    assert score["main_loss"] == pytest.approx(metrics["test_metrics"]["main_loss"], rel=1e-5)
