"""Drop-in keras-tuner API on tuner-service: change ``import keras_tuner as kt`` to
``import tuner_service.keras_tuner as kt`` and nothing else.

Existing tuner code keeps working, but its trials are Optuna trials in a tuner-service study:
they survive the process (``overwrite=False`` resumes an interrupted search and runs only
the remaining trials), several processes can share one search (``search(..., workers=N)``,
or the same script started on several machines against one ``storage=`` URL), and the
study can be inspected with ``tuner-service best/trials/report/dashboard``.

Supported, with keras-tuner's semantics:

- ``RandomSearch``, ``Hyperband`` (``max_epochs``, ``factor``, ``hyperband_iterations``),
  ``BayesianOptimization`` (``num_initial_points``, ``alpha``, ``beta``), ``GridSearch``;
  keras-tuner's own ``HyperModel``, ``HyperParameters``, ``Objective``, ``errors`` and
  ``applications`` are re-exported (they *are* keras-tuner's classes).
- Arguments: ``hypermodel``, ``objective`` (a metric name, an ``Objective``, or a list of
  them: keras-tuner's combined objective, the sum of the minimised ones minus the sum of the
  maximised ones, minimised), ``max_trials``, ``seed``, ``hyperparameters`` (pre-declared or
  overridden hyperparameters), ``tune_new_entries``, ``allow_new_entries``,
  ``max_retries_per_trial``, ``max_consecutive_failed_trials``, ``executions_per_trial`` (the
  trial's value is the mean of the executions' best values), ``max_model_size``,
  ``optimizer``/``loss``/``metrics`` (compile overrides), ``directory``, ``project_name``,
  ``overwrite``, ``tuner_id``; and ours: ``storage=`` (an Optuna storage URL; default
  ``sqlite:///{directory}/{project_name}.db``) and, for ``Hyperband``, ``max_trials`` (default:
  keras-tuner's bracket count times ``hyperband_iterations``).
- ``search(*fit_args, **fit_kwargs)`` passes everything to ``HyperModel.fit(hp, model, ...)``
  (by default ``model.fit``), user callbacks deep-copied per execution, a ``TensorBoard``
  callback's ``log_dir`` extended by ``{trial_id}/execution{n}``; the best epoch's weights are
  kept per trial (``{project_dir}/trial_{id}/checkpoint.weights.h5``).
- Results: ``get_best_hyperparameters``, ``get_best_models`` (best-epoch weights),
  ``results_summary``, ``search_space_summary``, ``oracle.get_best_trials``,
  ``oracle.trials``, ``oracle.get_trial``, ``remaining_trials``, ``load_model``; a subclass may
  override ``run_trial`` (returning a ``History``, a dict of metrics, a float, or a list of
  them) and the ``on_trial_*``/``on_epoch_*``/``on_batch_*``/``on_search_*`` hooks.

How the search maps onto the service: the study's budget is WAITING trials enqueued up front
(``tuner_service.study``); ``search`` claims them one at a time with a heartbeat, so any number
of processes share one budget. Random search is ``tuners.TrialSeededRandomSampler``; Hyperband
is Optuna's ``HyperbandPruner`` with epochs as the resource (every trial is fitted for
``max_epochs`` and stopped early when its bracket prunes it); Bayesian optimisation is
``tuner_service.tuners.bayesian.BayesianSampler``; a grid search enumerates every combination
of the discrete values up front (keras-tuner's order: each hyperparameter's default first,
the last one varying fastest; a continuous ``Float`` contributes keras-tuner's 10 evenly
spaced values) and enqueues the points as fixed parameters.

Differences from keras-tuner, on purpose or by construction:

- ``trial.metrics`` is backed by the stored per-epoch history (one observation per epoch,
  averaged over executions) rather than keras-tuner's single best-step observation:
  ``get_best_value`` of the objective is the trial's score, ``get_last_value`` is the last
  epoch's value, ``get_history`` the learning curve.
- Trial ids are the Optuna trial numbers (zero-padded like keras-tuner's); a trial that failed
  and is retried gets a new id. A Hyperband trial stopped by its bracket has status
  ``"PRUNED"`` and is not a candidate for the best trials (as in ``tuner-service best``);
  ``trial.hyperparameters`` has no ``tuner/epochs`` etc. entries.
- Random search may propose the same values twice in a tiny discrete space (keras-tuner
  skips duplicates and stops when the space is exhausted).
- Progress is logged (``logging``, logger ``tuner_service.keras_tuner``), not printed.
- Grid search only enumerates hyperparameters that ``build()`` (or ``declare_hyperparameters``
  or ``hyperparameters=``) registers; one that first appears in ``HyperModel.fit`` raises
  ``NotImplementedError`` naming the fix.
- ``project_name`` is also the study name, so it is limited to letters, digits, ``_.-``
  (up to 128 characters); anything else raises ``ValueError``.
- ``RandomSearch``/``BayesianOptimization`` need a ``max_trials`` (``None``, "until the space is
  exhausted", raises ``NotImplementedError``).
- With ``executions_per_trial > 1`` the per-epoch values reported to Optuna (learning curves,
  Hyperband's pruning decisions) are the first execution's.
- The study's spec names no runnable model, so ``tuner-service worker/retrain`` refuse it:
  the data and fit arguments exist only inside ``search()``.

Interruptions: Ctrl-C (or SIGTERM in a worker process) hands the running trial back (failed,
and re-queued with the same hyperparameters), so ``overwrite=False`` later runs exactly the
missing trials; a ``keras_tuner.errors.FatalError`` does the same before it propagates. The
trial of a search killed outright is reclaimed at once by a resumed search on the same host
(its process is gone), elsewhere after the heartbeat grace period. Checkpoints are written on
the machine that ran the trial: ``get_best_models`` across machines needs a shared
``directory``.

``search(..., workers=N)`` with N > 1 starts N worker processes (``python -c``, not
``multiprocessing``, so the calling script needs no ``if __name__ == "__main__"`` guard) and
waits for them; each gets ``cores // N`` TensorFlow threads, and they start claiming trials
together once all have loaded. The tuner object (hypermodel included) and the non-array fit
arguments are pickled with cloudpickle; every numpy array in the fit arguments (``x``, ``y``,
``validation_data``, dicts/lists of arrays) is written once with ``np.save`` to
``{directory}/{project_name}/spill/<search>/`` and memory-mapped read-only by each worker
(``np.load(mmap_mode="r")``), so N workers share one copy through the page cache; the folder
is removed when the search ends. Limits: callbacks and everything else passed to ``search`` or
held by the hypermodel must be picklable; generators, ``tf.data.Dataset`` and
``keras.utils.PyDataset`` inputs raise ``NotImplementedError`` (use ``workers=1``, which runs
in this process and accepts anything ``model.fit`` accepts). Trial and epoch hooks of a
subclass run in the worker processes; ``on_search_begin``/``on_search_end`` in the caller.

Not supported, raising ``NotImplementedError`` with the alternative: ``distribution_strategy``,
``logger``, a custom ``Oracle`` (``oracle=``, ``kt.Oracle``, ``kt.oracles``), ``kt.Tuner``,
``kt.SklearnTuner``, the deprecated ``oracle.update_trial`` reporting; unknown arguments
raise ``TypeError`` listing the supported ones.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import inspect
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import keras_tuner as _kt
import numpy as np
from keras_tuner import HyperModel, HyperParameters, Objective, applications, errors
from keras_tuner.engine.hyperparameters import Boolean as _Boolean
from keras_tuner.engine.hyperparameters import Float as _Float
from keras_tuner.engine.hyperparameters import Int as _Int
from keras_tuner.engine.trial import Trial, TrialStatus

# keras-tuner's own helpers, so objectives, averaging over executions, the best step and the
# best-epoch checkpoint behave exactly as in keras-tuner (not exported publicly by 1.4.x).
from keras_tuner.src.engine import tuner_utils as _tuner_utils
from keras_tuner.src.engine.hypermodel import get_hypermodel as _get_hypermodel
from keras_tuner.src.engine.metrics_tracking import MetricsTracker
from keras_tuner.src.engine.objective import create_objective
from keras_tuner.src.engine.oracle import _maybe_infer_direction_from_objective

from tuner_service import attrs as A
from tuner_service import study as study_mod
from tuner_service.errors import BadInput, StudyAborted, TrialError
from tuner_service.hp import TrialHyperParameters, fixed, grid_values
from tuner_service.runners import Outcome
from tuner_service.runners._env import device_name
from tuner_service.runners.keras import model_summary

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from tuner_service.spec import StudySpec

__all__ = [
    "BayesianOptimization",
    "GridSearch",
    "HyperModel",
    "HyperParameters",
    "Hyperband",
    "Objective",
    "RandomSearch",
    "Unsupported",
    "applications",
    "errors",
    "tuners",
]

_log = logging.getLogger(__name__)

#: Study user attr describing the keras-tuner front end (class, objective, hypermodel source).
FACADE_ATTR = "keras_tuner"
#: The study spec's model reference: not importable on purpose, so ``tuner-service worker``
#: and ``retrain`` refuse these studies (their data lives only in ``search()``'s arguments).
IN_PROCESS_MODEL = "<runs only inside tuner_service.keras_tuner search()>"
_MAX_GRID_POINTS = 100_000
_POLL_SECONDS = 1.0
_BARRIER_SECONDS = 120.0


class Unsupported(NotImplementedError):
    """A keras-tuner feature this front end does not provide; the message names the alternative."""


class _UnsupportedAttribute(Unsupported, AttributeError):
    """Also an AttributeError, so ``hasattr(kt, name)`` stays False for unsupported names."""


_UNSUPPORTED_NAMES = {
    "Tuner": "subclass kt.RandomSearch (or another tuner here) and override run_trial()",
    "Oracle": "choose the algorithm with kt.RandomSearch, kt.Hyperband, kt.BayesianOptimization or kt.GridSearch",
    "oracles": "choose the algorithm with kt.RandomSearch, kt.Hyperband, kt.BayesianOptimization or kt.GridSearch",
    "synchronized": "oracles are not customisable here; trials are claimed atomically from the storage",
    "SklearnTuner": "use `tuner-service submit` with tuner: grid (GridSearchCV through SciKeras)",
    "engine": "use the names exported here (kt.HyperModel, kt.HyperParameters, kt.Objective, the tuners)",
}


def __getattr__(name: str) -> Any:
    if name in _UNSUPPORTED_NAMES or (not name.startswith("__") and hasattr(_kt, name)):
        hint = _UNSUPPORTED_NAMES.get(name, "use the names exported here, or the real keras_tuner")
        raise _UnsupportedAttribute(f"tuner_service.keras_tuner does not provide keras_tuner.{name}; {hint}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ============================================================================ hyperparameters


class _GridMiss(errors.FatalError, Unsupported):
    """A grid-search trial registered a hyperparameter that is not part of the enumerated grid."""


class _Branch(BaseException):
    """Raised by the grid probe at the first unassigned hyperparameter (BaseException, so a
    broad ``except Exception`` in user code cannot swallow it)."""

    def __init__(self, hp: Any) -> None:
        super().__init__(hp.name)
        self.hp = hp


class _EntryPolicy:
    """keras-tuner's ``hyperparameters``/``tune_new_entries``/``allow_new_entries`` rules."""

    def __init__(self, declared: HyperParameters | None, tune_new_entries: bool, allow_new_entries: bool) -> None:
        self.declared = declared
        self.tune_new_entries = tune_new_entries
        self.allow_new_entries = allow_new_entries

    def is_new(self, hp: Any) -> bool:
        return self.declared is None or not self.declared._exists(hp.name, hp.conditions)

    def check(self, hp: Any) -> bool:
        """True when ``hp`` is tuned; raises (as keras-tuner does, fatally) for a forbidden entry."""
        if not self.is_new(hp):
            return True
        if not self.allow_new_entries:
            raise errors.FatalRuntimeError(f"`allow_new_entries` is `False`, but found new entries [{hp!r}]")
        return self.tune_new_entries

    def seed(self, hp: HyperParameters) -> None:
        if self.declared is not None:
            hp.merge(self.declared)


