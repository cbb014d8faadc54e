"""``keras_tuner.engine``: keras-tuner's own modules, with ``engine.tuner.Tuner`` and
``engine.base_tuner.BaseTuner`` the service's."""

from types import SimpleNamespace

from keras_tuner.engine import hypermodel, hyperparameters, metrics_tracking, oracle, trial
from keras_tuner.engine.tuner import maybe_distribute

from tuner_service.keras_tuner._base import BaseTuner
from tuner_service.keras_tuner._keras import Tuner

tuner = SimpleNamespace(Tuner=Tuner, maybe_distribute=maybe_distribute)
base_tuner = SimpleNamespace(BaseTuner=BaseTuner)

__all__ = ["base_tuner", "hypermodel", "hyperparameters", "metrics_tracking", "oracle", "trial", "tuner"]
