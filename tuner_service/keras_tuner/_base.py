"""``BaseTuner``: keras-tuner's tuner base class, driving the service's trial lifecycle.

keras-tuner's ``BaseTuner`` asks its in-memory ``Oracle`` for a trial, runs it and reports
back. Here the study in the storage plays the oracle's bookkeeping part: ``search()`` runs
:class:`tuner_service.lifecycle.TrialLoop` (claim, run, record; one transaction each) with
:class:`_SearchRunner`, which turns a claimed Optuna trial into keras-tuner's ``Trial``,
draws its values (from the service's sampler, or the oracle's ``populate_space``), runs
``run_trial`` and scores it as keras-tuner does. ``tuner.oracle`` stays the keras-tuner oracle
object the tuner was given; its ``trials`` (and ``ongoing_trials``) are refreshed from the
study before it is consulted, so keras-tuner's own ``get_best_trials``, ``Display`` (the
console output), ``update_space`` and ``score_trial`` work on it unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import socket
import time
import traceback
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import keras_tuner as _kt
import numpy as np
from keras_tuner import HyperParameters, errors
from keras_tuner.engine.trial import Trial, TrialStatus
from keras_tuner.src.engine import hypermodel as _hm
from keras_tuner.src.engine import tuner_utils as _tu
from keras_tuner.src.engine.metrics_tracking import MetricsTracker
from keras_tuner.src.engine.oracle import _maybe_infer_direction_from_objective

from tuner_service import attrs as A
from tuner_service import study as study_mod
from tuner_service.errors import BadInput, StorageOutage, StudyAborted, TrialError, error_line
from tuner_service.hp import suggest
from tuner_service.keras_tuner import _chief, _processes
from tuner_service.keras_tuner import _strategies as strat
from tuner_service.runners import Outcome
from tuner_service.runners._env import device_name
from tuner_service.storage import mask_password, with_storage_retry

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from tuner_service.spec import StudySpec

#: The study spec's model reference: not importable on purpose, so ``tuner-service worker``
#: and ``retrain`` refuse these studies (their data lives only in ``search()``'s arguments).
IN_PROCESS_MODEL = "<runs only inside tuner_service.keras_tuner search()>"
_STORAGE_ENV = "TUNER_SERVICE_STORAGE"
_SERVICE_KWARGS = ("storage",)
#: Study user attr: the grid points of a GridSearch, in keras-tuner's order (slot i runs point i).
GRID_ATTR = "kt_grid"
_CHAINED = "\nThe above exception was the direct cause of the following exception:"


@dataclass
class _TrialContext:
    """The running trial's Optuna side, for the Keras layer's epoch reporter."""

    optuna_trial: optuna.Trial | None
    prune: bool
    reporters: list[Any] = field(default_factory=list)
    model: Any = None
    fit_seconds: float = 0.0

    @property
    def pruned(self) -> bool:
        return any(r.pruned for r in self.reporters)


class BaseTuner(_kt.engine.base_tuner.BaseTuner):
    """keras-tuner's ``BaseTuner`` on a tuner-service study (module docstring). Extra
    argument: ``storage``, an Optuna storage URL (default ``sqlite:///{directory}/{project_name}.db``;
    in a chief/worker group, ``TUNER_SERVICE_STORAGE`` when set)."""

    def __init__(self, oracle: Any, hypermodel: Any = None, directory: str | None = None,
                 project_name: str | None = None, overwrite: bool = False, **kwargs: Any) -> None:
        if not isinstance(oracle, _kt.Oracle):
            raise ValueError("Expected `oracle` argument to be an instance of `Oracle`. "
                             f"Received: oracle={oracle} (of type ({type(oracle)}).")
        logger = kwargs.pop("logger", None)
        if logger is not None:
            warnings.warn("The `logger` argument in `BaseTuner.__init__() is no longer supported and will be "
                          "ignored.", DeprecationWarning, stacklevel=2)
        self.logger = logger
        storage = kwargs.pop("storage", None)
        if kwargs:
            raise ValueError(f"Unrecognized arguments {list(kwargs)} for `{type(self).__name__}.__init__()`; "
                             f"supported: {', '.join(self._supported_args())}")
        self.oracle = oracle
        self.hypermodel = _hm.get_hypermodel(hypermodel)
        self.directory = directory or "."
        self.project_name = project_name or "untitled_project"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", str(self.project_name)):
            raise ValueError(f"project_name {self.project_name!r} is not valid here: it is also the study's name; "
                             "use letters, digits, '_', '-', '.' (up to 128 characters)")
        self.oracle._set_project_dir(self.directory, self.project_name)
        self.tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
        self._role = _chief.role()
        self._strategy = strat.strategy_of(oracle)
        self._project_abs = os.path.abspath(os.path.join(str(self.directory), self.project_name))
        self._storage_url = self._own_storage_url(storage)
        self._worker_index = zlib.crc32(self.tuner_id.encode()) % 9973 + 1 if self._role == "worker" else 0
        self._storage: Any = None
        self._study: optuna.Study | None = None
        self._sampler: Any = None
        self._ctx: _TrialContext | None = None
        self._server: _chief.ChiefServer | None = None
        self._cache: dict[int, Trial] = {}
        self._stash: tuple[int, dict[str, Any]] | None = None
        self._seeded = False
        overwrite = bool(overwrite) and self._role != "worker"  # a worker never replaces the chief's study
        if overwrite and os.path.exists(self._project_abs):
            shutil.rmtree(self._project_abs)
        self._populate_initial_space()  # keras-tuner's: builds with defaults until every condition was active
        self._open(overwrite)

    @classmethod
    def _supported_args(cls) -> list[str]:
        import inspect

        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" in klass.__dict__:
                names += [p for p in inspect.signature(klass.__init__).parameters
                          if p not in ("self", "kwargs", "args") and p not in names]
        return [*names, *_SERVICE_KWARGS]

    # ------------------------------------------------------------------ the study

    def _own_storage_url(self, storage: str | None) -> str:
        if storage:
            return storage
        if self._role and os.environ.get(_STORAGE_ENV):
            return os.environ[_STORAGE_ENV]
        os.makedirs(os.path.abspath(str(self.directory)), exist_ok=True)
        return f"sqlite:///{self._project_abs}.db"

    def _open(self, overwrite: bool) -> None:
        """Create the study with its budget, resume it, or (a worker) join the chief's."""
        from tuner_service.storage import open_storage

        if self._role == "worker":
            answer = _chief.ask_chief(self.project_name, done=self._finished_elsewhere)
            self._storage_url = _chief.worker_storage(answer, self._storage_url)
            self._storage = open_storage(self._storage_url)
            self._resume(join=True)
            return
        self._storage = open_storage(self._storage_url)
        if overwrite and study_mod.study_exists(self._storage, self.project_name):
            study_mod.delete(self._storage, self.project_name)
        if study_mod.study_exists(self._storage, self.project_name):
            print(f"Reloading Tuner from {mask_password(self._storage_url)} (study {self.project_name!r})")
            self._resume(join=False)
        else:
            self._create()
        if self._role == "chief":
            study_id = self._storage.get_study_id_from_name(self.project_name)
            self._server = _chief.ChiefServer(_chief.chief_info(self.project_name, self._storage_url, study_id))

    def _finished_elsewhere(self, answer: dict[str, Any]) -> bool:
        """A chief that serves another project may have finished ours already."""
        from tuner_service.storage import open_storage

        try:
            storage = open_storage(_chief.worker_storage(answer, self._storage_url), create=False)
            study = study_mod.load(storage, self.project_name)
            return study_mod.Counts.for_study(study).done
        except Exception:
            return False

    def _spec(self, budget: int, seed: int) -> StudySpec:
        from tuner_service.spec import validate_spec

        obj, s = self.oracle.objective, self._strategy
        raw: dict[str, Any] = {
            "name": self.project_name,
            "model": f"{IN_PROCESS_MODEL}:{self._hypermodel_name()}",
            "objective": {"name": obj.name, "direction": "maximize" if obj.direction == "max" else "minimize"},
            "tuner": {"name": s.tuner, "options": s.options},
            "budget": {"max_trials": max(budget, 1), **({"max_epochs": s.max_epochs} if s.max_epochs else {})},
            "seed": seed,
        }
        try:
            return validate_spec(raw, source=type(self).__name__)
        except BadInput as exc:
            raise ValueError(str(exc)) from None

    def _hypermodel_name(self) -> str:
        obj = self.hypermodel
        name = getattr(obj.build, "__name__", "") if type(obj).__name__ == "DefaultHyperModel" else type(obj).__name__
        return name if name.isidentifier() else "build"

    def _facade(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "oracle": type(self.oracle).__name__, "objective": str(self.oracle.objective),
                "max_trials": self.oracle.max_trials, "project_dir": self._project_abs,
                "executions_per_trial": getattr(self, "executions_per_trial", 1)}

    def _create(self) -> None:
        import optuna

        s = self._strategy
        points = self._grid_points() if s.kind == "grid" else None
        budget = len(points) if points is not None else (s.max_trials or strat.UNBOUNDED)
        spec = self._spec(budget, self.oracle.seed)
        direction = optuna.study.StudyDirection[spec.objective.direction.upper()]
        try:
            with _quiet("optuna.storages._rdb.storage"):  # "A new study created": keras-tuner says nothing
                self._storage.create_new_study([direction], self.project_name)
        except optuna.exceptions.DuplicatedStudyError:  # another process created it just now
            self._resume(join=False)
            return
        study = optuna.load_study(study_name=self.project_name, storage=self._storage)
        try:
            for key, value in {A.SPEC: _stored(spec), A.SUBMITTED_AT: study_mod._now(), A.TUNER: s.stored_name,
                               A.KERAS_TUNER: self._facade()}.items():
                study.set_user_attr(key, value)
            with warnings.catch_warnings():  # Optuna marks it experimental; nothing to tell the user
                warnings.simplefilter("ignore")
                study.set_metric_names([spec.objective.name])
            if points is not None:
                study.set_user_attr(GRID_ATTR, points)
            study_mod.add_budget(self._storage, study._study_id, budget)
            study.set_user_attr(A.READY, True)
        except BaseException:
            study_mod.delete(self._storage, self.project_name)
            raise
        self._spec_obj = spec

    def _resume(self, *, join: bool) -> None:
        """Keep an existing study's trials (``overwrite=False``, or a worker joining the chief's)
        and, unless joining, top its budget up to this tuner's."""
        import optuna

        study = optuna.load_study(study_name=self.project_name, storage=self._storage)
        deadline = time.monotonic() + 60
        while not study.user_attrs.get(A.READY):
            if time.monotonic() > deadline:
                raise ValueError(f"project {self.project_name!r} exists in {mask_password(self._storage_url)} but was "
                                 "never fully created; pass overwrite=True to start it afresh")
            time.sleep(0.5)
            study = optuna.load_study(study_name=self.project_name, storage=self._storage)
        facade = study.user_attrs.get(A.KERAS_TUNER)
        if not facade:
            raise ValueError(f"study {self.project_name!r} in {mask_password(self._storage_url)} was not created by "
                             "tuner_service.keras_tuner; choose another project_name or pass overwrite=True")
        if facade.get("oracle") != type(self.oracle).__name__ or facade.get("objective") != str(self.oracle.objective):
            raise ValueError(
                f"project {self.project_name!r} was created with {facade.get('oracle')} and {facade.get('objective')}; "
                f"it cannot be resumed with {type(self.oracle).__name__} and {self.oracle.objective}: pass "
                "overwrite=True or choose another project_name")
        stored = study_mod.stored_spec(study)
        self.oracle.seed = self.oracle._seed_state = stored.seed  # keras-tuner's reload restores the seed too
        self._sync_space(study)
        if join:
            self._spec_obj = stored
            return
        s = self._strategy
        if s.kind == "grid":  # continue the enumeration where it stopped (e.g. a larger max_trials)
            points = study.user_attrs.get(GRID_ATTR) or [{}]
            self._extend_grid(study, after=points[-1])
            study = optuna.load_study(study_name=self.project_name, storage=self._storage)
        counts = study_mod.Counts.for_study(study)
        budget = len(study.user_attrs.get(GRID_ATTR, [])) if s.kind == "grid" else s.max_trials or strat.UNBOUNDED
        if budget > counts.total:
            study_mod.add_budget(self._storage, study._study_id, budget - counts.total)
        self._spec_obj = self._spec(max(budget, counts.budget_used), stored.seed)
        study.set_user_attr(A.SPEC, _stored(self._spec_obj))
        study.set_user_attr(A.ABORTED, None)

    def _get_study(self) -> optuna.Study:
        """The study with this process's sampler and pruner (loaded once per process)."""
        if self._study is None:
            import optuna

            from tuner_service import tuners

            if self._storage is None:
                from tuner_service.storage import open_storage

                self._storage = open_storage(self._storage_url)
            s = self._strategy
            sampler, pruner = tuners.make(self._spec_obj, worker=self._worker_index)
            if s.kind == "hyperband":
                assert s.schedule is not None
                pruner = strat.HyperbandPruner(s.schedule)
            elif s.kind in ("grid", "oracle"):
                sampler = strat.ProposalSampler(sampler)
            self._sampler = sampler
            self._study = optuna.load_study(study_name=self.project_name, storage=self._storage, sampler=sampler,
                                            pruner=pruner)
        return self._study

    def __getstate__(self) -> dict[str, Any]:
        # Storage handles, the open study, the chief's server, caches and the Keras session
        # clearer are per process.
        state = dict(self.__dict__)
        for key in ("_storage", "_study", "_sampler", "_ctx", "_server", "_cache", "_stash", "_session_clearer"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._storage = self._study = self._sampler = self._ctx = self._server = self._stash = None
        self._cache = {}
        self._seeded = False

    # ------------------------------------------------------------------ the search space

    def _grid_points(self, limit: int | None = None) -> list[dict[str, Any]]:
        limit = self._strategy.max_trials if limit is None else limit
        points = []
        for point in strat.grid_points(self.oracle.get_space()):
            if limit is not None and len(points) >= limit:
                break
            points.append(point)
        return points

    def _extend_grid(self, study: optuna.Study, after: dict[str, Any] | None = None) -> None:
        """Append the grid points a grown space (hyperparameters first registered while a
        trial ran) adds, up to ``max_trials`` points in all; each new point is one more slot.
        As keras-tuner's GridSearchOracle, which continues from the trials that end, only points
        after ``after`` (the values of the trial that found them) in the new order are added.
        One process writes the list: the chief, or the first process of a search."""
        if self._role == "worker" or self._worker_index:
            return
        points = list(study.user_attrs.get(GRID_ATTR) or [])
        space = self.oracle.get_space()
        defaults = {hp.name: strat._plain(hp.default) for hp in space.space}
        limit = self._strategy.max_trials
        new: list[dict[str, Any]] = []
        started = after is None
        for point in strat.grid_points(space):
            if limit is not None and len(points) + len(new) >= limit:
                break
            if not started:
                started = strat.covered(point, after, defaults)
                continue
            if not any(strat.covered(point, old, defaults) for old in [*points, *new]):
                new.append(point)
        if new:
            study.set_user_attr(GRID_ATTR, points + new)
            study_mod.add_budget(self._storage, study._study_id, len(new))

    def _config_index(self, number: int) -> int:
        """The place of trial ``number`` among the study's configurations (its first runs, in
        creation order): the same in every process, so it picks grid points and brackets."""
        return sum(1 for t in self._get_study().get_trials(deepcopy=False)
                   if t.number < number and A.FAILED_TRIAL not in t.system_attrs)

    def _sync_space(self, study: optuna.Study) -> None:
        """Hyperparameters earlier trials (of any process) registered join this oracle's space."""
        if not self.oracle.tune_new_entries:
            return
        for t in study.get_trials(deepcopy=False):
            config = t.system_attrs.get("hyperparameters")
            if config:
                hp = HyperParameters.from_config(config)
                self.oracle.hyperparameters.merge([p for p in hp.space
                                                   if not self.oracle.hyperparameters._exists(p.name, p.conditions)])

    def _draw(self, trial: optuna.Trial, proposal: dict[str, Any] | None) -> HyperParameters:
        """The trial's ``hp``: the space with a value for every active hyperparameter, drawn
        in space order (as keras-tuner's ``_random_values``) through Optuna, so they are the
        trial's parameters. ``proposal``: values the sampler returns instead (an oracle's)."""
        space = self.oracle.get_space()
        if proposal is not None:
            assert isinstance(self._sampler, strat.ProposalSampler)
            self._sampler.proposals[trial.number] = proposal
        scratch = HyperParameters()
        for hp in space.space:
            scratch.merge([hp])
            if scratch.is_active(hp):
                if proposal is not None and hp.name not in proposal:
                    proposal[hp.name] = strat._plain(hp.default)  # keras-tuner: an unproposed value is the default
                scratch.values[hp.name] = with_storage_retry(suggest, trial, hp, what="storing a parameter")
        extra = {k: v for k, v in (proposal or {}).items() if k not in scratch.values}
        space.values = {**scratch.values, **extra}
        return space

    # ------------------------------------------------------------------ search

    def search(self, *fit_args: Any, workers: int = 1, **fit_kwargs: Any) -> None:
        """keras-tuner's ``search``: run the remaining trials, here (``workers=1``) or in
        ``workers`` processes (an extension; see the package docstring)."""
        if workers < 1:
            raise ValueError(f"workers must be at least 1 (got {workers})")
        if "verbose" in fit_kwargs:
            self.oracle.verbose = fit_kwargs.get("verbose")
        if workers > 1:
            _processes.check_inputs((fit_args, fit_kwargs))
        study = self._get_study()
        if self._role != "worker":
            study.set_user_attr(A.ABORTED, None)
            self._record_data_sizes(study, fit_args, fit_kwargs)
        try:
            self.on_search_begin()
            if workers == 1:
                self._work(fit_args, fit_kwargs)
            else:
                self._parallel(workers, fit_args, fit_kwargs)
            self.on_search_end()
        finally:
            with contextlib.suppress(Exception):  # oracle.trials shows how the search ended, errors included
                self._sync_oracle()
            if self._server is not None:
                self._server.close()
                self._server = None

    def _parallel(self, workers: int, fit_args: tuple[Any, ...], fit_kwargs: dict[str, Any]) -> None:
        counts = study_mod.Counts.for_study(self._get_study())
        todo = counts.remaining + counts.waiting
        if todo <= 0 and counts.running == 0:
            return
        _processes.run(self, max(1, min(workers, todo or 1)), fit_args, fit_kwargs)

    def _work(self, fit_args: tuple[Any, ...], fit_kwargs: dict[str, Any]) -> int:
        """The lifecycle's claim loop with :class:`_SearchRunner`, until the study has nothing
        left for this process; returns the trials run here."""
        from tuner_service.dashboard import default_artifact_store
        from tuner_service.lifecycle import LoopOptions, TrialLoop

        study = self._get_study()
        self._reclaim_dead_local_trials(study)
        reason = study.user_attrs.get(A.ABORTED)
        if reason:
            raise RuntimeError(reason)
        runner = _SearchRunner(self, fit_args, fit_kwargs)
        oracle = self.oracle
        loop = TrialLoop(study, runner, self._run_attrs, prune=self._strategy.kind == "hyperband",
                         objective=oracle.objective.name,
                         options=LoopOptions(retry_limit=oracle.max_retries_per_trial,
                                             max_consecutive_failures=oracle.max_consecutive_failed_trials),
                         stop_reason=self._stop_reason, on_trial_done=runner.trial_done,
                         artifact_store=default_artifact_store(self._storage_url))
        try:
            return loop.run()
        except StudyAborted:
            # keras-tuner's words for max_consecutive_failed_trials.
            reason = (f"Number of consecutive failures exceeded the limit of {oracle.max_consecutive_failed_trials}.\n"
                      + (runner.last_message or ""))
            study.set_user_attr(A.ABORTED, reason)
            raise RuntimeError(reason) from None

    def _stop_reason(self, study_attrs: dict[str, Any]) -> str | None:
        """Asked before each claim: why the study takes no new trials (aborted, stopped by
        ``tuner-service stop``), or (an oracle that proposes values) the oracle's STOPPED:
        it is asked for the next trial first, so no trial is created for it."""
        reason = study_mod.stop_reason(study_attrs, None)  # aborted, or `tuner-service stop`
        if reason:
            return reason
        if self._strategy.kind != "oracle" or self._stash is not None:
            return None
        study = self._get_study()
        counts = study_mod.Counts.for_study(study)
        if counts.waiting or not counts.remaining:
            return None  # the claim takes a retry, or there is no slot left anyway
        number = len(study.get_trials(deepcopy=False))
        response = self._populate(number)
        status = response.get("status")
        if status == TrialStatus.STOPPED:
            study_mod.add_budget(study._storage, study._study_id, -counts.remaining)
            return "the oracle ended the search (populate_space returned STOPPED)"
        if status == TrialStatus.RUNNING:
            self._stash = (number, dict(response.get("values") or {}))
        return None

    def _populate(self, number: int) -> dict[str, Any]:
        """``oracle.populate_space`` for the trial numbered ``number``, on the study's other
        trials (as in keras-tuner, the new trial is not among them yet)."""
        oracle = self.oracle
        if not self._seeded:  # processes of one search draw distinct random streams
            oracle._seed_state += 7919 * self._worker_index
            self._seeded = True
        self._sync_oracle(exclude=number)
        return oracle.populate_space(self._trial_id(number)) or {}

    def _proposal(self, frozen: FrozenTrial) -> dict[str, Any] | None:
        """Values the sampler returns for this trial instead of drawing them (None: draw)."""
        kind = self._strategy.kind
        if kind == "grid":
            if frozen.params:
                return {}  # a retry keeps its point
            index = self._config_index(frozen.number)
            points = self._get_study().user_attrs.get(GRID_ATTR) or []
            if index >= len(points):
                raise TrialError(f"grid search: trial {frozen.number} has no grid point (index {index} of "
                                 f"{len(points)})")
            return dict(points[index])  # a hyperparameter outside the point takes its default
        if kind != "oracle":
            return None
        stash, self._stash = self._stash, None
        if frozen.params or frozen.system_attrs.get(A.FIXED_PARAMS):
            self._stash = stash  # a retry keeps its values; the proposal waits for a new trial
            return {}
        if stash is not None and stash[0] == frozen.number:
            return stash[1]
        while True:
            response = self._populate(frozen.number)
            status = response.get("status")
            if status == TrialStatus.RUNNING:
                return dict(response.get("values") or {})
            if status != TrialStatus.IDLE:
                raise TrialError(f"the oracle proposed no values for trial {frozen.number} (populate_space returned "
                                 f"{status!r})")
            time.sleep(1.0)

    def _reclaim_dead_local_trials(self, study: optuna.Study) -> None:
        """Hand back RUNNING trials whose process on this host is gone (a search killed
        outright), so a resumed search reruns them at once, not after the heartbeat grace."""
        from optuna.trial import TrialState

        from tuner_service.lifecycle import requeue

        host = socket.gethostname()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = t.user_attrs.get(A.PID)
            if t.user_attrs.get(A.HOST) != host or not isinstance(pid, int) or pid == os.getpid() or _alive(pid):
                continue
            requeue(study, t._trial_id, kind="crash", reason=f"process {pid} on {host} is gone")

    def _run_attrs(self) -> dict[str, Any]:
        return {A.HOST: socket.gethostname(), A.PID: os.getpid(), A.WORKER: self._worker_index,
                "tuner_id": self.tuner_id, A.DEVICE: device_name(keras), A.KERAS_BACKEND: keras.backend.backend(),
                A.STARTED_AT: round(time.time(), 3)}

    def _record_data_sizes(self, study: optuna.Study, fit_args: tuple[Any, ...], fit_kwargs: dict[str, Any]) -> None:
        """The ``data`` study attr the report shows (sizes only; the data stays in this process)."""
        info: dict[str, Any] = {"source": "search() arguments"}
        x = fit_args[0] if fit_args else fit_kwargs.get("x", fit_kwargs.get("X"))
        val = fit_kwargs.get("validation_data")
        if _n_samples(x) is not None:
            info["train"] = _n_samples(x)
        if isinstance(val, (tuple, list)) and val and _n_samples(val[0]) is not None:
            info["validation"] = _n_samples(val[0])
        study.set_user_attr(A.DATA, info)

    # ------------------------------------------------------------------ trials and the oracle

    def _trial_id(self, number: int) -> str:
        # keras-tuner pads trial ids to the width of str(max_trials) ("None" is 4 wide).
        return f"{number:0{len(str(self.oracle.max_trials))}d}"

    def _kt_trials(self, running: Trial | None = None, exclude: int | None = None) -> dict[str, Trial]:
        """The study's trials as keras-tuner ``Trial``s, one per retry chain (its latest run;
        a run waiting for its retry shows as INVALID), in start order; ``running`` is this
        process's running trial, ``exclude`` the number of a trial not to show."""
        from optuna.trial import TrialState

        latest: dict[int, FrozenTrial] = {}
        waiting: set[int] = set()
        for ft in self._get_study().get_trials(deepcopy=False):
            head = ft.system_attrs.get(A.FAILED_TRIAL, ft.number)
            if ft.state == TrialState.WAITING:
                waiting.add(head)
            elif head not in latest or ft.number > latest[head].number:
                latest[head] = ft
        out: dict[str, Trial] = {}
        for head in sorted(latest):
            if head == exclude:
                continue
            trial = self._to_kt_trial(latest[head], head)
            if trial.status == TrialStatus.FAILED and head in waiting:
                trial.status = TrialStatus.INVALID
            out[trial.trial_id] = trial
        if running is not None:
            out[running.trial_id] = running
        return out

    def _to_kt_trial(self, ft: FrozenTrial, head: int) -> Trial:
        from optuna.trial import TrialState

        finished = ft.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        if finished and ft.number in self._cache:
            return self._cache[ft.number]
        attrs = {**ft.system_attrs, **ft.user_attrs}  # the long details are system attrs
        config = attrs.get("hyperparameters")
        if config:
            hp = HyperParameters.from_config(config)
        else:
            hp = HyperParameters()
            hp.values.update(ft.params)
        status = {TrialState.COMPLETE: TrialStatus.COMPLETED, TrialState.PRUNED: TrialStatus.COMPLETED,
                  TrialState.FAIL: TrialStatus.FAILED}.get(ft.state, TrialStatus.RUNNING)
        # keras-tuner's message is the traceback of the trial's own error (ours is chained to
        # the TrialError the lifecycle recorded).
        message = (attrs.get(A.TRACEBACK) or "").split(_CHAINED)[0] or attrs.get(A.FAIL_REASON)
        trial = Trial(hp, trial_id=self._trial_id(head), status=status, message=message)
        trial.metrics = self._metrics(attrs)
        trial.best_step = attrs.get("best_step") or 0
        if ft.state in (TrialState.COMPLETE, TrialState.PRUNED) and ft.value is not None:
            trial.score = ft.value
        if finished:
            self._cache[ft.number] = trial
        return trial

    def _metrics(self, attrs: dict[str, Any]) -> MetricsTracker:
        """The per-epoch history (or, for a run_trial that returned metrics, those at its best
        step) as keras-tuner's ``MetricsTracker``; steps are 0-based epochs."""
        tracker = MetricsTracker()
        obj = self.oracle.objective
        history: dict[str, list[float]] = dict(attrs.get(A.HISTORY) or {})
        if history and obj.name not in history:  # a combined objective: computed per epoch
            epochs = max(len(v) for v in history.values())
            logs = [{k: v[i] for k, v in history.items() if i < len(v)} for i in range(epochs)]
            if all(obj.has_value(lg) for lg in logs):
                history[obj.name] = [float(obj.get_value(lg)) for lg in logs]
        if not history and attrs.get("best_metrics"):
            history = {k: [v] for k, v in attrs["best_metrics"].items()}
            offset = attrs.get("best_step") or 0
        else:
            offset = 0
        for name, values in history.items():
            tracker.register(name, direction=_maybe_infer_direction_from_objective(obj, name))
            for step, value in enumerate(values):
                tracker.update(name, value, step=step + offset)
        return tracker

    def _sync_oracle(self, running: Trial | None = None, exclude: int | None = None) -> None:
        """Point keras-tuner's oracle at the study: its ``trials``, ``ongoing_trials``, start
        and end order, and the hashes of the values tried so far."""
        oracle = self.oracle
        trials = self._kt_trials(running, exclude)
        oracle.trials = trials
        oracle.ongoing_trials = {tid: t for tid, t in trials.items()
                                 if t.status == TrialStatus.RUNNING and t is not running}
        oracle.start_order = list(trials)
        oracle.end_order = [tid for tid, t in trials.items() if t.status != TrialStatus.RUNNING]
        oracle._tried_so_far = {oracle._compute_values_hash(t.hyperparameters.values) for t in trials.values()}

    # ------------------------------------------------------------------ keras-tuner's hooks and results

    def on_trial_end(self, trial: Trial) -> None:
        """keras-tuner's ``on_trial_end`` ends the trial with the oracle: its space learns the
        trial's new hyperparameters and the console shows the result (the study already has it)."""
        oracle = self.oracle
        known = len(oracle.hyperparameters.space)
        oracle.update_space(trial.hyperparameters)
        if self._strategy.kind == "grid" and len(oracle.hyperparameters.space) > known:
            self._extend_grid(self._get_study(), after=dict(trial.hyperparameters.values))
        runs = getattr(trial, "_runs", None)
        if trial.status == TrialStatus.INVALID and runs is not None:
            left = oracle.max_retries_per_trial + 1 - runs
            print(f"Trial {trial.trial_id} failed {runs} times. {left} retries left.")
        self._sync_oracle()
        oracle._display.on_trial_end(trial)

    def save(self) -> None:
        """Nothing to do: every trial is in the storage as it happens."""

    def reload(self) -> None:
        """Nothing to do: the oracle is refreshed from the storage when it is consulted."""

    def get_best_hyperparameters(self, num_trials: int = 1) -> list[HyperParameters]:
        self._sync_oracle()
        return super().get_best_hyperparameters(num_trials)

    def get_best_models(self, num_models: int = 1) -> list[Any]:
        self._sync_oracle()
        return super().get_best_models(num_models)

    def results_summary(self, num_trials: int = 10) -> None:
        self._sync_oracle()
        super().results_summary(num_trials)

    @property
    def remaining_trials(self) -> int | None:
        """Trials not started yet (keras-tuner: ``max_trials - len(trials)``); None for an
        oracle that runs until it stops."""
        if self._strategy.kind == "oracle" and self.oracle.max_trials is None:
            return None
        counts = study_mod.Counts.for_study(self._get_study())
        return counts.remaining + counts.waiting


class _SearchRunner:
    """The keras-tuner API's :class:`~tuner_service.runners.Runner`: one claimed trial
    through the tuner's ``run_trial`` (a subclass's override included) and keras-tuner's
    scoring. The lifecycle claims, records and re-queues; this only runs."""

    def __init__(self, tuner: BaseTuner, fit_args: tuple[Any, ...], fit_kwargs: dict[str, Any]) -> None:
        self.tuner, self.fit_args, self.fit_kwargs = tuner, fit_args, fit_kwargs
        self.backend = keras.backend.backend()
        self.device = device_name(keras)
        self.kt_trial: Trial | None = None
        self.last_message: str | None = None

    def preflight(self) -> dict[str, Any]:
        return {}

    def run(self, trial: optuna.Trial, *, prune: bool) -> Outcome:
        tuner, oracle = self.tuner, self.tuner.oracle
        frozen = trial._cached_frozen_trial
        head = frozen.system_attrs.get(A.FAILED_TRIAL, frozen.number)
        tuner.pre_create_trial()
        hp = tuner._draw(trial, tuner._proposal(frozen))
        hp.values.update(self._bracket_values(trial, frozen))
        kt_trial = self.kt_trial = Trial(hp, trial_id=tuner._trial_id(head), status=TrialStatus.RUNNING)
        kt_trial._runs = int(frozen.system_attrs.get(A.ERROR_RETRIES, 0)) + 1  # type: ignore[attr-defined]
        tuner._ctx = ctx = _TrialContext(trial, prune=prune)
        started = time.perf_counter()
        tuner._sync_oracle(kt_trial)
        oracle._display.on_trial_begin(kt_trial)
        try:
            tuner.on_trial_begin(kt_trial)
            results = tuner.run_trial(kt_trial, *self.fit_args, **self.fit_kwargs)
            value, metrics, best_step = self._score(kt_trial, results)
            attrs, details = self._outcome(hp, ctx, started, kt_trial.trial_id)
            attrs.update(best_metrics=metrics, best_step=best_step, best_epoch=best_step + 1)
            return Outcome([value], ctx.pruned, attrs, details)
        except (errors.FatalError, StorageOutage):
            raise  # FatalError ends the search: the lifecycle fails the trial and enqueues its retry
        except TrialError:
            self._failed()
            raise
        except errors.FailedTrialError as exc:
            self._failed()
            raise TrialError(error_line(exc)) from exc
        except Exception as exc:  # keras-tuner's INVALID: retried up to max_retries_per_trial
            self._failed()
            raise TrialError(error_line(exc), retry=oracle.max_retries_per_trial > 0) from exc
        finally:
            tuner._ctx = None

    def _bracket_values(self, trial: optuna.Trial, frozen: FrozenTrial) -> dict[str, Any]:
        """Hyperband: the configuration's bracket (keras-tuner's schedule, by its place among
        the study's configurations; a retry keeps its chain's) and keras-tuner's ``tuner/*``
        values, which keras-tuner's ``Hyperband.run_trial`` reads (epochs to its last round)."""
        schedule = self.tuner._strategy.schedule
        if schedule is None:
            return {}
        place = frozen.system_attrs.get(strat.BRACKET_ATTR)
        if place is None:
            place = list(schedule.place(self.tuner._config_index(frozen.number)))
            with_storage_retry(trial.storage.set_trial_system_attr, trial._trial_id, strat.BRACKET_ATTR, place,
                               what="storing the trial's bracket")
        bracket = int(place[1])
        return {"tuner/epochs": schedule.epochs(bracket, bracket), "tuner/initial_epoch": 0,
                "tuner/bracket": bracket, "tuner/round": 0}

    def _score(self, kt_trial: Trial, results: Any) -> tuple[float, dict[str, float], int]:
        """keras-tuner's ``_run_and_update_trial`` and ``Oracle.score_trial``."""
        oracle = self.tuner.oracle
        objective = oracle.objective
        if kt_trial.metrics.exists(objective.name):  # reported with oracle.update_trial() in run_trial
            warnings.warn("The use case of calling `self.oracle.update_trial(trial_id, metrics)` in "
                          "`Tuner.run_trial()` to report the metrics is deprecated, and will be removed in the "
                          "future.Please remove the call and do 'return metrics' in `Tuner.run_trial()` instead. ",
                          DeprecationWarning, stacklevel=2)
        else:
            _tu.validate_trial_results(results, objective, "Tuner.run_trial()")
            _check_objective_logged(results, objective)
            oracle.update_trial(kt_trial.trial_id, _tu.convert_to_metrics_dict(results, objective),
                                step=_tu.get_best_step(results, objective))
        oracle.score_trial(kt_trial)
        value = kt_trial.score
        if value is None or not math.isfinite(float(value)):
            raise TrialError(f"objective {objective.name} is {value}; the model diverged", retry=True)
        metrics = {name: float(kt_trial.metrics.get_best_value(name)) for name in kt_trial.metrics.metrics
                   if _finite(kt_trial.metrics.get_best_value(name))}
        return float(value), metrics, int(kt_trial.best_step or 0)

    def _outcome(self, hp: HyperParameters, ctx: _TrialContext, started: float,
                 trial_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(short attrs, long details) of a finished run."""
        histories = [r.history for r in ctx.reporters]
        attrs: dict[str, Any] = {"trial_id": trial_id, A.FIT_SECONDS: round(ctx.fit_seconds, 3),
                                 A.TRIAL_SECONDS: round(time.perf_counter() - started, 3),
                                 A.EPOCHS_RUN: max((r.epochs_run for r in ctx.reporters), default=0)}
        details: dict[str, Any] = {A.HISTORY: _mean_history(histories) if histories else {},
                                   "hyperparameters": _jsonable_config(hp)}
        if len(histories) > 1:
            details["execution_histories"] = histories
        if ctx.model is not None:
            from tuner_service.runners.keras import model_summary

            attrs[A.PARAM_COUNT] = int(ctx.model.count_params())
            details[A.MODEL_SUMMARY] = model_summary(ctx.model)
        return attrs, details

    def _failed(self) -> None:
        assert self.kt_trial is not None
        self.kt_trial.message = self.last_message = traceback.format_exc()

    def trial_done(self, state: str) -> None:
        """After the lifecycle recorded the trial: keras-tuner's end of trial."""
        from tuner_service.lifecycle import check_consecutive_failures

        kt_trial, self.kt_trial = self.kt_trial, None
        if kt_trial is None:
            return
        kt_trial.status = {"COMPLETE": TrialStatus.COMPLETED, "PRUNED": TrialStatus.COMPLETED,
                           "FAIL": TrialStatus.FAILED}.get(state, TrialStatus.INVALID)
        tuner = self.tuner
        if state == "FAIL" and check_consecutive_failures(tuner._get_study(), tuner.oracle.max_consecutive_failed_trials):
            return  # keras-tuner stops before the trial's end is shown
        tuner.on_trial_end(kt_trial)


# ---------------------------------------------------------------------------- helpers


def _stored(spec: StudySpec) -> dict[str, Any]:
    """The spec as stored with the study, without data and fit: they are search()'s arguments."""
    stored = spec.to_stored()
    for key in ("data", "fit"):
        stored.pop(key, None)
    return stored


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hold one logger at WARNING for the duration (restored after)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_objective_logged(results: Any, objective: Any) -> None:
    for result in results if isinstance(results, list) else [results]:
        if isinstance(result, keras.callbacks.History) and result.history:
            first = {k: v[0] for k, v in result.history.items() if v}
            if not objective.has_value(first):
                raise TrialError(
                    f"objective {objective.name!r} is not logged by the model (it logs "
                    f"{', '.join(sorted(first)) or 'nothing'}); pass validation data to search() for a val_ metric, "
                    "add the metric to compile(metrics=[...]), or choose another objective")


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


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


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