class _TrialHP(TrialHyperParameters):
    """``hp`` of one trial: values from the Optuna trial, with keras-tuner's entry policy and,
    for grid search, a check that every active hyperparameter is one of the grid's."""

    def __init__(self, trial: optuna.Trial | None, policy: _EntryPolicy, grid_names: set[str] | None = None) -> None:
        super().__init__(trial)
        self._policy = policy
        self._grid_names = grid_names

    def _register(self, hyperparameter: Any, overwrite: bool = False) -> Any:
        if not self._policy.check(hyperparameter):
            return HyperParameters._register(self, hyperparameter, overwrite)  # default value, not tuned
        if (self._grid_names is not None and self._trial is not None and self.is_active(hyperparameter)
                and hyperparameter.name not in self._grid_names):
            raise _GridMiss(
                f"GridSearch: hyperparameter {hyperparameter.name!r} is not part of the grid (it is first "
                "registered outside build(), e.g. in HyperModel.fit); declare it in "
                "HyperModel.declare_hyperparameters(hp) or pass hyperparameters=... so the grid includes it"
            )
        return super()._register(hyperparameter, overwrite)


class _GridProbe(HyperParameters):
    """Builds with a partial assignment and stops at the first unassigned hyperparameter."""

    def __init__(self, assignment: dict[str, Any], policy: _EntryPolicy) -> None:
        super().__init__()
        self._assignment = assignment
        self._policy = policy

    def _register(self, hyperparameter: Any, overwrite: bool = False) -> Any:
        value = super()._register(hyperparameter, overwrite)
        if not self.is_active(hyperparameter) or not self._policy.check(hyperparameter):
            return value
        name = hyperparameter.name
        if name not in self._assignment:
            raise _Branch(hyperparameter)
        self.values[name] = self._assignment[name]
        return self.values[name]


def _grid_order(hp: Any) -> list[Any]:
    """keras-tuner's GridSearch order of one hyperparameter's values: the default first."""
    try:
        values = grid_values(hp)
    except ValueError:  # a continuous Float: keras-tuner's 10 evenly spaced values
        values = list(hp.values)
    if isinstance(hp, (_Int, _Float)) and not isinstance(hp, _Boolean):
        values = sorted(set(values))  # keras-tuner's log/continuous values come from a set
    default = hp.default
    values = [v for v in values if v != default]
    return [default, *values]


# ============================================================================ callbacks


class _EpochReporter(keras.callbacks.Callback):
    """Records every epoch's logs, reports the objective to Optuna (learning curves, Hyperband),
    and stops the fit when the pruner says so."""

    def __init__(self, trial: optuna.Trial | None, objective: Any, *, report: bool, prune: bool, epochs: int) -> None:
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
        step = epoch + 1  # epochs completed: Hyperband's resource
        if not math.isfinite(value):
            return  # keras-tuner ignores a non-finite epoch; the trial fails if no epoch is finite
        self.trial.report(value, step)
        if self.prune and step < self.epochs and self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


class _TunerHooks(keras.callbacks.Callback):
    """keras-tuner's ``TunerCallback``: forwards batch/epoch events to the tuner's hooks."""

    def __init__(self, tuner: Any, trial: Trial) -> None:
        super().__init__()
        self.tuner, self.trial = tuner, trial

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.tuner.on_epoch_begin(self.trial, self.model, epoch, logs=logs)

    def on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.tuner.on_batch_begin(self.trial, self.model, batch, logs)

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.tuner.on_batch_end(self.trial, self.model, batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.tuner.on_epoch_end(self.trial, self.model, epoch, logs=logs)


# ============================================================================ spill files


@dataclass(frozen=True)
class _Spilled:
    """Placeholder for an array written to the spill folder; loaded memory-mapped."""

    path: str


def _unsupported_input(obj: Any) -> str | None:
    """Why ``obj`` cannot be sent to another process, or None."""
    if inspect.isgenerator(obj) or (hasattr(obj, "__next__") and hasattr(obj, "__iter__")):
        return "a generator/iterator"
    kind = type(obj).__module__ + "." + type(obj).__name__
    if "tensorflow" in kind and "dataset" in kind.lower():
        return "a tf.data.Dataset"
    if isinstance(obj, keras.utils.PyDataset):
        return "a keras.utils.PyDataset"
    return None


def _spill(obj: Any, folder: str, counter: Iterator[int], seen: dict[int, _Spilled] | None = None) -> Any:
    """``obj`` with every numpy array (and eager tensor) saved to ``folder`` and replaced by a
    ``_Spilled`` reference; containers (tuple, list, dict) are walked, and an array passed twice
    (``x`` also in ``validation_data``) is written once."""
    seen = {} if seen is None else seen
    why = _unsupported_input(obj)
    if why is not None:
        raise Unsupported(f"search(..., workers>1) cannot send {why} to worker processes; pass numpy arrays, "
                          "or use workers=1 (which runs in this process and accepts anything model.fit accepts)")
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_spill(v, folder, counter, seen) for v in obj)
    if isinstance(obj, list):
        return [_spill(v, folder, counter, seen) for v in obj]
    if isinstance(obj, dict):
        return {k: _spill(v, folder, counter, seen) for k, v in obj.items()}
    if not isinstance(obj, np.ndarray) and type(obj).__name__ == "EagerTensor":
        obj = obj.numpy()
    if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
        if id(obj) not in seen:
            path = os.path.join(folder, f"array_{next(counter)}.npy")
            np.save(path, obj, allow_pickle=False)
            seen[id(obj)] = _Spilled(path)
        return seen[id(obj)]
    return obj


