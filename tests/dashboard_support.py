"""Shared by the dashboard, notes and report tests: studies built without Keras, and Chromium.

The dashboard, notes and report only read storage, so a study with the user attrs and trial
attrs the service writes, built with Optuna directly, exercises them fully in milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
#: Skip reason when Chromium is missing; never Playwright's own browser download.
NO_CHROMIUM = ("needs Debian's chromium at /usr/bin/chromium (CI installs it: .ci/run); "
               "apt-get install chromium to run this here")

DISTRIBUTIONS = {
    "units": IntDistribution(16, 128),
    "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
    "activation": CategoricalDistribution(["relu", "tanh"]),
}

#: One parameter set per trial; trial 2 (units=128) ends best.
POINTS: list[dict[str, Any]] = [
    {"units": units, "learning_rate": lr, "activation": act}
    for units, lr, act in [(32, 0.01, "relu"), (64, 0.001, "tanh"), (128, 0.003, "relu"), (16, 0.05, "tanh"),
                           (96, 0.0005, "relu")]
]
BEST_NUMBER = 2
EPOCHS = 5


def spec_dict(name: str) -> dict[str, Any]:
    """What ``StudySpec.to_stored()`` writes for a small TPE study."""
    return {
        "name": name,
        "model": "studies/digits_model.py:build_model",
        "data": {"source": "sklearn:digits", "validation_split": 0.2, "test_split": 0.2},
        "objective": {"name": "val_accuracy", "direction": "maximize"},
        "tuner": {"name": "tpe", "options": {"n_startup_trials": 3}},
        "budget": {"max_trials": len(POINTS), "max_epochs": EPOCHS, "timeout": None},
        "fit": {"epochs": None, "batch_size": 32, "shuffle": True, "early_stopping": None},
        "seed": 42,
        "priority": 0,
        "checkpoints": False,
    }


def history_for(units: int, epochs: int = EPOCHS) -> dict[str, list[float]]:
    """A plausible Keras history whose val_accuracy rises with ``units``."""
    val_acc = [round(0.5 + 0.08 * e + units / 1000, 6) for e in range(epochs)]
    return {
        "loss": [round(1.5 / (e + 1), 6) for e in range(epochs)],
        "accuracy": [round(a + 0.02, 6) for a in val_acc],
        "val_loss": [round(1.6 / (e + 1) + 0.05, 6) for e in range(epochs)],
        "val_accuracy": val_acc,
    }


def make_study(storage: Any, name: str = "digits-demo", points: list[dict[str, Any]] | None = None) -> optuna.Study:
    """A maximize study with the service's study attrs and COMPLETE Keras-like trials."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    attrs = {
        "spec": spec_dict(name),
        "tuner": "tpe",
        "data": {"source": "sklearn:digits", "hash": "0123456789abcdef", "task": "classification",
                 "train": 1077, "validation": 360, "test": 360},
        "submitted_at": "2025-01-01T00:00:00+00:00",
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for params in POINTS if points is None else points:
        units = params.get("units", 32)
        history = history_for(units)
        values = history["val_accuracy"]
        study.add_trial(optuna.trial.create_trial(
            params=params,
            distributions={k: DISTRIBUTIONS[k] for k in params},
            value=max(values),
            intermediate_values={e + 1: v for e, v in enumerate(values)},
            user_attrs={
                "history": history, "best_epoch": len(values), "epochs_run": len(values),
                "param_count": units * 75, "fit_seconds": 1.25, "host": "test-host", "pid": 4242,
                "device": "CPU", "keras_backend": "tensorflow",
                "model_summary": f'Model: "sequential"\n Total params: {units * 75:,}',
            },
        ))
    return study
