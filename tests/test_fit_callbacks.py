"""fit.callbacks and the other fit arguments, through the real CLI: a custom callback class from
the user's file and ReduceLROnPlateau by name run in every trial, built afresh, writing into
the trial's own directory; validation_freq, class_weight and steps_per_epoch reach model.fit."""

from __future__ import annotations

import json

import optuna
import pytest
from conftest import MODELS, cli, write_study

STYLES = MODELS / "styles.py"


def test_custom_and_named_callbacks_run_in_every_trial(workdir):
    callbacks = [
        {f"{STYLES}:RecordEpochs": {"filename": "epochs.jsonl"}},
        # min_delta so large that no epoch after the first improves: the rate halves after epoch 2
        {"ReduceLROnPlateau": {"monitor": "val_loss", "factor": 0.5, "patience": 0, "min_delta": 1000}},
        f"{STYLES}:PrintValTrainRatio",  # the course material's callback, printing to the worker's stdout
    ]
    study_file = write_study(workdir, "cb", budget={"max_trials": 2, "max_epochs": 3}, fit={"callbacks": callbacks})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="cb", storage=f"sqlite:///{workdir / 't.db'}")
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        path = workdir / "trials" / "cb" / f"trial-{t.number}" / "epochs.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        # one fresh callback per trial: exactly this trial's epochs, numbered from 0
        assert [r["epoch"] for r in records] == [0, 1, 2]
        # it saw this trial's fit: the validation accuracy the trial reported, epoch by epoch
        assert [round(r["logs"]["val_accuracy"], 6) for r in records] == \
            [round(t.intermediate_values[step], 6) for step in (1, 2, 3)]
        # ReduceLROnPlateau (a fresh one: no wait count carried over) halved this trial's rate once
        lr = t.params["learning_rate"]
        assert [r["lr"] for r in records] == pytest.approx([lr, lr, lr / 2], rel=1e-5)
    # the course's print callback ran after every epoch of every trial (and the submit check's one)
    assert out.stdout.count("val/train=") == 2 * 3 + 1

    # It reads logs["val_loss"]; retrain has no validation data: one line says so (after Keras'
    # own warnings that ReduceLROnPlateau finds no val_loss to watch).
    out = cli("retrain", "cb", "--storage", "sqlite:///t.db", cwd=workdir)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 1 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "KeyError: 'val_loss'" in errors[0] and "without validation data" in errors[0]


def test_fit_arguments_reach_model_fit(workdir):
    # Every class weighted 0: a training loss of exactly 0 shows the weights reached model.fit.
    fit = {"validation_freq": 2, "class_weight": {k: 0.0 for k in range(10)}, "steps_per_epoch": 4,
           "batch_size": 16, "callbacks": [{f"{STYLES}:RecordEpochs": {"filename": "epochs.jsonl"}}]}
    study_file = write_study(workdir, "args", budget={"max_trials": 1, "max_epochs": 4}, fit=fit)
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    (trial,) = optuna.load_study(study_name="args", storage=f"sqlite:///{workdir / 't.db'}").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    # validation every second epoch: the objective is reported for epochs 2 and 4 only
    assert sorted(trial.intermediate_values) == [2, 4]
    records = [json.loads(line) for line in
               (workdir / "trials" / "args" / "trial-0" / "epochs.jsonl").read_text().splitlines()]
    assert ["val_accuracy" in r["logs"] for r in records] == [False, True, False, True]
    assert [r["batches"] for r in records] == [4, 4, 4, 4]  # steps_per_epoch, not the ~72 batches of the data
    assert [r["logs"]["loss"] for r in records] == [0.0] * 4
    assert trial.user_attrs["epochs_run"] == 4


def test_balanced_class_weight_is_scikit_learns_rule():
    """n_samples / (n_classes * samples of the class), the weights ``class_weight: balanced`` passes."""
    import numpy as np

    from tuner_service.callbacks import balanced_class_weight

    y = np.array([0, 0, 0, 1, 2, 2])
    assert balanced_class_weight(y) == pytest.approx({0: 6 / 9, 1: 6 / 3, 2: 6 / 6})


def test_retrain_builds_fresh_callbacks_for_each_seed_in_its_directory(workdir):
    callbacks = [{f"{STYLES}:RecordEpochs": {"filename": "epochs.jsonl"}}]
    study_file = write_study(workdir, "rt", budget={"max_trials": 1, "max_epochs": 2}, fit={"callbacks": callbacks})
    assert cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir).returncode == 0
    out = cli("retrain", "rt", "--storage", "sqlite:///t.db", "--epochs", "2", "--seeds", "2", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    (run,) = (workdir / "models" / "rt").glob("retrain-*")
    for seed in (1, 2):  # the study's seed is 1
        records = [json.loads(r) for r in (run / "callbacks" / f"seed-{seed}" / "epochs.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == [0, 1]
        assert all("val_loss" not in r["logs"] for r in records)  # trained on train + validation