def _unspill(obj: Any) -> Any:
    if isinstance(obj, _Spilled):
        return np.load(obj.path, mmap_mode="r")
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_unspill(v) for v in obj)
    if isinstance(obj, list):
        return [_unspill(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _unspill(v) for k, v in obj.items()}
    return obj


# ============================================================================ the oracle view


class _OracleView:
    """keras-tuner's ``tuner.oracle`` read side, answered from the study in storage."""

    def __init__(self, tuner: _ServiceTuner) -> None:
        self._tuner = tuner

    @property
    def objective(self) -> Any:
        return self._tuner._objective

    @property
    def max_trials(self) -> int | None:
        return self._tuner._kt_max_trials

    @property
    def seed(self) -> int:
        return self._tuner.seed

    @property
    def hyperparameters(self) -> HyperParameters:
        return self._tuner._space

    @property
    def trials(self) -> dict[str, Trial]:
        """Every started trial (a failed trial that was retried is replaced by its retry)."""
        return self._tuner._kt_trials()

    def get_trial(self, trial_id: str) -> Trial:
        return self.trials[trial_id]

    def get_space(self) -> HyperParameters:
        return self._tuner._space.copy()

    def get_best_trials(self, num_trials: int = 1) -> list[Trial]:
        """COMPLETED trials best first (ties: the earliest), padded with others as keras-tuner does."""
        trials = list(self.trials.values())
        done = [t for t in trials if t.status == TrialStatus.COMPLETED and t.score is not None]
        ranked = sorted(done, key=lambda t: t.score, reverse=self.objective.direction == "max")
        if len(ranked) < num_trials:
            ranked += [t for t in trials if t not in done]
        return ranked[:num_trials]

    def remaining_trials(self) -> int | None:
        return self._tuner.remaining_trials

    def _refuse(self, *_a: Any, **_k: Any) -> Any:
        raise Unsupported("the oracle of tuner_service.keras_tuner is read-only: trials come from the study's "
                          "queue; return the metrics from run_trial()/HyperModel.fit() instead of reporting them")

    create_trial = update_trial = end_trial = populate_space = _refuse


# ============================================================================ the tuner


@dataclass
class _TrialContext:
    """What the running trial needs beyond keras-tuner's ``Trial``: the Optuna side."""

    optuna_trial: optuna.Trial | None
    prune: bool
    reporters: list[_EpochReporter] = field(default_factory=list)
    model: Any = None
    fit_seconds: float = 0.0

    @property
    def pruned(self) -> bool:
        return any(r.pruned for r in self.reporters)


_TUNER_KWARGS = ("max_model_size", "optimizer", "loss", "metrics", "directory", "project_name", "tuner_id",
                 "overwrite", "executions_per_trial", "storage")
_REFUSED_KWARGS = {
    "distribution_strategy": "trials run on the default device; give each worker its own GPU with "
                             "search(..., workers=N) or `tuner-service agent` instead of a tf.distribute strategy",
    "logger": "drop it (keras-tuner ignores it too); progress is in the storage: `tuner-service status`, dashboard",
    "oracle": "choose the algorithm with kt.RandomSearch, kt.Hyperband, kt.BayesianOptimization or kt.GridSearch",
}


class _ServiceTuner:
    """keras-tuner's ``Tuner`` API over a tuner-service study (see the module docstring)."""

    _TUNER = "random"
    _NEEDS_MAX_TRIALS = True

    def __init__(
        self,
        hypermodel: Any = None,
        objective: Any = None,
        max_trials: int | None = 10,
        seed: int | None = None,
        hyperparameters: HyperParameters | None = None,
        tune_new_entries: bool = True,
        allow_new_entries: bool = True,
        max_retries_per_trial: int = 0,
        max_consecutive_failed_trials: int = 3,
        *,
        _tuner_options: dict[str, Any] | None = None,
        _max_epochs: int | None = None,
        **kwargs: Any,
    ) -> None:
        for name, hint in _REFUSED_KWARGS.items():
            if kwargs.get(name) is not None:
                raise Unsupported(f"{type(self).__name__}({name}=...) is not supported by tuner_service.keras_tuner; {hint}")
            kwargs.pop(name, None)
        unknown = sorted(set(kwargs) - set(_TUNER_KWARGS))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected argument(s) {', '.join(unknown)}; supported: "
                            f"{', '.join(self._supported_args())}")
        if not hyperparameters and not tune_new_entries:
            raise ValueError("If you set `tune_new_entries=False`, you must specify the search space via the "
                             "`hyperparameters` argument.")
        if not hyperparameters and not allow_new_entries:
            raise ValueError("If you set `allow_new_entries=False`, you must specify the search space via the "
                             "`hyperparameters` argument.")
        run_trial_owner = next(c for c in type(self).__mro__ if "run_trial" in c.__dict__)
        if hypermodel is None and run_trial_owner.__module__ == __name__:
            raise ValueError("Received `hypermodel=None`. We only allow not specifying `hypermodel` if the user "
                             "defines the search space in `Tuner.run_trial()` by subclassing a `Tuner` class "
                             "without using a `HyperModel` instance.")
        if max_trials is None and self._NEEDS_MAX_TRIALS:
            raise Unsupported(f"{type(self).__name__}(max_trials=None) (search until the space is exhausted) is not "
                              "supported; give max_trials, or use kt.GridSearch to cover a discrete space")
        if max_trials is not None and max_trials < 1:
            raise ValueError(f"max_trials must be at least 1 (got {max_trials})")
        executions = int(kwargs.get("executions_per_trial") or 1)
        if executions < 1:
            raise ValueError(f"executions_per_trial must be at least 1 (got {executions})")

        self.hypermodel = _get_hypermodel(hypermodel)
        self._objective = create_objective(objective)
        self._kt_max_trials = max_trials
        self.seed = seed if seed is not None else random.randint(1, 10000)
        self._seed_given = seed is not None
        self._policy = _EntryPolicy(hyperparameters or None, tune_new_entries, allow_new_entries)
        self.max_retries_per_trial = max_retries_per_trial
        self.max_consecutive_failed_trials = max_consecutive_failed_trials
        self.executions_per_trial = executions
        self.max_model_size = kwargs.get("max_model_size")
        self.optimizer = kwargs.get("optimizer")
        self.loss = kwargs.get("loss")
        self.metrics = kwargs.get("metrics")
        self.directory = kwargs.get("directory") or "."
        self.project_name = kwargs.get("project_name") or "untitled_project"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", str(self.project_name)):
            raise ValueError(f"project_name {self.project_name!r} is not valid here: it is also the study's name; "
                             "use letters, digits, '_', '-', '.' (up to 128 characters)")
        self.tuner_id = kwargs.get("tuner_id") or os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
        self._tuner_options = _tuner_options or {}
        self._max_epochs = _max_epochs
        self._project_abs = os.path.abspath(os.path.join(str(self.directory), self.project_name))
        storage = kwargs.get("storage")
        if storage is None:
            os.makedirs(os.path.abspath(str(self.directory)), exist_ok=True)
            storage = f"sqlite:///{os.path.abspath(os.path.join(str(self.directory), self.project_name))}.db"
        self.storage_url: str = storage
        self._ctx: _TrialContext | None = None
        self._storage: Any = None
        self._study: optuna.Study | None = None
        self._worker_index = 0

        overwrite = bool(kwargs.get("overwrite", False))
        if overwrite and os.path.exists(self._project_abs):
            shutil.rmtree(self._project_abs)
        self._explore_space()
        self._open(overwrite=overwrite)
        self.oracle = _OracleView(self)

    @classmethod
    def _supported_args(cls) -> list[str]:
        own = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")
               and not p.startswith("_")]
        return [*own, *_TUNER_KWARGS]

    # ------------------------------------------------------------------ keras-tuner attributes

    @property
    def project_dir(self) -> str:
        dirname = os.path.join(str(self.directory), self.project_name)
        os.makedirs(dirname, exist_ok=True)
        return dirname

    def get_trial_dir(self, trial_id: str) -> str:
        dirname = os.path.join(self._project_abs, f"trial_{trial_id}")
        os.makedirs(dirname, exist_ok=True)
        return dirname

    @property
    def remaining_trials(self) -> int | None:
        """Trials not started yet (keras-tuner: ``max_trials - len(trials)``)."""
        counts = study_mod.Counts.for_study(self._get_study())
        return max(0, self._budget() - counts.finished - counts.running)

    def save(self) -> None:
        """Nothing to do: every trial is recorded in the storage as it happens."""

    def reload(self) -> None:
        """Nothing to do: results are read from the storage on every query."""

    # ------------------------------------------------------------------ the study

    def _budget(self) -> int:
        """The number of trials this search runs in all."""
        assert self._kt_max_trials is not None
        return self._kt_max_trials

    def _spec(self, budget: int, seed: int) -> StudySpec:
        from tuner_service.spec import validate_spec

        obj = self._objective
        raw: dict[str, Any] = {
            "name": self.project_name,
            "model": f"{IN_PROCESS_MODEL}:{self._hypermodel_name()}",
            "objective": {"name": obj.name, "direction": "maximize" if obj.direction == "max" else "minimize"},
            "tuner": {"name": self._TUNER, "options": self._tuner_options},
            "budget": {"max_trials": budget, **({"max_epochs": self._max_epochs} if self._max_epochs else {})},
            "seed": seed,
        }
        try:
            return validate_spec(raw, source=type(self).__name__)
        except BadInput as exc:
            raise ValueError(str(exc)) from None

    def _hypermodel_name(self) -> str:
        obj = self.hypermodel
        name = (getattr(obj.build, "__name__", "") if type(obj).__name__ == "DefaultHyperModel"
                else type(obj).__name__)
        return name if name.isidentifier() else "build"

    def _hypermodel_source(self) -> tuple[str | None, str | None]:
        """``file.py:name`` of a module-level hypermodel and the file's SHA-256 (provenance only)."""
        import hashlib

        obj = self.hypermodel
        target = obj.build if type(obj).__name__ == "DefaultHyperModel" else type(obj)
        try:
            path = inspect.getsourcefile(target)
        except (TypeError, OSError):
            return None, None
        if not path or not os.path.isfile(path):
            return None, None
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        return f"{path}:{getattr(target, '__qualname__', '?')}", digest

    def _open(self, *, overwrite: bool) -> None:
        """Create the study with its budget, or resume it (``overwrite=False``)."""
        import optuna

        from tuner_service.storage import open_storage

        self._storage = open_storage(self.storage_url)
        if overwrite and study_mod.study_exists(self._storage, self.project_name):
            optuna.delete_study(study_name=self.project_name, storage=self._storage)
        if study_mod.study_exists(self._storage, self.project_name):
            self._resume()
            return
        budget = self._budget()
        spec = self._spec(budget, self.seed)
        try:
            study = optuna.create_study(study_name=self.project_name, storage=self._storage,
                                        direction=spec.objective.direction)
        except optuna.exceptions.DuplicatedStudyError:  # another process created it just now
            self._resume()
            return
        try:
            source, digest = self._hypermodel_source()
            attrs: dict[str, Any] = {
                A.SPEC: _stored(spec),
                "submitted_at": _now(),
                "tuner": "gridsearch" if isinstance(self, GridSearch) else spec.tuner.name,
                FACADE_ATTR: {"class": type(self).__name__, "objective": str(self._objective),
                              "hypermodel": source, "executions_per_trial": self.executions_per_trial,
                              "max_trials": self._kt_max_trials, "project_dir": self._project_abs},
            }
            if digest:
                attrs[A.CODE_HASH] = digest
            for key, value in attrs.items():
                study.set_user_attr(key, value)
            self._enqueue(study, 0, budget)
            study.set_user_attr(A.READY, True)
        except BaseException:
            optuna.delete_study(study_name=self.project_name, storage=self._storage)
            raise
        self._spec_obj = spec
        _log.info("study %r created in %s: %s, %d trials", self.project_name, self.storage_url,
                  type(self).__name__, budget)

    def _enqueue(self, study: optuna.Study, used: int, budget: int) -> None:
        """Make slots ``used .. budget-1`` claimable: the study's budget counter (grid search:
        the grid points, enqueued)."""
        if budget > used:
            study_mod.add_budget(study._storage, study._study_id, budget - used)

    def _resume(self) -> None:
        """``overwrite=False`` on an existing project: keep its trials, top the budget up."""
        import optuna

        probe = optuna.load_study(study_name=self.project_name, storage=self._storage)
        deadline = time.monotonic() + 30
        while not probe.user_attrs.get(A.READY):
            if time.monotonic() > deadline:
                raise ValueError(f"project {self.project_name!r} exists in {self.storage_url} but was never fully "
                                 "created; pass overwrite=True to start it afresh")
            time.sleep(0.5)
            probe = optuna.load_study(study_name=self.project_name, storage=self._storage)
        facade = probe.user_attrs.get(FACADE_ATTR)
        if not facade:
            raise ValueError(f"study {self.project_name!r} in {self.storage_url} was not created by "
                             "tuner_service.keras_tuner; choose another project_name or pass overwrite=True")
        if facade.get("class") != type(self).__name__ or facade.get("objective") != str(self._objective):
            raise ValueError(
                f"project {self.project_name!r} was created by {facade.get('class')} with {facade.get('objective')}; "
                f"it cannot be resumed by {type(self).__name__} with {self._objective}: pass overwrite=True "
                "or choose another project_name"
            )
        stored = study_mod.stored_spec(probe)
        if not self._seed_given:
            self.seed = stored.seed
        counts = study_mod.Counts.for_study(probe)
        budget = self._budget()
        self._enqueue(probe, counts.total, budget)
        spec = self._spec(max(budget, counts.budget_used), self.seed)
        probe.set_user_attr(A.SPEC, _stored(spec))
        self._spec_obj = spec
        _log.info("resuming project %r: %d finished, %d to run", self.project_name, counts.finished,
                  max(0, budget - counts.finished - counts.running))

    def _get_study(self) -> optuna.Study:
        """The study with this worker's sampler and pruner (loaded once per process)."""
        if self._study is None:
            from tuner_service import tuners

            if self._storage is None:
                from tuner_service.storage import open_storage

                self._storage = open_storage(self.storage_url)
            sampler, pruner = tuners.make(self._spec_obj, worker=self._worker_index)
            self._prune = type(pruner).__name__ != "NopPruner"
            self._study = study_mod.load(self._storage, self.project_name, sampler=sampler, pruner=pruner)
        return self._study

    def __getstate__(self) -> dict[str, Any]:
        # Storage handles, the open study and the oracle view are per process.
        state = dict(self.__dict__)
        for key in ("_storage", "_study", "oracle", "_ctx"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._storage = self._study = self._ctx = None
        self.oracle = _OracleView(self)

    # ------------------------------------------------------------------ the search space

    def _explore_space(self) -> HyperParameters:
        """keras-tuner's ``_populate_initial_space``: build with defaults until every
        conditional scope has been active once, collecting the hyperparameters (build errors
        surface here, at construction, as in keras-tuner)."""
        self._space = HyperParameters()
        self._policy.seed(self._space)
        if self.hypermodel is None:
            return self._space
        hp = self._space.copy()
        self.hypermodel.declare_hyperparameters(hp)
        self._record_space(hp)
        never_active: list[Any] = []
        once_active: list[Any] = []
        hp = self._space.copy()
        try:
            while True:
                self.hypermodel.build(hp)
                self._record_space(hp)
                for conditions in hp.active_scopes:
                    if conditions not in once_active:
                        once_active.append(copy.deepcopy(conditions))
                    if conditions in never_active:
                        never_active.remove(conditions)
                for conditions in hp.inactive_scopes:
                    if conditions not in once_active:
                        never_active.append(copy.deepcopy(conditions))
                if not never_active:
                    break
                hp = self._space.copy()
                for condition in never_active[0]:
                    hp.values[condition.name] = condition.values[0]
                hp.ensure_active_values()
        finally:
            _clear_session(free_memory=False)
        return self._space

    def _record_space(self, hp: HyperParameters) -> None:
        """keras-tuner's ``Oracle.update_space``: new hyperparameters join the search space."""
        new = [p for p in hp.space if not self._space._exists(p.name, p.conditions)]
        if new and not self._policy.allow_new_entries:
            raise RuntimeError(f"`allow_new_entries` is `False`, but found new entries {new}")
        if self._policy.tune_new_entries:
            self._space.merge(new)

    def search_space_summary(self, extended: bool = False) -> None:
        """Print the search space, in keras-tuner's format."""
        print("Search space summary")
        hp = self.oracle.get_space()
        print(f"Default search space size: {len(hp.space)}")
        for p in hp.space:
            config = p.get_config()
            name = config.pop("name")
            print(f"{name} ({p.__class__.__name__})")
            print(config)

    # ------------------------------------------------------------------ search

    def search(self, *fit_args: Any, workers: int = 1, **fit_kwargs: Any) -> None:
        """Run the remaining trials: here (``workers=1``) or in ``workers`` processes."""
        if workers < 1:
            raise ValueError(f"workers must be at least 1 (got {workers})")
        study = self._get_study()
        study.set_user_attr(A.ABORTED, None)
        self._record_data_sizes(study, fit_args, fit_kwargs)
        self.on_search_begin()
        if workers == 1:
            self._work(fit_args, fit_kwargs)
        else:
            self._search_processes(workers, fit_args, fit_kwargs)
        self.on_search_end()

    def _work(self, fit_args: tuple[Any, ...], fit_kwargs: dict[str, Any]) -> int:
        """The lifecycle's claim loop (:class:`tuner_service.lifecycle.TrialLoop`) with this
        tuner as the runner, until the budget is spent; returns the trials run here."""
        from tuner_service.lifecycle import LoopOptions, TrialLoop

        study = self._get_study()
        self._reclaim_dead_local_trials(study)
        runner = _SearchRunner(self, fit_args, fit_kwargs)
        loop = TrialLoop(study, runner, self._run_attrs, prune=self._prune, objective=self._objective.name,
                         options=LoopOptions(retry_limit=self.max_retries_per_trial,
                                             max_consecutive_failures=self.max_consecutive_failed_trials),
                         on_trial_done=runner.trial_done)
        reason = study.user_attrs.get(A.ABORTED)
        if reason:
            raise RuntimeError(reason)
        try:
            return loop.run()
        except StudyAborted:
            # keras-tuner's words for max_consecutive_failed_trials.
            reason = (f"Number of consecutive failures exceeded the limit of {self.max_consecutive_failed_trials}.\n"
                      + (runner.last_message or ""))
            study.set_user_attr(A.ABORTED, reason)
            raise RuntimeError(reason) from None

    def _reclaim_dead_local_trials(self, study: optuna.Study) -> None:
        """Hand back RUNNING trials whose process on this host is gone (a search killed outright),
        so a resumed search reruns them at once instead of after the heartbeat grace period."""
        from optuna.trial import TrialState

        from tuner_service.lifecycle import requeue

        host = socket.gethostname()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = t.user_attrs.get(A.PID)
            if t.user_attrs.get(A.HOST) != host or not isinstance(pid, int) or pid == os.getpid() or _alive(pid):
                continue
            requeue(study, t._trial_id, kind="crash", reason=f"process {pid} on {host} is gone")

    def _trial_id(self, number: int) -> str:
        # keras-tuner pads trial ids to the width of str(max_trials) ("None" for Hyperband/GridSearch).
        return f"{number:0{len(str(self._kt_max_trials))}d}"

    def _run_attrs(self) -> dict[str, Any]:
        return {
            A.HOST: socket.gethostname(),
            A.PID: os.getpid(),
            A.WORKER: self._worker_index,
            "tuner_id": self.tuner_id,
            A.DEVICE: device_name(keras),
            A.KERAS_BACKEND: keras.backend.backend(),
            A.STARTED_AT: round(time.time(), 3),
        }

    def _outcome(self, hp: HyperParameters, ctx: _TrialContext, started: float,
                 trial_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(short attrs, long details) of a finished run."""
        histories = [r.history for r in ctx.reporters]
        attrs: dict[str, Any] = {
            "trial_id": trial_id,
            "checkpoint": self._checkpoint_path(trial_id),
            A.FIT_SECONDS: round(ctx.fit_seconds, 3),
            A.TRIAL_SECONDS: round(time.perf_counter() - started, 3),
            A.EPOCHS_RUN: max((r.epochs_run for r in ctx.reporters), default=0),
        }
        details: dict[str, Any] = {A.HISTORY: _mean_history(histories), "hyperparameters": _jsonable_config(hp)}
        if len(histories) > 1:
            details["execution_histories"] = histories
        if ctx.model is not None:
            attrs[A.PARAM_COUNT] = int(ctx.model.count_params())
            details[A.MODEL_SUMMARY] = model_summary(ctx.model)
        return attrs, details

    def _score(self, results: Any) -> tuple[float, dict[str, float], int]:
        """keras-tuner's scoring: the objective of the best epoch, averaged over executions."""
        _tuner_utils.validate_trial_results(results, self._objective, "Tuner.run_trial()")
        self._check_objective_logged(results)
        metrics = _tuner_utils.convert_to_metrics_dict(results, self._objective)
        best_step = int(_tuner_utils.get_best_step(results, self._objective))
        value = float(metrics[self._objective.name])
        if not math.isfinite(value):
            raise TrialError(f"objective {self._objective.name} is {value}; the model diverged")
        return value, {k: float(v) for k, v in metrics.items() if _is_number(v)}, best_step

    def _best_epoch(self, history: dict[str, list[float]]) -> int | None:
        """1-based epoch of the best objective value in ``history`` (keras-tuner's tie rule)."""
        epochs = max((len(v) for v in history.values()), default=0)
        best: tuple[float, int] | None = None
        for i in range(epochs):
            logs = {k: v[i] for k, v in history.items() if i < len(v)}
            if self._objective.has_value(logs):
                value = float(self._objective.get_value(logs))
                if best is None or self._objective.better_than(value, best[0]):
                    best = (value, i + 1)
        return best[1] if best else None

    def _check_objective_logged(self, results: Any) -> None:
        for result in results if isinstance(results, list) else [results]:
            if isinstance(result, keras.callbacks.History) and result.history:
                first = {k: v[0] for k, v in result.history.items() if v}
                if not self._objective.has_value(first):
                    raise TrialError(
                        f"objective {self._objective.name!r} is not logged by the model (it logs "
                        f"{', '.join(sorted(first)) or 'nothing'}); pass validation data to search() for a val_ "
                        "metric, add the metric to compile(metrics=[...]), or choose another objective"
                    )

    # ------------------------------------------------------------------ one trial (keras-tuner's)

    def run_trial(self, trial: Trial, *args: Any, **kwargs: Any) -> Any:
        """keras-tuner's ``Tuner.run_trial``: build and fit ``executions_per_trial`` times; returns
        the histories. Override it to tune anything; return a History, dict, float or a list."""
        ctx = self._ctx or _TrialContext(None, prune=False)
        self._ctx = ctx
        checkpoint = _tuner_utils.SaveBestEpoch(objective=self._objective,
                                                filepath=self._checkpoint_path(trial.trial_id))
        original_callbacks = kwargs.pop("callbacks", [])
        epochs = int(kwargs.get("epochs") or 1)
        histories = []
        for execution in range(self.executions_per_trial):
            copied_kwargs = copy.copy(kwargs)
            callbacks = self._deepcopy_callbacks(original_callbacks)
            self._configure_tensorboard_dir(callbacks, trial, execution)
            # Only the first execution reports per epoch: Optuna keeps one value per step.
            reporter = _EpochReporter(ctx.optuna_trial, self._objective, report=execution == 0,
                                      prune=ctx.prune, epochs=epochs)
            ctx.reporters.append(reporter)
            callbacks.append(reporter)
            if self._overrides_hooks():
                callbacks.append(_TunerHooks(self, trial))
            callbacks.append(checkpoint)  # the best epoch across all executions
            copied_kwargs["callbacks"] = callbacks
            histories.append(self._build_and_fit_model(trial, *args, **copied_kwargs))
            if reporter.pruned:
                break
        return histories

    def _build_and_fit_model(self, trial: Trial, *args: Any, **kwargs: Any) -> Any:
        """keras-tuner's hook (AutoKeras overrides it): build, fit, keep the build config."""
        hp = trial.hyperparameters
        model = self._try_build(hp)
        if self._ctx is not None:
            self._ctx.model = model
        t0 = time.perf_counter()
        results = self.hypermodel.fit(hp, model, *args, **kwargs)
        if self._ctx is not None:
            self._ctx.fit_seconds += time.perf_counter() - t0
        try:
            with open(self._build_config_path(trial.trial_id), "w") as f:
                json.dump(model.get_build_config(), f)
        except (TypeError, ValueError, AttributeError):  # an unbuilt subclassed model has none
            pass
        _tuner_utils.validate_trial_results(results, self._objective, "HyperModel.fit()")
        return results

    def _try_build(self, hp: HyperParameters) -> Any:
        _clear_session(free_memory=True)  # keras-tuner's clear_session + gc.collect (Keras 3 does both)
        model = self._build_hypermodel(hp)
        if not isinstance(model, keras.models.Model):
            raise errors.FatalTypeError(
                "Expected the model-building function, or HyperModel.build() to return a valid Keras Model "
                f"instance. Received: {model} of type {type(model)}."
            )
        if self.max_model_size and model.built:
            size = int(sum(math.prod(p.shape) for p in model.trainable_weights))
            if size > self.max_model_size:
                raise errors.FailedTrialError(f"Oversized model: {size} parameters. Skip model.")
        return model

    def _build_hypermodel(self, hp: HyperParameters) -> Any:
        model = self.hypermodel.build(hp)
        self._override_compile_args(model)
        return model

    def _override_compile_args(self, model: Any) -> None:
        """keras-tuner's ``optimizer``/``loss``/``metrics`` overrides of the model's compile."""
        if not (self.optimizer or self.loss or self.metrics):
            return
        kwargs: dict[str, Any] = {
            "optimizer": model.optimizer,
            "loss": model.loss,
            "metrics": [m for m in (model.metrics or []) if m.name not in ("loss", "compile_metric")],
        }
        if self.loss:
            kwargs["loss"] = self.loss
        if self.optimizer:
            kwargs["optimizer"] = (self.optimizer if isinstance(self.optimizer, str)
                                   else keras.optimizers.deserialize(keras.optimizers.serialize(self.optimizer)))
        if self.metrics:
            kwargs["metrics"] = self.metrics
        model.compile(**kwargs)

    def _deepcopy_callbacks(self, callbacks: list[Any]) -> list[Any]:
        try:
            return copy.deepcopy(callbacks)
        except Exception:
            raise errors.FatalValueError(
                "All callbacks used during a search should be deep-copyable (since they are reused across "
                f"trials). It is not possible to do `copy.deepcopy({callbacks})`"
            ) from None

    def _configure_tensorboard_dir(self, callbacks: list[Any], trial: Trial, execution: int = 0) -> None:
        """keras-tuner's per-trial TensorBoard folder ``{log_dir}/{trial_id}/execution{n}`` (plus the
        HParams callback when TensorBoard is installed)."""
        for callback in list(callbacks):
            if callback.__class__.__name__ != "TensorBoard":
                continue
            logdir = os.path.join(str(callback.log_dir), str(trial.trial_id), f"execution{execution}")
            callback.log_dir = logdir
            if keras.backend.backend() != "tensorflow":
                continue
            try:
                from tensorboard.plugins.hparams import api as hparams_api
            except ImportError:
                continue
            hparams = _tuner_utils.convert_hyperparams_to_hparams(trial.hyperparameters, hparams_api)
            callbacks.append(hparams_api.KerasCallback(writer=logdir, hparams=hparams, trial_id=trial.trial_id))

    def _overrides_hooks(self) -> bool:
        cls = type(self)
        return any(getattr(cls, n) is not getattr(_ServiceTuner, n)
                   for n in ("on_epoch_begin", "on_epoch_end", "on_batch_begin", "on_batch_end"))

    def _checkpoint_path(self, trial_id: str) -> str:
        return os.path.join(self.get_trial_dir(trial_id), "checkpoint.weights.h5")

    def _build_config_path(self, trial_id: str) -> str:
        return os.path.join(self.get_trial_dir(trial_id), "build_config.json")

    # keras-tuner's hooks: no-ops here, for subclasses.
    def on_search_begin(self) -> None:
        pass

    def on_search_end(self) -> None:
        pass

    def on_trial_begin(self, trial: Trial) -> None:
        pass

    def on_trial_end(self, trial: Trial) -> None:
        pass

    def on_epoch_begin(self, trial: Trial, model: Any, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_epoch_end(self, trial: Trial, model: Any, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_batch_begin(self, trial: Trial, model: Any, batch: int, logs: dict[str, Any] | None) -> None:
        pass

    def on_batch_end(self, trial: Trial, model: Any, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    # ------------------------------------------------------------------ worker processes

    def _search_processes(self, workers: int, fit_args: tuple[Any, ...], fit_kwargs: dict[str, Any]) -> None:
        """Run the claim loop in ``workers`` child processes sharing the arrays through spill files."""
        import itertools

        try:
            import cloudpickle
        except ImportError:  # pragma: no cover - a dependency of joblib, hence of scikit-learn
            raise Unsupported("search(..., workers>1) needs cloudpickle (pip install cloudpickle); "
                              "or use workers=1") from None
        counts = study_mod.Counts.for_study(self._get_study())
        todo = self._budget() - counts.finished - counts.running
        if todo <= 0 and counts.running == 0:
            return  # a finished project: no process to start
        workers = max(1, min(workers, todo))
        folder = os.path.join(self._project_abs, "spill", uuid.uuid4().hex[:12])
        os.makedirs(folder)
        try:
            counter = itertools.count()
            body = {"tuner": self, "args": _spill(fit_args, folder, counter),
                    "kwargs": _spill(fit_kwargs, folder, counter)}
            try:
                blob = cloudpickle.dumps(body)
            except Exception as exc:
                raise Unsupported(
                    f"search(..., workers={workers}) must pickle the tuner, its hypermodel and the non-array "
                    f"search() arguments (callbacks included) to send them to the workers, and that failed: "
                    f"{type(exc).__name__}: {_one_line(exc)}; make them picklable or use workers=1"
                ) from None
            payload = os.path.join(folder, "payload.pkl")
            with open(payload, "wb") as f:
                pickle.dump({"sys_path": list(sys.path), "cwd": os.getcwd()}, f)
                f.write(blob)
            threads = str(max(1, (os.cpu_count() or 1) // workers))
            env = {**os.environ, "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads,
                   "OMP_NUM_THREADS": threads}
            code = "from tuner_service.keras_tuner import _child_main; raise SystemExit(_child_main())"
            procs = [subprocess.Popen([sys.executable, "-c", code, payload, str(i), str(workers)], env=env)
                     for i in range(workers)]
            _wait(procs)
            self._raise_child_errors(folder, procs)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _raise_child_errors(self, folder: str, procs: list[subprocess.Popen[bytes]]) -> None:
        import cloudpickle

        for i, p in enumerate(procs):
            path = os.path.join(folder, f"error_{i}.pkl")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    exc = cloudpickle.load(f)
                raise exc
            if p.returncode not in (0, None):
                raise RuntimeError(f"search worker {i} exited with code {p.returncode}; see its output above")

    def _record_data_sizes(self, study: optuna.Study, fit_args: tuple[Any, ...], fit_kwargs: dict[str, Any]) -> None:
        """The ``data`` study attr the report shows (sizes only; the data stays in this process)."""
        info: dict[str, Any] = {"source": "search() arguments"}
        x = fit_args[0] if fit_args else fit_kwargs.get("x")
        val = fit_kwargs.get("validation_data")
        if _n_samples(x) is not None:
            info["train"] = _n_samples(x)
        if isinstance(val, (tuple, list)) and val and _n_samples(val[0]) is not None:
            info["validation"] = _n_samples(val[0])
        study.set_user_attr("data", info)

    # ------------------------------------------------------------------ results

    def _kt_trials(self) -> dict[str, Trial]:
        from optuna.trial import TrialState

        frozen = self._get_study().get_trials(deepcopy=False)
        retried = {n for t in frozen for n in t.system_attrs.get(A.RETRY_HISTORY, ())}
        out: dict[str, Trial] = {}
        for ft in frozen:
            if ft.state == TrialState.WAITING or (ft.state == TrialState.FAIL and ft.number in retried):
                continue
            t = self._to_kt_trial(ft)
            out[t.trial_id] = t
        return out

    def _to_kt_trial(self, ft: FrozenTrial) -> Trial:
        from optuna.trial import TrialState

        attrs = {**ft.system_attrs, **ft.user_attrs}  # the long details are system attrs
        config = attrs.get("hyperparameters")
        hp = HyperParameters.from_config(config) if config else fixed(dict(ft.params))
        status = {TrialState.COMPLETE: TrialStatus.COMPLETED, TrialState.FAIL: TrialStatus.FAILED,
                  TrialState.RUNNING: TrialStatus.RUNNING}.get(ft.state, ft.state.name)
        trial = Trial(hp, trial_id=attrs.get("trial_id") or self._trial_id(ft.number), status=status,
                      message=attrs.get(A.FAIL_REASON))
        trial.metrics = self._metrics(attrs)
        trial.best_step = attrs.get("best_step") or 0
        if ft.state == TrialState.COMPLETE:
            trial.score = ft.value
        elif ft.intermediate_values:
            pick = max if self._objective.direction == "max" else min
            trial.score = pick(ft.intermediate_values.values())
        return trial

    def _metrics(self, attrs: dict[str, Any]) -> MetricsTracker:
        """The per-epoch history as keras-tuner's ``MetricsTracker`` (steps = 0-based epochs)."""
        tracker = MetricsTracker()
        history: dict[str, list[float]] = dict(attrs.get(A.HISTORY) or {})
        obj = self._objective
        if history and obj.name not in history:
            epochs = max(len(v) for v in history.values())
            logs = [{k: v[i] for k, v in history.items() if i < len(v)} for i in range(epochs)]
            if all(obj.has_value(lg) for lg in logs):
                history[obj.name] = [float(obj.get_value(lg)) for lg in logs]
        if not history and attrs.get("best_metrics"):
            step = attrs.get("best_step") or 0
            for name, value in attrs["best_metrics"].items():
                tracker.register(name, direction=_maybe_infer_direction_from_objective(obj, name))
                tracker.update(name, value, step=step)
            return tracker
        for name, values in history.items():
            tracker.register(name, direction=_maybe_infer_direction_from_objective(obj, name))
            for step, value in enumerate(values):
                tracker.update(name, value, step=step)
        return tracker

    def get_best_hyperparameters(self, num_trials: int = 1) -> list[HyperParameters]:
        """The best trials' hyperparameters (keras-tuner ``HyperParameters``), best first."""
        return [t.hyperparameters for t in self.oracle.get_best_trials(num_trials)]

    def get_best_models(self, num_models: int = 1) -> list[Any]:
        """The best trials' models with their best epoch's weights, best first."""
        return [self.load_model(t) for t in self.oracle.get_best_trials(num_models)]

    def load_model(self, trial: Trial) -> Any:
        """Rebuild ``trial``'s model and load its best-epoch checkpoint (keras-tuner's way)."""
        model = self._try_build(trial.hyperparameters)
        config_path = self._build_config_path(trial.trial_id)
        if not model.built and os.path.exists(config_path):
            with open(config_path) as f:
                model.build_from_config(json.load(f))
        path = self._checkpoint_path(trial.trial_id)
        if not os.path.exists(path):
            raise FileNotFoundError(f"trial {trial.trial_id} has no checkpoint at {path} (it saved no epoch: "
                                    "did HyperModel.fit pass its callbacks to model.fit?)")
        model.load_weights(path)
        return model

    def results_summary(self, num_trials: int = 10) -> None:
        """Print the best trials, in keras-tuner's format."""
        print("Results summary")
        print(f"Results in {self.project_dir}")
        print(f"Showing {num_trials} best trials")
        print(f"{self._objective}")
        for trial in self.oracle.get_best_trials(num_trials):
            print()
            trial.summary()


# ============================================================================ the runner


class _SearchRunner:
    """The keras-tuner API's :class:`~tuner_service.runners.Runner`: one claimed trial through
    the tuner's ``run_trial`` (a subclass's override included) and keras-tuner's scoring. The
    lifecycle claims, records and re-queues; this only runs."""

    def __init__(self, tuner: _ServiceTuner, fit_args: tuple[Any, ...], fit_kwargs: dict[str, Any]) -> None:
        self.tuner, self.fit_args, self.fit_kwargs = tuner, fit_args, fit_kwargs
        self.backend = keras.backend.backend()
        self.device = device_name(keras)
        self.kt_trial: Trial | None = None
        self.last_message: str | None = None

    def preflight(self) -> dict[str, Any]:
        return {}

    def run(self, trial: optuna.Trial, *, prune: bool) -> Outcome:
        tuner = self.tuner
        frozen = trial._cached_frozen_trial
        trial_id = tuner._trial_id(frozen.number)
        grid = None
        if isinstance(tuner, GridSearch):
            grid = set(frozen.system_attrs.get(A.FIXED_PARAMS) or {}) | set(frozen.params)
        hp = _TrialHP(trial, tuner._policy, grid)
        kt_trial = self.kt_trial = Trial(hp, trial_id=trial_id, status=TrialStatus.RUNNING)
        tuner._ctx = ctx = _TrialContext(trial, prune=prune)
        started = time.perf_counter()
        try:
            tuner._policy.seed(hp)
            _log.info("trial %s of %r started", trial_id, tuner.project_name)
            tuner.on_trial_begin(kt_trial)
            results = tuner.run_trial(kt_trial, *self.fit_args, **self.fit_kwargs)
            attrs, details = tuner._outcome(hp, ctx, started, trial_id)
            if ctx.pruned:
                attrs[A.BEST_EPOCH] = tuner._best_epoch(ctx.reporters[0].history)
                kt_trial.status = "PRUNED"
                return Outcome(None, True, attrs, details)
            value, metrics, best_step = tuner._score(results)
            attrs.update(best_metrics=metrics, best_step=best_step)
            attrs[A.BEST_EPOCH] = best_step + 1
            kt_trial.status, kt_trial.score, kt_trial.best_step = TrialStatus.COMPLETED, value, best_step
            return Outcome([value], False, attrs, details)
        except errors.FatalError:
            raise  # stops the search; the lifecycle re-queues the trial first
        except errors.FailedTrialError as exc:
            self._failed(exc)
            raise TrialError(_one_line(exc)) from exc
        except TrialError as exc:
            self._failed(exc)
            raise
        except Exception as exc:
            self._failed(exc)
            raise TrialError(_one_line(exc), retry=tuner.max_retries_per_trial > 0) from exc
        finally:
            tuner._ctx = None

    def _failed(self, exc: BaseException) -> None:
        assert self.kt_trial is not None
        self.kt_trial.status, self.kt_trial.message = TrialStatus.FAILED, traceback.format_exc()
        self.last_message = self.kt_trial.message

    def trial_done(self, state: str) -> None:
        """After the lifecycle recorded the trial: keras-tuner's end-of-trial hooks."""
        kt_trial = self.kt_trial
        if kt_trial is None:
            return
        if state == "REQUEUED":  # keras-tuner's status for a failed trial it will retry
            kt_trial.status = TrialStatus.INVALID
            _log.warning("trial %s failed; retrying", kt_trial.trial_id)
        self.tuner._record_space(kt_trial.hyperparameters)
        self.tuner.on_trial_end(kt_trial)
        _log.info("trial %s of %r: %s", kt_trial.trial_id, self.tuner.project_name, state)
        self.kt_trial = None


# ============================================================================ the four tuners


class RandomSearch(_ServiceTuner):
    """keras-tuner's ``RandomSearch``: the service's seeded random sampler."""

    _TUNER = "random"

    def __init__(
        self,
        hypermodel: Any = None,
        objective: Any = None,
        max_trials: int = 10,
        seed: int | None = None,
        hyperparameters: HyperParameters | None = None,
        tune_new_entries: bool = True,
        allow_new_entries: bool = True,
        max_retries_per_trial: int = 0,
        max_consecutive_failed_trials: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(hypermodel, objective, max_trials, seed, hyperparameters, tune_new_entries,
                         allow_new_entries, max_retries_per_trial, max_consecutive_failed_trials, **kwargs)


class Hyperband(_ServiceTuner):
    """keras-tuner's ``Hyperband``: Optuna's HyperbandPruner with epochs as the resource; every
    trial is fitted for ``max_epochs`` unless its bracket stops it. The budget is keras-tuner's
    trial count per Hyperband iteration times ``hyperband_iterations`` unless ``max_trials`` is
    given (an extension: keras-tuner's Hyperband has no ``max_trials``)."""

    _TUNER = "hyperband"
    _NEEDS_MAX_TRIALS = False

    def __init__(
        self,
        hypermodel: Any = None,
        objective: Any = None,
        max_epochs: int = 100,
        factor: int = 3,
        hyperband_iterations: int = 1,
        seed: int | None = None,
        hyperparameters: HyperParameters | None = None,
        tune_new_entries: bool = True,
        allow_new_entries: bool = True,
        max_retries_per_trial: int = 0,
        max_consecutive_failed_trials: int = 3,
        max_trials: int | None = None,
        **kwargs: Any,
    ) -> None:
        if factor < 2:
            raise ValueError("factor needs to be a int larger than 1.")
        if max_epochs < 1 or hyperband_iterations < 1:
            raise ValueError("max_epochs and hyperband_iterations must be at least 1")
        self.max_epochs, self.factor, self.hyperband_iterations = max_epochs, factor, hyperband_iterations
        options = {"factor": factor, "min_epochs": 1, "hyperband_iterations": hyperband_iterations}
        super().__init__(hypermodel, objective, max_trials, seed, hyperparameters, tune_new_entries,
                         allow_new_entries, max_retries_per_trial, max_consecutive_failed_trials,
                         _tuner_options=options, _max_epochs=max_epochs, **kwargs)

    def _budget(self) -> int:
        from tuner_service.tuners import hyperband_bracket_trials

        if self._kt_max_trials is not None:
            return self._kt_max_trials
        return hyperband_bracket_trials(self.max_epochs, self.factor) * self.hyperband_iterations

    def run_trial(self, trial: Trial, *fit_args: Any, **fit_kwargs: Any) -> Any:
        # keras-tuner sets the epochs per bracket; here every trial may run max_epochs.
        fit_kwargs["epochs"] = self.max_epochs
        return super().run_trial(trial, *fit_args, **fit_kwargs)


class BayesianOptimization(_ServiceTuner):
    """keras-tuner's ``BayesianOptimization``: the service's Gaussian-process sampler (UCB)."""

    _TUNER = "bayesian"

    def __init__(
        self,
        hypermodel: Any = None,
        objective: Any = None,
        max_trials: int = 10,
        num_initial_points: int | None = None,
        alpha: float = 1e-4,
        beta: float = 2.6,
        seed: int | None = None,
        hyperparameters: HyperParameters | None = None,
        tune_new_entries: bool = True,
        allow_new_entries: bool = True,
        max_retries_per_trial: int = 0,
        max_consecutive_failed_trials: int = 3,
        **kwargs: Any,
    ) -> None:
        self.num_initial_points, self.alpha, self.beta = num_initial_points, alpha, beta
        options = {"num_initial_points": num_initial_points, "alpha": alpha, "beta": beta}
        super().__init__(hypermodel, objective, max_trials, seed, hyperparameters, tune_new_entries,
                         allow_new_entries, max_retries_per_trial, max_consecutive_failed_trials,
                         _tuner_options=options, **kwargs)


class GridSearch(_ServiceTuner):
    """keras-tuner's ``GridSearch``: every combination of the discrete values, enqueued as
    fixed points in keras-tuner's order (defaults first, the last hyperparameter fastest)."""

    _TUNER = "random"  # every trial is a fixed point: the sampler never chooses
    _NEEDS_MAX_TRIALS = False

    def __init__(
        self,
        hypermodel: Any = None,
        objective: Any = None,
        max_trials: int | None = None,
        seed: int | None = None,
        hyperparameters: HyperParameters | None = None,
        tune_new_entries: bool = True,
        allow_new_entries: bool = True,
        max_retries_per_trial: int = 0,
        max_consecutive_failed_trials: int = 3,
        **kwargs: Any,
    ) -> None:
        self._points: list[dict[str, Any]] | None = None
        super().__init__(hypermodel, objective, max_trials, seed, hyperparameters, tune_new_entries,
                         allow_new_entries, max_retries_per_trial, max_consecutive_failed_trials, **kwargs)

    def _budget(self) -> int:
        n = len(self._grid())
        return n if self._kt_max_trials is None else min(n, self._kt_max_trials)

    def _enqueue(self, study: optuna.Study, used: int, budget: int) -> None:
        points = self._grid()[used:budget]
        if points:
            study_mod.enqueue_slots(study, len(points), points)

    def _grid(self) -> list[dict[str, Any]]:
        """The grid points, found by building with partial assignments (depth first): a
        hyperparameter that only exists for some values of another is enumerated only there."""
        if self._points is not None:
            return self._points
        limit = self._kt_max_trials or _MAX_GRID_POINTS
        points: list[dict[str, Any]] = []

        def visit(assignment: dict[str, Any]) -> None:
            if len(points) >= limit:
                return
            probe = _GridProbe(assignment, self._policy)
            try:
                self._policy.seed(probe)
                if self.hypermodel is not None:
                    self.hypermodel.declare_hyperparameters(probe)
                    self.hypermodel.build(probe)
            except _Branch as branch:
                for value in _grid_order(branch.hp):
                    visit({**assignment, branch.hp.name: value})
                return
            finally:
                _clear_session(free_memory=False)  # partial builds are tiny; the next trial collects
            points.append(dict(assignment))

        visit({})
        if len(points) >= _MAX_GRID_POINTS and self._kt_max_trials is None:
            raise ValueError(f"the grid has {_MAX_GRID_POINTS} points or more; pass max_trials or make it smaller")
        self._points = points
        return points


class _TunersNamespace:
    """``kt.tuners.RandomSearch`` etc., as in keras-tuner."""

    RandomSearch = RandomSearch
    Hyperband = Hyperband
    BayesianOptimization = BayesianOptimization
    GridSearch = GridSearch

    def __getattr__(self, name: str) -> Any:
        raise _UnsupportedAttribute(f"tuner_service.keras_tuner.tuners has no {name}; available: RandomSearch, "
                                    "Hyperband, BayesianOptimization, GridSearch")


tuners = _TunersNamespace()


# ============================================================================ helpers


def _mean_history(histories: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per-epoch mean over executions (each epoch over the executions that reached it)."""
    if len(histories) == 1:
        return histories[0]
    out: dict[str, list[float]] = {}
    for name in {k for h in histories for k in h}:
        series = [h[name] for h in histories if name in h]
        n = max(len(s) for s in series)
        out[name] = [float(np.mean([s[i] for s in series if i < len(s)])) for i in range(n)]
    return out


def _jsonable_config(hp: HyperParameters) -> dict[str, Any] | None:
    """``hp.get_config()`` if it can be stored as JSON (a Fixed object value cannot)."""
    try:
        config = hp.get_config()
        json.dumps(config)
        return config
    except (TypeError, ValueError):
        return None


def _stored(spec: StudySpec) -> dict[str, Any]:
    """The spec as stored with the study, without the data/fit sections: they describe a YAML
    study's data source and fit arguments, which here are ``search()``'s own arguments."""
    stored = spec.to_stored()
    for key in ("data", "fit"):
        stored.pop(key, None)
    return stored


def _clear_session(free_memory: bool) -> None:
    """``keras.backend.clear_session``; ``free_memory=False`` skips its gc.collect (about 0.3 s
    with TensorFlow loaded), where supported (Keras >= 3.4)."""
    if "free_memory" in inspect.signature(keras.backend.clear_session).parameters:
        keras.backend.clear_session(free_memory=free_memory)
    else:
        keras.backend.clear_session()
        if free_memory:
            gc.collect()


def _n_samples(x: Any) -> int | None:
    """Rows of an array, or of the first array of a list/dict of inputs; None for others."""
    if isinstance(x, (list, tuple)) and x:
        x = x[0]
    elif isinstance(x, dict) and x:
        x = next(iter(x.values()))
    shape = getattr(x, "shape", None)
    return int(shape[0]) if shape else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


@contextlib.contextmanager
def _no_sigint() -> Iterator[None]:
    """Ignore Ctrl-C while a trial is being handed back (main thread only, where signals land)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _wait(procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait for the workers; on Ctrl-C, make sure each got SIGINT (it hands its trial back)."""
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise


def _barrier(folder: str, index: int, workers: int) -> None:
    """Start claiming together, so the first worker up does not take every trial while the
    others are still importing TensorFlow."""
    open(os.path.join(folder, f"ready_{index}"), "w").close()
    deadline = time.monotonic() + _BARRIER_SECONDS
    while time.monotonic() < deadline:
        if sum(os.path.exists(os.path.join(folder, f"ready_{i}")) for i in range(workers)) >= workers:
            return
        if any(name.startswith("error_") for name in os.listdir(folder)):
            return  # a worker failed to start: the others go on; the parent reports the error
        time.sleep(0.1)


def _child_main(argv: list[str] | None = None) -> int:
    """Entry point of a ``search(..., workers=N)`` worker process."""
    import cloudpickle

    payload, index, workers = (argv or sys.argv[1:])[:3]
    folder = os.path.dirname(payload)
    try:
        with open(payload, "rb") as f:
            header = pickle.load(f)
            sys.path[:0] = [p for p in header["sys_path"] if p not in sys.path]
            os.chdir(header["cwd"])
            body = cloudpickle.loads(f.read())
        tuner: _ServiceTuner = body["tuner"]
        tuner._worker_index = int(index)
        args, kwargs = _unspill(body["args"]), _unspill(body["kwargs"])

        interrupted: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            # Only the first signal interrupts: a second one (Ctrl-C reaches the whole process
            # group, and the parent forwards it too) must not break the trial's hand-back.
            if not interrupted:
                interrupted.append(signum)
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        tuner._get_study()
        _barrier(folder, int(index), int(workers))
        tuner._work(args, kwargs)
        return 0
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        traceback.print_exc()
        try:
            with open(os.path.join(folder, f"error_{index}.pkl"), "wb") as f:
                cloudpickle.dump(exc, f)
        except Exception:
            with open(os.path.join(folder, f"error_{index}.pkl"), "wb") as f:
                cloudpickle.dump(RuntimeError(f"search worker {index}: {_one_line(exc)}"), f)
        return 1

