"""keras-tuner's ``HyperParameters`` with values drawn from an Optuna trial (define-by-run).

We subclass keras-tuner's own class so users' ``build_model(hp)`` and ``HyperModel.fit(hp, ...)``
see exactly the API they know (``hp.Int``, ``hp.Float``, ``hp.Choice``, ``hp.Boolean``,
``hp.Fixed``, ``hp.conditional_scope``, ``hp.get``, ``hp.values``, defaults); the only hook
is ``_register``, where a newly seen, active hyperparameter gets its value from
``trial.suggest_*`` instead of its default. Conditional spaces (``for i in
range(hp.Int("num_layers", 1, 3)): hp.Int(f"units_{i}", ...)``) therefore just work: a
parameter exists in the Optuna trial only when the model asked for it.

Mapping to Optuna distributions (what the dashboard shows):

====================================  ==============================================
keras-tuner                           Optuna
====================================  ==============================================
Int(min, max, step, linear)           IntDistribution(min, max, step)
Int/Float(..., sampling="log")        Int/FloatDistribution(log=True)
Float(min, max, step)                 FloatDistribution(min, max, step)
Int/Float log with a step             Categorical of keras-tuner's own value list
                                      (keras-tuner's log step is multiplicative)
Choice(values) / Boolean()            CategoricalDistribution
Fixed(name, value)                    CategoricalDistribution([value]) (recorded)
sampling="reverse_log"                searched linearly (Optuna has no reverse-log);
                                      a warning says so once
====================================  ==============================================
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import keras_tuner as kt
from keras_tuner.engine import hyperparameters as _types

from tuner_service.storage import with_storage_retry

if TYPE_CHECKING:
    import optuna

_log = logging.getLogger(__name__)
_warned_reverse_log: set[str] = set()
_CATEGORICAL_TYPES = (type(None), bool, int, float, str)


class TrialHyperParameters(kt.HyperParameters):
    """``hp`` for one Optuna trial; with ``trial=None`` every value is its default."""

    def __init__(self, trial: optuna.Trial | None = None) -> None:
        super().__init__()
        self._trial = trial

    def _register(self, hyperparameter: Any, overwrite: bool = False) -> Any:
        value = super()._register(hyperparameter, overwrite)
        if self._trial is None or not self.is_active(hyperparameter):
            return value
        # A database restart while build_model runs must not fail the trial as the user's error.
        value = with_storage_retry(suggest, self._trial, hyperparameter, what="storing a parameter")
        self.values[hyperparameter.name] = value
        return value


def fixed(values: dict[str, Any]) -> kt.HyperParameters:
    """An ``hp`` that returns ``values`` (for retraining a trial, or a grid point)."""
    hp = kt.HyperParameters()
    hp.values.update(values)
    return hp


def suggest(trial: optuna.Trial, hp: Any) -> Any:
    """Draw ``hp``'s value from ``trial`` (or return the value a retry already holds)."""
    name = hp.name
    if isinstance(hp, _types.Fixed):
        if isinstance(hp.value, _CATEGORICAL_TYPES):
            return trial.suggest_categorical(name, [hp.value])
        return hp.value
    if isinstance(hp, _types.Boolean):
        return trial.suggest_categorical(name, [False, True])
    if isinstance(hp, _types.Choice):
        return trial.suggest_categorical(name, list(hp.values))
    sampling = getattr(hp, "sampling", "linear") or "linear"
    if sampling == "reverse_log" and name not in _warned_reverse_log:
        _warned_reverse_log.add(name)
        _log.warning("hyperparameter %r: sampling='reverse_log' is searched linearly", name)
    log = sampling == "log"
    step = hp.step
    if isinstance(hp, _types.Int):
        if log and step not in (None, 1):
            return trial.suggest_categorical(name, [int(v) for v in _kt_values(hp)])
        return trial.suggest_int(name, hp.min_value, hp.max_value, step=1 if log else (step or 1), log=log)
    if isinstance(hp, _types.Float):
        if log and step is not None:
            return trial.suggest_categorical(name, [float(v) for v in _kt_values(hp)])
        return trial.suggest_float(name, hp.min_value, hp.max_value, step=None if log else step, log=log)
    raise TypeError(f"unsupported hyperparameter type {type(hp).__name__} for {name!r}")


def _kt_values(hp: Any) -> list[Any]:
    """keras-tuner's own enumeration of a stepped range (its ``values`` property)."""
    return list(hp.values)


def grid_values(hp: Any) -> list[Any]:
    """Every value of a discrete hyperparameter, for the grid tuner; continuous ones fail."""
    if isinstance(hp, _types.Fixed):
        return [hp.value]
    if isinstance(hp, _types.Boolean):
        return [False, True]
    if isinstance(hp, _types.Choice):
        return list(hp.values)
    if isinstance(hp, _types.Int):
        return [int(v) for v in _kt_values(hp)]
    if isinstance(hp, _types.Float) and hp.step is not None:
        return [float(v) for v in _kt_values(hp)]
    raise ValueError(
        f"hyperparameter {hp.name!r} is a continuous Float with no step; the grid tuner needs a "
        f"finite set: give it step=..., use hp.Choice, or list its values in param_grid"
    )
