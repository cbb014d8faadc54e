"""The speed settings (spec ``speed:``) change how fast a trial runs, never what it computes:
the same seeded trial, with them on and off, gives the same per-epoch metrics."""

from __future__ import annotations

import keras
import optuna
import pytest
from conftest import MODELS

from tuner_service.runners.keras import KerasRunner
from tuner_service.spec import StudySpec


def _history(speed: dict, model: str = "build_model") -> tuple[dict, int]:
    spec = StudySpec.model_validate({"name": "s", "model": f"{MODELS / 'tiny.py'}:{model}", "objective": "val_accuracy",
                                     "budget": {"max_epochs": 3}, "fit": {"batch_size": 64}, "seed": 3,
                                     "speed": speed})
    runner = KerasRunner(spec)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"num_layers": 2, "units_0": 32, "units_1": 16, "learning_rate": 0.01})
    trial = study.ask()
    keras.utils.set_random_seed(7)
    outcome = runner.run(trial, prune=False)
    return outcome.details["history"], outcome.attrs["steps_per_execution"]


def test_whole_epoch_execution_and_reused_tensors_give_the_same_fit() -> None:
    fast, fast_steps = _history({})
    plain, plain_steps = _history({"steps_per_execution": 1, "reuse_tensors": False})
    assert fast_steps > 1 and plain_steps == 1, "auto must run more than one batch per call here"
    assert fast.keys() == plain.keys()
    for name in fast:
        assert fast[name] == pytest.approx(plain[name], abs=1e-5), name


def test_a_hypermodel_fit_of_the_users_keeps_keras_defaults() -> None:
    """A custom HyperModel.fit may watch batches or want numpy arrays: auto leaves it alone."""
    _, steps = _history({}, model="TunedFit")
    assert steps == 1
