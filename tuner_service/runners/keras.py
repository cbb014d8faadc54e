"""The Keras runner: keras-tuner style ``build_model(hp)`` / ``HyperModel`` trials.

``KerasRunner`` is created once per worker process (imports, user code and data are paid
once) and runs many trials: build the model from ``hp``, fit it with the spec's fit arguments
(through the user's ``HyperModel.fit`` when there is one), report the objective to Optuna
after every epoch (learning curves, Hyperband pruning), and return the outcome. The trial's
value is the best epoch's objective, as keras-tuner does, with ``best_epoch`` recorded.
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

from tuner_service import attrs as A
from tuner_service.errors import BadInput, TrialError, TunerServiceError, error_line
from tuner_service.lifecycle._writes import flush as lifecycle_flush  # noqa: E402
from tuner_service.runners import Outcome, TrialInterrupted
from tuner_service.runners._env import configure_gpu, device_name
from tuner_service.runners._user_code import as_hypermodel, import_user_object

#: Full garbage collections between trials: one every GC_EVERY trials (see SessionClearer).
GC_EVERY = max(1, int(os.environ.get("TUNER_SERVICE_GC_EVERY", "10")))

if TYPE_CHECKING:
    from pathlib import Path

    import optuna

    from tuner_service.data import Dataset
    from tuner_service.spec import StudySpec


def _make_reporter(keras: Any) -> Any:
    class EpochReporter(keras.callbacks.Callback):
        """Reports the objective after every epoch and stops training when pruned."""

        def __init__(self, trial: optuna.Trial | None, objective: str, maximize: bool, prune: bool,
                     epochs: int = 0) -> None:
            super().__init__()
            self.trial, self.objective, self.maximize, self.prune = trial, objective, maximize, prune
            self.epochs = epochs
            self.history: dict[str, list[float]] = {}
            self.best: float | None = None
            self.best_epoch: int | None = None
            self.pruned = False
            self.epochs_run = 0
            self.first_epoch: int | None = None  # > 0 when BackupAndRestore resumed the fit

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            if (self.objective.startswith("val_") and self.objective not in logs
                    and not any(k.startswith("val_") for k in logs)):
                return  # an epoch without validation (fit.validation_freq): nothing to judge yet
            if self.first_epoch is None:
                self.first_epoch = epoch
            for k, v in logs.items():
                self.history.setdefault(k, []).append(round(float(v), 6))
            if self.objective not in logs:
                raise TrialError(
                    f"objective {self.objective!r} is not logged by the model (it logs "
                    f"{', '.join(sorted(logs)) or 'nothing'}); set objective: to one of these "
                    "or add the metric to compile(metrics=[...])"
                )
            value = float(logs[self.objective])
            step = epoch + 1  # epochs completed: Hyperband's resource
            self.epochs_run = step
            if not math.isfinite(value):
                raise TrialError(f"objective {self.objective} is {value} at epoch {step}; the model diverged")
            if self.best is None or (value > self.best if self.maximize else value < self.best):
                self.best, self.best_epoch = value, step
            if self.trial is not None:
                from tuner_service.storage import with_storage_retry

                with_storage_retry(self.trial.report, value, step, what="reporting an epoch")
                # After the last epoch there is nothing left to save: the trial completed.
                if self.prune and step < self.epochs and with_storage_retry(self.trial.should_prune, what="pruning"):
                    self.pruned = True
                    self.model.stop_training = True

    return EpochReporter


class SessionClearer:
    """Resets Keras between trials (``clear_session``). Keras' default also runs a full
    ``gc.collect()``, which costs ~0.25 s per trial in a process that holds TensorFlow, the
    user's code and data (benchmarks/RESULTS.md); this collects every ``GC_EVERY`` calls
    instead, which keeps a runner's memory flat at a tenth of the cost."""

    def __init__(self, keras: Any) -> None:
        import inspect

        self.keras = keras
        self.calls = 0
        self.takes_free_memory = "free_memory" in inspect.signature(keras.backend.clear_session).parameters

    def __call__(self) -> None:
        self.calls += 1
        collect = self.calls % GC_EVERY == 0
        if self.takes_free_memory:
            self.keras.backend.clear_session(free_memory=collect)
        else:  # older Keras 3: clear_session always collects
            self.keras.backend.clear_session()


