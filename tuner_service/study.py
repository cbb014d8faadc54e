"""Studies on Optuna storage: creation (spec, budget, grid points), loading, and whether this
machine can serve one.

Submitting a study with ``max_trials = N`` sets its counter in ``tuner_service_budget`` to N
(grid studies instead enqueue their points as WAITING trials); how workers take slots and what
happens to a trial that dies is the lifecycle's (:mod:`tuner_service.lifecycle`). Unspent slots
(e.g. after a timeout) stay in the counter; ``submit --resume`` continues with them. Trial
counts are :class:`tuner_service.queries.Counts`.

Nothing here imports Keras.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from tuner_service import attrs as A
from tuner_service.errors import BadInput, Refused
from tuner_service.queries import Counts  # noqa: F401  (the one place that counts trial states)
from tuner_service.spec import StudySpec, code_hash

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def add_budget(storage: Any, study_id: int, n: int) -> None:
    """Add ``n`` slots to the study's budget counter (negative: take them away, not below 0)."""
    from tuner_service.lifecycle import _sql

    _sql.ensure_budget_table(storage)
    with _sql.transaction(storage) as s:
        _sql.add_slots(s, study_id, n)


def remaining_budget(storage: Any, study_id: int) -> int:
    from tuner_service.lifecycle import _sql

    _sql.ensure_budget_table(storage)
    with _sql.read(storage) as s:
        return _sql.remaining(s, study_id)


def drop_budget(storage: Any, study_id: int) -> None:
    from tuner_service.lifecycle import _sql

    _sql.ensure_budget_table(storage)
    with _sql.transaction(storage) as s:
        _sql.drop_slots(s, study_id)


def study_exists(storage: Any, name: str) -> bool:

    try:
        storage.get_study_id_from_name(name)
        return True
    except KeyError:
        return False


def create(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    *,
    extra_attrs: dict[str, Any] | None = None,
    points: list[dict[str, Any]] | None = None,
    first: list[dict[str, Any]] | None = None,
) -> optuna.Study:
    """Create the study, store the spec, and enqueue its budget; all or nothing.

    ``points``: fixed parameter sets (grid points) to enqueue instead of empty slots.
    ``first``: known configurations (``enqueue:``, ``warm_start:``) tried first, in the budget.
    """
    import optuna

    from tuner_service import tuners

    if study_exists(storage, spec.name):
        raise BadInput(
            f"study {spec.name!r} already exists; continue it with `tuner-service submit ... --resume`, "
            f"replace it with --replace, or choose another --name"
        )
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=spec.directions)
    try:
        attrs = {
            A.SPEC: spec.to_stored(),
            A.CODE_HASH: code_hash(spec.model),
            A.SUBMITTED_AT: _now(),
            A.TUNER: spec.tuner.name,
            **(extra_attrs or {}),
        }
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        study.set_metric_names([o.name for o in spec.objectives])  # the dashboard labels axes with them
        if points is not None:
            enqueue_slots(study, len(points), points)
        elif first:
            enqueue_slots(study, len(first), first)
        add_budget(storage, study._study_id,
                   0 if points is not None else tuners.planned_trials(spec) - len(first or []))
        study.set_user_attr(A.READY, True)
    except BaseException:
        delete(storage, spec.name)
        raise
    return study


def delete(storage: Any, name: str) -> None:
    """Delete a study and its budget counter."""
    import optuna

    study_id = storage.get_study_id_from_name(name)
    optuna.delete_study(study_name=name, storage=storage)
    drop_budget(storage, study_id)


def enqueue_slots(study: optuna.Study, n: int, points: list[dict[str, Any]] | None = None) -> None:
    """Add ``n`` WAITING trials: with fixed ``points`` (grid), or free ones the sampler fills."""
    import optuna

    for i in range(n):
        params = points[i] if points is not None else {}
        study.add_trial(
            optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, system_attrs={A.FIXED_PARAMS: params})
        )


def load(storage: Any, name: str, *, sampler: Any = None, pruner: Any = None) -> optuna.Study:
    import optuna

    if not study_exists(storage, name):
        names = sorted(s.study_name for s in storage.get_all_studies())
        hint = f"; studies here: {', '.join(names[:10])}" if names else "; this storage has no studies"
        raise BadInput(f"no study named {name!r}{hint}")
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def expired(user_attrs: dict[str, Any], timeout: float | None) -> bool:
    """Whether the study's ``budget.timeout`` (seconds) has passed, counted from its last
    (re)start; ``timeout`` None: never."""
    if not timeout:
        return False
    started = user_attrs.get(A.RESUMED_AT) or user_attrs.get(A.SUBMITTED_AT)
    if not started:
        return False
    elapsed = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(started)).total_seconds()
    return elapsed > timeout


#: What ``tuner-service pause``/``stop`` write (study user attr ``control``): a paused study
#: starts no trial until resumed; a stopped one starts no trial again unless resumed. Trials
#: already running finish either way. The claim transaction itself reads the flag, so no
#: trial starts once the command has returned.
PAUSED, STOPPED = "paused", "stopped"


def control_state(user_attrs: dict[str, Any]) -> str | None:
    control = user_attrs.get(A.CONTROL)
    return control.get("state") if isinstance(control, dict) else None


def set_control(study: optuna.Study, state: str | None) -> None:
    study.set_user_attr(A.CONTROL, None if state is None else {"state": state, "at": _now()})


