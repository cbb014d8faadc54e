"""``keras_tuner.tuners``: the service's tuners under keras-tuner's names."""

from tuner_service.keras_tuner._keras import Tuner
from tuner_service.keras_tuner._tuners import BayesianOptimization, GridSearch, Hyperband, RandomSearch, SklearnTuner

__all__ = ["BayesianOptimization", "GridSearch", "Hyperband", "RandomSearch", "SklearnTuner", "Tuner"]
