"""keras-tuner's ready-made tuners, on the service.

Each is keras-tuner's own class (its constructor, its oracle, its ``run_trial``) with the
service's :class:`~tuner_service.keras_tuner._keras.Tuner` (or ``BaseTuner``) under it, so
``isinstance(tuner, keras_tuner.RandomSearch)`` holds and a subclass overrides what it would
override in keras-tuner.
"""

from __future__ import annotations

import keras_tuner as _kt

from tuner_service.keras_tuner._base import BaseTuner
from tuner_service.keras_tuner._keras import Tuner


class RandomSearch(_kt.RandomSearch, Tuner):
    """keras-tuner's ``RandomSearch``: the service's seeded random sampler (trial *n*'s draw
    depends on the seed and *n* only); ``max_trials=None`` runs keras-tuner's own random
    proposals until they repeat (the space is exhausted)."""


class BayesianOptimization(_kt.BayesianOptimization, Tuner):
    """keras-tuner's ``BayesianOptimization``: the service's Gaussian-process sampler (Matern
    kernel, UCB with ``alpha``/``beta``, ``num_initial_points`` random ones first)."""


class Hyperband(_kt.Hyperband, Tuner):
    """keras-tuner's ``Hyperband``: its bracket schedule and trial count (22 configurations
    per iteration for ``max_epochs=10, factor=3``); a promoted configuration continues in
    the same trial instead of a new one."""


class GridSearch(_kt.GridSearch, Tuner):
    """keras-tuner's ``GridSearch``: every point in keras-tuner's order, enumerated without
    building any model; a point whose ``build()`` raises is a failed trial."""


class SklearnTuner(_kt.SklearnTuner, BaseTuner):
    """keras-tuner's ``SklearnTuner`` (cross-validated scikit-learn estimators), its trials
    run through the same lifecycle."""