class KerasRunner:
    """Runs trials of one study in this process; everything expensive is loaded once."""

    def __init__(self, spec: StudySpec, data: Dataset | None = None) -> None:
        import keras

        from tuner_service import data as data_mod

        configure_gpu()
        self.keras = keras
        self.spec = spec
        self.data = data if data is not None else data_mod.load(spec.data, spec.seed)
        self.hypermodel = as_hypermodel(import_user_object(spec.model))
        self._reporter_cls = _make_reporter(keras)
        self._clear_session = SessionClearer(keras)
        self.backend = keras.backend.backend()
        self.device = device_name(keras)
        self._gradient_registry = _tf_gradient_registry() if self.backend == "tensorflow" else None
        # The arrays every fit gets: tensors made once per worker (spec.speed.reuse_tensors), when
        # they go straight to model.fit (a HyperModel.fit of the user's may want numpy arrays).
        self._fit_data = self._as_tensors() if spec.speed.reuse_tensors else None
        import gc

        # Imports, user code and data are loaded for the runner's life: move them out of the
        # collector's way, so the collections between trials only walk what trials allocate.
        gc.collect()
        gc.freeze()

    # ----------------------------------------------------------------- speed

    def _as_tensors(self) -> tuple[Any, Any, Any, Any] | None:
        """The training and validation arrays as TensorFlow tensors, or None where that does not
        apply (another backend, a custom ``HyperModel.fit``). Keras' array adapter slices
        tensors as it slices arrays, so batches, shuffling and results are the same; what goes
        is the conversion of every array at the start of every fit."""
        if self.backend != "tensorflow" or not _passes_data_through(self.hypermodel):
            return None
        import tensorflow as tf

        d = self.data
        convert = self.keras.tree.map_structure
        try:
            return tuple(convert(tf.convert_to_tensor, a) for a in (d.x_train, d.y_train, d.x_val, d.y_val))  # type: ignore[return-value]
        except (TypeError, ValueError):  # arrays TensorFlow cannot hold (objects, ragged): keep them
            return None

    def _steps_per_execution(self, callbacks: list[Any]) -> int:
        """``spec.speed.steps_per_execution``: auto runs a whole epoch per compiled call (one
        Python round trip per epoch instead of per batch), unless something watches batches:
        a ``HyperModel.fit`` of the user's, or a callback with batch hooks. Same batches, same
        order, same updates; only how often Python is called back changes."""
        setting = self.spec.speed.steps_per_execution
        if setting != "auto":
            return int(setting)
        if self.backend not in ("tensorflow", "jax") or not _passes_data_through(self.hypermodel):
            return 1
        base = self.keras.callbacks.Callback
        for cb in callbacks:
            if any(getattr(type(cb), h) is not getattr(base, h) for h in
                   ("on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end")):
                return 1
            if getattr(cb, "update_freq", "epoch") != "epoch":  # TensorBoard writing per batch
                return 1
        steps = self.spec.fit.steps_per_epoch or -(-_n(self.data.x_train) // self.spec.fit.batch_size)
        return max(1, int(steps))

    # ----------------------------------------------------------------- building blocks

    def build(self, hp: Any) -> Any:
        try:
            model = self.hypermodel.build(hp)
        except (TunerServiceError, TrialInterrupted):
            raise
        except Exception as exc:
            _reraise_storage_error(exc)
            raise TrialError(f"build_model raised {error_line(exc)}") from exc
        if not isinstance(model, self.keras.Model):
            raise TrialError(
                f"build_model returned {type(model).__name__}, not a keras.Model; return the compiled model"
            )
        if not getattr(model, "compiled", False) and getattr(model, "optimizer", None) is None:
            raise TrialError("build_model returned a model that is not compiled; call model.compile(...) before returning it")
        return model

    def callbacks(self, reporter: Any, extra: list[Any] | None = None, *, directory: Path | None = None) -> list[Any]:
        """The fit's callbacks, built afresh: the reporter, early stopping, the study's
        ``fit.callbacks`` (writing under ``directory``, by default the trial's own directory)
        and the runner's extras."""
        from tuner_service import callbacks as user_callbacks

        fit = self.spec.fit
        cbs: list[Any] = [reporter]
        es = fit.early_stopping
        if es is not None:
            cbs.append(self.keras.callbacks.EarlyStopping(
                monitor=es.monitor, patience=es.patience, min_delta=es.min_delta,
                restore_best_weights=es.restore_best_weights,
                mode=es.mode if es.mode != "auto" else user_callbacks.monitor_mode(es.monitor),
            ))
        if fit.callbacks:
            trial = getattr(reporter, "trial", None)
            if directory is None and trial is not None:
                directory = user_callbacks.trial_directory(self.spec.name, trial.number)
            cbs += user_callbacks.build(fit.callbacks, directory)
        return cbs + list(extra or [])

    def fit(self, hp: Any, model: Any, reporter: Any, *, x: Any, y: Any, validation_data: Any,
            epochs: int, extra_callbacks: list[Any] | None = None, verbose: int = 0,
            directory: Path | None = None, fit_arguments: dict[str, Any] | None = None,
            fast: bool = False) -> Any:
        """``HyperModel.fit`` with the study's fit arguments (``fit_arguments`` replaces the
        extra ones: ``class_weight``, ``steps_per_epoch``, ``validation_freq``...); ``fast``:
        with ``spec.speed``'s steps per execution (a trial's fit, not the submit check's)."""
        from tuner_service import callbacks as user_callbacks

        try:
            if fit_arguments is None:
                fit_arguments = user_callbacks.fit_arguments(self.spec.fit, y, validation=True)
            callbacks = self.callbacks(reporter, extra_callbacks, directory=directory)
            if fast:
                model.steps_per_execution = self._steps_per_execution(callbacks)
            return self.hypermodel.fit(
                hp, model, x, y,
                validation_data=validation_data,
                epochs=epochs,
                batch_size=self.spec.fit.batch_size,
                shuffle=self.spec.fit.shuffle,
                callbacks=callbacks,
                verbose=verbose,
                **fit_arguments,
            )
        except (TunerServiceError, TrialInterrupted):
            raise  # ours (incl. a storage outage while reporting) keep their meaning
        except Exception as exc:
            _reraise_storage_error(exc)
            raise TrialError(f"fit raised {error_line(exc)}") from exc

    # ----------------------------------------------------------------- one trial

    def run(self, trial: optuna.Trial, *, prune: bool, extra_callbacks: list[Any] | None = None) -> Outcome:
        from tuner_service.hp import TrialHyperParameters

        d = self.data
        hp = TrialHyperParameters(trial)
        started = time.perf_counter()
        gradients_before = set(self._gradient_registry) if self._gradient_registry is not None else None
        try:
            model = self.build(hp)
            lifecycle_flush(trial)  # the parameters the model was built with, in one transaction
            # Optuna keeps per-epoch values (learning curves, pruning) for one objective only.
            reporter = self._reporter_cls(trial if len(self.spec.objectives) == 1 else None, self.spec.objective.name,
                                          self.spec.maximize, prune, self.spec.epochs)
            extra_callbacks = [*(extra_callbacks or []), *self._checkpoint_callbacks(trial),
                               *self._tensorboard_callbacks(trial, hp)]
            x, y, x_val, y_val = self._fit_data or (d.x_train, d.y_train, d.x_val, d.y_val)
            t0 = time.perf_counter()
            result = self.fit(hp, model, reporter, x=x, y=y, validation_data=(x_val, y_val), epochs=self.spec.epochs,
                              extra_callbacks=extra_callbacks, fast=True)
            fit_seconds = time.perf_counter() - t0
            value, best_epoch = self._objective(reporter, result)
            measured = self.measure(model, self.spec.builtin_metrics)
            attrs = {
                A.PARAM_COUNT: int(model.count_params()),
                A.FIT_SECONDS: round(fit_seconds, 3),
                A.TRIAL_SECONDS: round(time.perf_counter() - started, 3),
                A.BEST_EPOCH: best_epoch,
                A.EPOCHS_RUN: reporter.epochs_run,
                "steps_per_execution": int(getattr(model, "steps_per_execution", 1) or 1),
                **measured,
            }
            if reporter.first_epoch:
                attrs[A.RESUMED_FROM_EPOCH] = reporter.first_epoch
            details = {A.HISTORY: reporter.history, A.MODEL_SUMMARY: model_summary(model)}
            if reporter.pruned:
                return Outcome(None, True, attrs, details)
            values = [value] + [self._metric(o.name, reporter, best_epoch, measured) for o in self.spec.more_objectives]
            for name, bound in self.spec.constraints.items():
                metric = self._metric(name, reporter, best_epoch, measured)
                details.update({f"constraints:{name}.{k}": v for k, v in bound.violations(metric).items()})
            return Outcome(values, False, attrs, details)
        finally:
            if gradients_before is not None:
                _forget_custom_gradients(self._gradient_registry, gradients_before)
            self._clear_session()

    def _metric(self, name: str, reporter: Any, best_epoch: int | None, measured: dict[str, float]) -> float:
        """A further objective's or a constraint's value: the runner's own measure, or the
        metric Keras logged at the best epoch of the first objective (one model, one epoch)."""
        if name in measured:
            return float(measured[name])
        series = reporter.history.get(name)
        if not series:
            raise TrialError(f"metric {name!r} (an objective or constraint) is not logged by the model (it logs "
                             f"{', '.join(sorted(reporter.history)) or 'nothing'}); use one of these")
        value = float(series[(best_epoch or len(series)) - 1] if best_epoch and best_epoch <= len(series)
                      else series[-1])
        if not math.isfinite(value):
            raise TrialError(f"metric {name} is {value}; the model diverged")
        return value

    def measure(self, model: Any, names: set[str]) -> dict[str, float]:
        """The runner's own metrics (``spec.BUILTIN_METRICS``) of a trained model: ``params``
        (trainable parameters), ``model_bytes`` (bytes of all its weights) and ``latency_ms``
        (the median of 7 timed inferences of one batch of validation data, after a warm-up)."""
        import numpy as np

        out: dict[str, float] = {}
        if "params" in names:
            out["params"] = float(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
        if "model_bytes" in names:
            out["model_bytes"] = float(sum(int(np.prod(w.shape)) * np.dtype(str(w.dtype)).itemsize
                                           for w in model.weights))
        if "latency_ms" in names:
            batch = _head(self.data.x_val, self.spec.fit.batch_size)
            model.predict_on_batch(batch)  # the first call traces the predict function
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                model.predict_on_batch(batch)
                times.append((time.perf_counter() - t0) * 1000)
            out["latency_ms"] = round(float(np.median(times)), 4)
        return out

    def _tensorboard_callbacks(self, trial: optuna.Trial, hp: Any) -> list[Any]:
        """``fit.tensorboard: DIR``: per-trial logs in ``DIR/<study>/trial-<n>`` with the HParams
        plugin, the view keras-tuner users get (``tensorboard --logdir DIR/<study>``). The trial's
        hyperparameters are written when training starts; ``hp`` fills in as the model asks."""
        root = self.spec.fit.tensorboard
        if not root:
            return []
        from pathlib import Path

        from tensorboard.plugins.hparams import api as hparams_api

        log_dir = str(Path(root) / self.spec.name / f"trial-{trial.number}")
        values = {k: v for k, v in hp.values.items() if isinstance(v, (bool, int, float, str))}
        return [self.keras.callbacks.TensorBoard(log_dir=log_dir),
                hparams_api.KerasCallback(log_dir, values, trial_id=f"{self.spec.name}-{trial.number}")]

    def _checkpoint_callbacks(self, trial: optuna.Trial) -> list[Any]:
        """Per-epoch checkpoints (``checkpoints: true``) so a re-queued trial resumes where the
        failed run stopped: Keras' BackupAndRestore in a directory named after the original
        trial, which every retry of it shares (``$TUNER_SERVICE_CHECKPOINTS``, default
        ``./checkpoints``; a shared file system when retries may land on other machines)."""
        if not self.spec.checkpoints:
            return []
        from pathlib import Path

        system_attrs = trial.storage.get_trial(trial._trial_id).system_attrs
        original = system_attrs.get("failed_trial", trial.number)
        root = Path(os.environ.get("TUNER_SERVICE_CHECKPOINTS", "checkpoints"))
        backup_dir = root / self.spec.name / f"trial-{original}"
        # double_checkpoint: a kill during a checkpoint write leaves the previous state readable.
        return [self.keras.callbacks.BackupAndRestore(str(backup_dir), save_freq="epoch", delete_checkpoint=True,
                                                      double_checkpoint=True)]

    def _objective(self, reporter: Any, result: Any) -> tuple[float, int | None]:
        """The best epoch's objective; or what a custom ``HyperModel.fit`` returned."""
        name = self.spec.objective.name
        if isinstance(result, (int, float)):
            value = float(result)
        elif isinstance(result, dict) and name in result:
            value = float(result[name])
        elif reporter.best is not None:
            return reporter.best, reporter.best_epoch
        else:
            raise TrialError(
                f"objective {name!r} was never reported: HyperModel.fit must pass its callbacks "
                "to model.fit or return the objective (a float or a dict of metrics)"
            )
        if not math.isfinite(value):
            raise TrialError(f"objective {name} is {value}; the model diverged")
        return value, reporter.best_epoch

    # ----------------------------------------------------------------- preflight

    def preflight(self) -> dict[str, Any]:
        """Build with default hyperparameters and fit one short epoch: catches a builder that
        does not return a compiled model, a metric the model does not log, data the model
        does not accept (inputs keyed other than the model's inputs) and callbacks that
        cannot be built or watch a metric the model does not log, before anything is written
        to storage. Files the callbacks write go to a temporary directory, removed after."""
        import tempfile
        import warnings
        from pathlib import Path

        from tuner_service import callbacks as user_callbacks
        from tuner_service.data import check_model_io
        from tuner_service.hp import TrialHyperParameters

        d = self.data
        hp = TrialHyperParameters(None)
        n = min(_n(d.x_train), 2 * self.spec.fit.batch_size)
        m = min(_n(d.x_val), 64)
        # Two batches with validation after the one epoch: the step counts and the validation
        # frequency of the real fits do not apply to this check.
        arguments = {k: v for k, v in user_callbacks.fit_arguments(self.spec.fit, d.y_train, validation=True).items()
                     if k in ("class_weight", "validation_batch_size")}
        try:
            model = self.build(hp)
            if _passes_data_through(self.hypermodel):  # a custom HyperModel.fit may reshape the data first
                check_model_io(model, d.x_train, d.y_train)
            # Two batches: compiling the train and test steps would cost more than running them
            # (about 1 s of every submit, benchmarks/vs_keras_tuner.py), so run them eagerly.
            model.run_eagerly = True
            reporter = self._reporter_cls(None, self.spec.objective.name, self.spec.maximize, False)
            # Keras' warnings about this short fit (a monitor it cannot find) would precede the
            # one line that says what to fix; the workers' fits show them.
            with tempfile.TemporaryDirectory(prefix="tuner-check-") as scratch, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.fit(hp, model, reporter, x=_head(d.x_train, n), y=_head(d.y_train, n),
                         validation_data=(_head(d.x_val, m), _head(d.y_val, m)), epochs=1,
                         directory=Path(scratch), fit_arguments=arguments)
            if reporter.epochs_run == 0:
                self._objective(reporter, None)
        except TrialError as exc:
            raise BadInput(f"model check failed: {exc}") from None
        finally:
            self._clear_session()
        logged = sorted(reporter.history)
        if logged:  # empty when a custom HyperModel.fit does not pass the callbacks on
            from tuner_service.spec import BUILTIN_METRICS

            for what, metric in [("objective", o.name) for o in self.spec.more_objectives] + [
                    ("constraints", c) for c in self.spec.constraints]:
                if metric not in logged and metric not in BUILTIN_METRICS:
                    raise BadInput(f"{what}: {metric!r} is not a metric the model logs (it logs {', '.join(logged)}) "
                                   f"nor one the service measures ({', '.join(BUILTIN_METRICS)}); use one of these")
            watched = user_callbacks.monitors(self.spec.fit.callbacks)
            if self.spec.fit.early_stopping is not None:
                watched.append(("fit.early_stopping", self.spec.fit.early_stopping.monitor))
            for who, metric in watched:
                if metric not in logged:
                    where = who if who.startswith("fit.") else f"fit.callbacks: {who}"
                    raise BadInput(f"{where} monitors {metric!r}, which the model does not log (it logs "
                                   f"{', '.join(logged)}); set monitor: to one of these")
        return {"space": {k: _jsonable(v) for k, v in hp.values.items()}, "hyperparameters": list(hp.space)}


def _passes_data_through(hypermodel: Any) -> bool:
    """Whether ``hypermodel.fit`` hands x and y to ``model.fit`` unchanged (a plain builder, or
    a HyperModel that does not override ``fit``)."""
    import keras_tuner as kt

    from tuner_service.runners._user_code import _FunctionHyperModel

    return isinstance(hypermodel, _FunctionHyperModel) or (
        isinstance(hypermodel, kt.HyperModel) and type(hypermodel).fit is kt.HyperModel.fit)


def model_summary(model: Any) -> str:
    lines: list[str] = []
    try:
        model.summary(print_fn=lambda line, *a, **k: lines.append(line))
    except Exception:  # an unbuilt subclassed model cannot summarise; not worth failing for
        return ""
    return "\n".join(lines)[:20000]


def _n(x: Any) -> int:
    from tuner_service.data import _len

    return _len(x)


def _head(x: Any, n: int) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(a[:n] for a in x)
    if isinstance(x, dict):
        return {k: v[:n] for k, v in x.items()}
    return x[:n]


def _tf_gradient_registry() -> dict[str, Any] | None:
    """TensorFlow's global gradient registry, or None where its layout is not the one we know."""
    try:
        from tensorflow.python.framework import ops

        registry = ops.gradient_registry._registry
    except (ImportError, AttributeError):
        return None
    return registry if isinstance(registry, dict) else None


def _forget_custom_gradients(registry: dict[str, Any], before: set[str]) -> None:
    """Drop the ``tf.custom_gradient`` entries a trial registered. Keras' TensorFlow optimizer
    registers one per trace and TensorFlow never removes them; each keeps a whole FuncGraph
    alive, which made a runner grow ~4 MB per trial (benchmarks/memory.py: 438 MB per 100
    trials before, 24 after). Once the trial's model is gone nothing can call them."""
    for key in [k for k in registry if k not in before and k.startswith("CustomGradient-")]:
        registry.pop(key, None)


def _reraise_storage_error(exc: BaseException) -> None:
    """A transient database error that reached the user's code (a custom ``fit`` calling
    ``trial.report``, a storage restart outlasting the retries) is not the model's fault: the
    process stops with :class:`StorageOutage` and the trial is retried, instead of failing it
    as the user's error."""
    from tuner_service.storage import is_transient, mask_password

    if is_transient(exc):
        from tuner_service.errors import StorageOutage

        raise StorageOutage(f"storage error inside a trial: {mask_password(error_line(exc))}") from exc


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (type(None), bool, int, float, str)) else repr(v)