def stop_reason(user_attrs: dict[str, Any], timeout: float | None) -> str | None:
    """Why the study takes no new trials for good (aborted, stopped, timed out), or None.
    (Paused is not for good: see :func:`control_state`.)"""
    if user_attrs.get(A.ABORTED):
        return f"aborted: {user_attrs[A.ABORTED]}"
    if control_state(user_attrs) == STOPPED:
        return "stopped (tuner-service stop); `tuner-service resume` continues it"
    if expired(user_attrs, timeout):
        return "its budget.timeout has passed"
    return None


def refuse_facade_study(study: optuna.Study) -> None:
    """Studies of ``tuner_service.keras_tuner`` run inside the user's script, with its data."""
    if study.user_attrs.get(A.KERAS_TUNER):
        raise Refused(f"study {study.study_name!r} was created by tuner_service.keras_tuner: its trials run inside "
                      "the script's tuner.search(...); use search(..., workers=N) for more processes")


def servable_spec(study: optuna.Study) -> StudySpec:
    """The study's spec, if this machine can run its trials; else :class:`Refused` naming why
    (a keras-tuner API study, a stored spec that does not validate here because a file it
    names is missing, a model source that differs from the submitted one)."""
    refuse_facade_study(study)
    try:
        spec = stored_spec(study)
    except BadInput as exc:
        raise Refused(f"study {study.study_name!r} cannot run on this machine: {exc}") from None
    expected = study.user_attrs.get(A.CODE_HASH)
    try:
        actual = code_hash(spec.model)
    except BadInput as exc:
        raise Refused(f"study {study.study_name!r}: {exc} (this machine needs the same code checkout)") from None
    if expected and actual != expected:
        raise Refused(
            f"study {study.study_name!r}: model source {spec.model.split(':')[0]!r} here differs from the "
            f"submitted one (sha256 {actual[:12]} != {expected[:12]}); check out the submitted version of the code"
        )
    return spec


def stored_spec(study: optuna.Study) -> StudySpec:
    """The spec stored with the study, validated here (one-line :class:`BadInput` if not)."""
    from tuner_service.spec import validate_spec

    raw = study.user_attrs.get(A.SPEC)
    if raw is None:
        raise BadInput(f"study {study.study_name!r} was not created by tuner-service (it has no spec); "
                       "query it with optuna's own tools")
    return validate_spec(raw, source=f"study {study.study_name!r}'s stored spec")


def resume(study: optuna.Study, spec: StudySpec) -> int:
    """Top the budget up to ``spec``'s max_trials (after a raised budget); returns slots added."""
    from tuner_service import tuners

    old = stored_spec(study)
    # A grid study's objective is rewritten to the CV score at submit; the file still names its own.
    keys = (("model", "tuner", "data") if spec.tuner.name == "grid"
            else ("model", "objective", "more_objectives", "constraints", "tuner", "data"))
    if spec.tuner.name == "grid":
        spec.objective = old.objective
    for key in keys:
        if getattr(old, key) != getattr(spec, key):
            raise BadInput(
                f"--resume: the study file's {key} differs from study {study.study_name!r}'s; "
                "resume with the same file (only budget/fit may change) or submit under a new --name"
            )
    counts = Counts.for_study(study)
    missing = tuners.planned_trials(spec) - counts.total
    if missing > 0 and spec.tuner.name != "grid":
        add_budget(study._storage, study._study_id, missing)
    study.set_user_attr(A.SPEC, spec.to_stored())
    study.set_user_attr(A.ABORTED, None)
    study.set_user_attr(A.RESUMED_AT, _now())  # a timeout counts from here
    return max(missing, 0)


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best COMPLETE trial that meets the study's constraints (ties: the earliest, as Optuna
    and scikit-learn do). A multi-objective study has a front instead: see ``queries.front``."""
    from tuner_service.queries import _best_of, _record_from_study, pareto_front

    record = _record_from_study(study)
    if record.multi_objective:
        numbers = sorted(t.number for t in pareto_front(record))
        raise BadInput(f"study {study.study_name!r} has {len(study.directions)} objectives, so no single best trial; "
                       f"choose one of its Pareto front {numbers} with --trial N, or --prefer METRIC")
    number = _best_of(record, study.study_name).number
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def choose_trial(study: optuna.Study, *, trial: int | None = None, prefer: str | None = None) -> FrozenTrial:
    """The trial to retrain: trial number ``trial``; or, by ``prefer`` (an objective's name),
    the best in that objective among the Pareto front (one objective: among the completed
    trials), constraints met; or the best trial of a single-objective study."""
    from optuna.trial import TrialState

    from tuner_service.queries import _record_from_study, _signed, pareto_front

    if trial is not None:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not matches:
            raise BadInput(f"study {study.study_name!r} has no trial {trial}; list them with "
                           f"`tuner-service trials {study.study_name}`")
        if matches[0].state != TrialState.COMPLETE:
            raise BadInput(f"trial {trial} of {study.study_name!r} is {matches[0].state.name}, not COMPLETE; "
                           "retrain a completed trial (omit --trial for the best one)")
        return matches[0]
    if prefer is None:
        return best_trial(study)
    record = _record_from_study(study)
    names = record.objective_names()
    if prefer not in names:
        raise BadInput(f"--prefer {prefer!r} is not an objective of study {study.study_name!r}; "
                       f"use one of: {', '.join(names)}")
    i = names.index(prefer)
    maximize = record.directions[i] == "maximize"
    candidates = pareto_front(record) if record.multi_objective else [
        t for t in record.trials if t.state == "COMPLETE" and t.value is not None and t.feasible]
    if not candidates:
        raise BadInput(f"study {study.study_name!r} has no completed trial that meets its constraints yet")
    chosen = min(candidates, key=lambda t: (_signed((t.values or [])[i], maximize), t.number))
    return next(t for t in study.get_trials(deepcopy=False) if t.number == chosen.number)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
