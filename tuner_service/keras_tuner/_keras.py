"""``Tuner``: keras-tuner's Keras tuner (build, fit, checkpoint the best epoch, load) on the
service's :class:`~tuner_service.keras_tuner._base.BaseTuner`.

Everything Keras-specific is keras-tuner's own ``Tuner`` code (``run_trial`` with
``executions_per_trial``, ``SaveBestEpoch``, the TensorBoard/HParams set-up, compile overrides,
``max_model_size``, ``load_model``, the batch/epoch hooks); this layer adds one callback per
fit that records every epoch and reports the objective to Optuna (learning curves, Hyperband's
decisions), and runs build and fit under ``distribution_strategy.scope()``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import keras
import keras_tuner as _kt
from keras_tuner.engine.tuner import maybe_distribute
from keras_tuner.src import utils as _kt_utils
from keras_tuner.src.backend import config as _kt_config
from keras_tuner.src.engine import tuner as _kt_tuner
from keras_tuner.src.engine import tuner_utils as _tu

from tuner_service.keras_tuner._base import BaseTuner
from tuner_service.runners.keras import SessionClearer


class _EpochReporter(keras.callbacks.Callback):
    """Records every epoch's logs, reports the objective to Optuna, and stops the fit when
    the pruner says so (only the first execution of a trial reports: Optuna keeps one value
    per step)."""

    def __init__(self, trial: Any, objective: Any, *, report: bool, prune: bool, epochs: int) -> None:
        super().__init__()
        self.trial, self.objective = trial, objective
        self.report, self.prune, self.epochs = report, prune, epochs
        self.history: dict[str, list[float]] = {}
        self.pruned = False
        self.epochs_run = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        for key, value in logs.items():
            try:
                self.history.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                continue
        self.epochs_run += 1
        if self.trial is None or not self.report or not self.objective.has_value(logs):
            return
        value = float(self.objective.get_value(logs))
        if not math.isfinite(value):
            return  # keras-tuner ignores a non-finite epoch; the trial fails if no epoch is finite
        step = epoch + 1  # epochs completed: Hyperband's resource
        self.trial.report(value, step)
        if self.prune and step < self.epochs and self.trial.should_prune():
            self.pruned = True
            if self.model is not None:
                self.model.stop_training = True


class Tuner(BaseTuner, _kt.Tuner):
    """keras-tuner's ``Tuner`` on a tuner-service study: subclass it (``run_trial``, the hooks)
    exactly as keras-tuner's, with any ``oracle``."""

    def __init__(self, oracle: Any, hypermodel: Any = None, max_model_size: int | None = None, optimizer: Any = None,
                 loss: Any = None, metrics: Any = None, distribution_strategy: Any = None,
                 directory: str | None = None, project_name: str | None = None, logger: Any = None,
                 tuner_id: str | None = None, overwrite: bool = False, executions_per_trial: int = 1,
                 **kwargs: Any) -> None:
        if hypermodel is None and type(self).run_trial is _kt.Tuner.run_trial:
            raise ValueError("Received `hypermodel=None`. We only allow not specifying `hypermodel` if the user "
                             "defines the search space in `Tuner.run_trial()` by subclassing a `Tuner` class without "
                             "using a `HyperModel` instance.")
        if int(executions_per_trial) < 1:
            raise ValueError(f"executions_per_trial must be at least 1 (got {executions_per_trial})")
        self.max_model_size = max_model_size
        self.optimizer, self.loss, self.metrics = optimizer, loss, metrics
        self.distribution_strategy = distribution_strategy
        self.executions_per_trial = int(executions_per_trial)
        BaseTuner.__init__(self, oracle, hypermodel, directory=directory, project_name=project_name,
                           overwrite=overwrite, logger=logger, **kwargs)
        self.tuner_id = tuner_id or self.tuner_id

    def _try_build(self, hp: Any) -> Any:
        """keras-tuner's, but the Keras session is cleared as the service's runner clears it:
        keras-tuner runs two full garbage collections per build (``clear_session``'s and its
        own), ~0.25 s each in a process that holds TensorFlow and the data."""
        clearer = self.__dict__.get("_session_clearer")
        if clearer is None:
            clearer = self._session_clearer = SessionClearer(keras)
        clearer()
        model = self._build_hypermodel(hp)
        if not isinstance(model, keras.models.Model):
            raise _kt.errors.FatalTypeError(
                "Expected the model-building function, or HyperModel.build() to return a valid Keras Model "
                f"instance. Received: {model} of type {type(model)}.")
        size = _kt_tuner.maybe_compute_model_size(model)
        if self.max_model_size and size > self.max_model_size:
            raise _kt.errors.FailedTrialError(f"Oversized model: {size} parameters. Skip model.")
        if self._ctx is not None:
            self._ctx.model = model
        return model

    def _build_and_fit_model(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        """keras-tuner's: build (under the strategy's scope), fit, keep the build config for
        ``load_model``; here the fit runs under the scope too, with the epoch reporter."""
        ctx = self._ctx
        if ctx is not None:
            reporter = _EpochReporter(ctx.optuna_trial, self.oracle.objective, report=not ctx.reporters,
                                      prune=ctx.prune, epochs=int(kwargs.get("epochs") or 1))
            ctx.reporters.append(reporter)
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), reporter]
        hp = trial.hyperparameters
        model = self._try_build(hp)  # clears the Keras session: the scope starts after it
        started = time.perf_counter()
        with maybe_distribute(self.distribution_strategy):
            results = self.hypermodel.fit(hp, model, *args, **kwargs)
        if ctx is not None:
            ctx.fit_seconds += time.perf_counter() - started
        if _kt_config.multi_backend():
            _kt_utils.save_json(self._get_build_config_fname(trial.trial_id), model.get_build_config())
        _tu.validate_trial_results(results, self.oracle.objective, "HyperModel.fit()")
        return results
