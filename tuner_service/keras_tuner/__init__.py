"""keras-tuner's API on tuner-service: change ``import keras_tuner as kt`` to
``import tuner_service.keras_tuner as kt`` and nothing else.

The script keeps working, and prints what keras-tuner prints; its trials are Optuna trials in
a tuner-service study (``sqlite:///{directory}/{project_name}.db`` unless ``storage=`` says
otherwise), run through the service's one trial lifecycle: they survive the process
(``overwrite=False`` resumes and runs only what is missing), several processes share one
search (``search(..., workers=N)``, or keras-tuner's chief/worker variables), and the study
can be inspected with ``tuner-service best/trials/report/dashboard``.

What it is: keras-tuner 1.4.8's own classes wherever they *are* the API (``HyperModel``,
``HyperParameters``, ``Objective``, ``Oracle`` and ``oracles.*``, ``errors``, ``applications``,
``Trial``, the console ``Display``), and its tuners (``Tuner``, ``RandomSearch``,
``BayesianOptimization``, ``Hyperband``, ``GridSearch``, ``SklearnTuner``) as keras-tuner's
own classes over a service ``BaseTuner`` (``_base.py``): ``search()`` drives
``tuner_service.lifecycle.TrialLoop``; the study is the oracle's memory.

How an oracle runs (``_strategies.py``):

- ``RandomSearchOracle`` / ``BayesianOptimizationOracle`` (with ``max_trials``): the service's
  seeded random sampler / Gaussian-process sampler; the budget is ``max_trials`` slots.
- ``HyperbandOracle``: keras-tuner's brackets, sizes and epochs per round, and its trial count
  (22 configurations per iteration for ``max_epochs=10, factor=3``; 2 for ``max_epochs=2``).
- ``GridSearchOracle``: every point in keras-tuner's order (defaults first, the last
  hyperparameter fastest), listed with the study, one budget slot each (the i-th configuration
  runs point i); nothing is built to enumerate them, so a point whose ``build()`` raises is a
  failed trial like any other. A hyperparameter first registered while a trial runs extends the
  grid after that trial's point, as keras-tuner's oracle continues from the trials that end.
- Any other oracle, e.g. a subclass with its own ``populate_space`` (or a built-in one with
  ``max_trials=None``): its ``populate_space`` proposes each new trial's values (it sees the
  study's trials in ``self.trials``); IDLE waits, STOPPED ends the search.

Behaviour kept from keras-tuner: each trial's values are drawn up front for the active
hyperparameters of the space (built with defaults at construction, growing as trials register
new ones); ``tune_new_entries``/``allow_new_entries``/``hyperparameters=``; objectives (names,
``Objective``, lists); ``executions_per_trial``; the best epoch's checkpoint per trial
(``get_best_models``); ``run_trial`` returning a ``History``, dict, float or list, or the
deprecated ``oracle.update_trial``; ``max_retries_per_trial`` (a model error is retried, a
``FailedTrialError`` is not); ``max_consecutive_failed_trials`` (keras-tuner's
``RuntimeError``); a ``FatalError`` ends the search, its trial stays in ``oracle.trials``
(INVALID, re-run by a resumed search); ``distribution_strategy`` (build and fit under its
scope); the ``verbose`` of ``search()``; the hooks (``on_trial_*``, ``on_epoch_*``,
``on_batch_*``, ``on_search_*``, ``pre_create_trial``).

Differences, on purpose:

- Trial ids are Optuna trial numbers (padded like keras-tuner's); a retry is a new Optuna
  trial, shown under its first run's id.
- A hyperparameter first registered while a trial runs (in ``HyperModel.fit`` or
  ``run_trial``) takes its default in that trial, as in keras-tuner; it is in the trial's
  stored ``hyperparameters`` but not one of its Optuna parameters.
- Hyperband: a promoted configuration continues in its own trial (keras-tuner starts a new
  trial from the checkpoint), so a search has one trial per configuration; a round's
  promotions are decided as its trials reach the round's end (no one waits for the round),
  never more than keras-tuner's count. A configuration stopped early is PRUNED in Optuna and
  COMPLETED (with its score) in ``oracle.trials``, as keras-tuner's round trials are.
- ``RandomSearch`` with ``max_trials`` draws with the service's seeded random sampler (trial
  *n*'s values depend on the seed and *n* only, so parallel processes never share a stream),
  which may repeat a point of a tiny discrete space; keras-tuner re-draws (as here with
  ``max_trials=None``).
- ``trial.metrics`` is the stored per-epoch history (averaged over executions): ``get_history``
  is the learning curve, ``get_last_value`` the last epoch's value.
- Chief/worker: every process (the chief too) runs trials and prints its own; the chief's
  ``KERASTUNER_ORACLE_IP:PORT`` only tells workers which study to join (``_chief.py``), and
  ``TUNER_SERVICE_STORAGE`` (when set) is the group's storage.
- Resuming prints ``Reloading Tuner from <storage> (study ...)``: the study is the state.
- ``project_name`` is also the study name: letters, digits, ``_.-`` (up to 128 characters).
- Extensions: ``storage=``, ``search(..., workers=N)`` (``_processes.py``).
- The study names no runnable model, so ``tuner-service worker/retrain`` refuse it: its data
  and fit arguments exist only inside ``search()``.

Interruptions: Ctrl-C (or SIGTERM in a worker process) hands the running trial back (failed
and re-queued with the same values), so ``overwrite=False`` later runs exactly the missing
trials. A search killed outright is reclaimed at once by a resumed search on the same host.
Checkpoints are written where the trial ran: ``get_best_models`` across machines needs a
shared ``directory``. Importing this module changes nothing in the process (environment,
logging, warnings) beyond what importing Keras does.
"""

from __future__ import annotations

from keras_tuner import HyperModel, HyperParameters, Objective, Oracle, synchronized
from keras_tuner.engine.trial import Trial, TrialStatus

from tuner_service.keras_tuner import applications, engine, errors, oracles, tuners
from tuner_service.keras_tuner._base import BaseTuner
from tuner_service.keras_tuner._keras import Tuner
from tuner_service.keras_tuner._processes import Unsupported
from tuner_service.keras_tuner._tuners import BayesianOptimization, GridSearch, Hyperband, RandomSearch, SklearnTuner

__version__ = "1.4.8"  # the keras-tuner API this module provides

__all__ = [
    "BaseTuner",
    "BayesianOptimization",
    "GridSearch",
    "HyperModel",
    "HyperParameters",
    "Hyperband",
    "Objective",
    "Oracle",
    "RandomSearch",
    "SklearnTuner",
    "Trial",
    "TrialStatus",
    "Tuner",
    "Unsupported",
    "applications",
    "engine",
    "errors",
    "oracles",
    "synchronized",
    "tuners",
]
