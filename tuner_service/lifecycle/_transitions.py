"""The transitions of the trial state machine (see the package docstring), one transaction each."""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from tuner_service import attrs as A
from tuner_service.lifecycle import _sql
from tuner_service.lifecycle._failpoints import failpoint
from tuner_service.lifecycle._liveness import Heartbeat, healthy_for
from tuner_service.lifecycle._writes import TrialWrites, write_pending
from tuner_service.storage import with_storage_retry

if TYPE_CHECKING:
    import optuna

_log = logging.getLogger("tuner_service.lifecycle")

#: A running trial's heartbeat is written every HEARTBEAT_INTERVAL s; a trial whose heartbeat
#: is older than HEARTBEAT_GRACE s is failed and re-queued with the same parameters.
HEARTBEAT_INTERVAL = int(os.environ.get("TUNER_SERVICE_HEARTBEAT_INTERVAL", "5"))
HEARTBEAT_GRACE = int(os.environ.get("TUNER_SERVICE_HEARTBEAT_GRACE", "20"))
#: How long a driver's storage access must have been healthy before it judges staleness.
LIVENESS_MARGIN = 2 * HEARTBEAT_INTERVAL
#: Crashes of one trial (its runner died: segfault, OOM kill, lost machine) retried before it
#: stays FAIL: a model that kills its runner every time must not loop forever.
MAX_RETRIES = int(os.environ.get("TUNER_SERVICE_MAX_RETRIES", "3"))
#: Final failures in a row (study-wide, by completion time) that stop a study.
MAX_CONSECUTIVE_FAILURES = int(os.environ.get("TUNER_SERVICE_MAX_CONSECUTIVE_FAILURES", "3"))

#: System attr holding how a FAIL trial ended (the lifecycle writes it with the state).
OUTCOME = "outcome"
FINAL_FAILURES = ("error", "gave_up")  # a FAIL that stays: counts towards consecutive failures
#: System attrs that describe one run and are not carried to its retry.
_RUN_ONLY = (A.CHECKPOINT_EPOCH, *A.DETAIL_KEYS, OUTCOME)

# The strings the transitions return.
COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"
REQUEUED, GAVE_UP, SUPERSEDED, NOT_STALE = "REQUEUED", "GAVE_UP", "SUPERSEDED", "NOT_STALE"


@dataclass
class Claimed:
    """A trial this process claimed: RUNNING, its heartbeat beating until it is ended."""

    trial: optuna.Trial
    trial_id: int
    number: int
    heartbeat: Heartbeat
    system_attrs: dict[str, Any] = field(default_factory=dict)

    def stop_heartbeat(self) -> None:
        self.heartbeat.stop()


# ---------------------------------------------------------------------------- claim


def claim(study: optuna.Study, run_attrs: dict[str, Any] | None = None, *, prune: bool = True) -> Claimed | None:
    """Take a WAITING trial (retries and grid points first), else a budget slot; None when
    there is neither, or the study is paused, stopped or aborted (read in the same
    transaction, so no trial starts after ``tuner-service pause`` returned). The choice, the
    claim, its first heartbeat and ``run_attrs`` are one transaction.

    The trial's parameters and per-epoch values are batched (:mod:`._writes`); ``prune``: the
    study prunes, so every epoch's value is written at once."""
    storage = study._storage
    _sql.ensure_budget_table(storage)
    frozen = _claim(storage, study._study_id, dict(run_attrs or {}))
    return None if frozen is None else _claimed(study, frozen, prune=prune)


def _claim(storage: Any, study_id: int, run_attrs: dict[str, Any]) -> FrozenTrial | None:
    """The claim's transaction; returns the claimed trial as it now is (so nothing reads it back)."""
    with _sql.transaction(storage) as s:
        failpoint("claim.begin")
        if _sql.claims_blocked(s, study_id):
            return None
        trial = _sql.next_waiting(s, study_id)  # PostgreSQL: locked, skipping rows other claims hold
        if trial is not None:
            trial.state = TrialState.RUNNING
            trial.datetime_start = dt.datetime.now()
            failpoint("claim.waiting.running")
            _sql.beat(s, trial.trial_id)
            _sql.put_attrs(s, trial.trial_id, run_attrs)
            params, distributions = _sql.params_of(s, trial.trial_id)
            user, system = _sql.attrs_of(s, trial.trial_id, system=False), _sql.attrs_of(s, trial.trial_id, system=True)
            failpoint("claim.waiting.commit")
        else:
            if not _sql.take_slot(s, study_id):
                return None
            failpoint("claim.slot.taken")
            trial = _sql.new_trial(s, study_id, TrialState.RUNNING)
            failpoint("claim.slot.created")
            _sql.put_attrs(s, trial.trial_id, run_attrs, fresh=True)
            _sql.beat(s, trial.trial_id, fresh=True)
            params, distributions, user, system = {}, {}, dict(run_attrs), {}
            failpoint("claim.slot.commit")
        frozen = FrozenTrial(number=trial.number, state=TrialState.RUNNING, value=None, values=None,
                             datetime_start=trial.datetime_start, datetime_complete=None, params=params,
                             distributions=distributions, user_attrs=user, system_attrs=system, intermediate_values={},
                             trial_id=trial.trial_id)
    failpoint("claim.committed")
    return frozen


def _claimed(study: optuna.Study, frozen: FrozenTrial, *, prune: bool) -> Claimed:
    heartbeat = Heartbeat(study._storage, frozen._trial_id, HEARTBEAT_INTERVAL).start()
    try:
        trial = _trial(study, frozen)
        trial.storage = TrialWrites(study._storage, study._study_id, frozen._trial_id, prune=prune)
        _register_in_cache(study, frozen)
    except BaseException:
        heartbeat.stop()  # the trial goes stale and is retried
        raise
    return Claimed(trial, frozen._trial_id, frozen.number, heartbeat, dict(frozen.system_attrs))


def _trial(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial:
    """``optuna.Trial(study, trial_id)`` from the record the claim already holds: what its
    ``__init__`` does, less reading the trial back (``tests/test_lifecycle.py`` checks the two
    agree, so an Optuna that changes it fails a test rather than a study)."""
    import copy

    import optuna
    from optuna import pruners

    trial = optuna.Trial.__new__(optuna.Trial)
    trial.study = study
    trial._trial_id = frozen._trial_id
    trial.storage = study._storage
    trial._cached_frozen_trial = copy.deepcopy(frozen)
    study.sampler.before_trial(pruners._filter_study(study, trial._cached_frozen_trial), trial._cached_frozen_trial)
    trial.relative_search_space = None
    trial._relative_params = None
    trial._fixed_params = trial._cached_frozen_trial.system_attrs.get(A.FIXED_PARAMS, {})
    return trial


def _register_in_cache(study: optuna.Study, frozen: Any) -> None:
    """Tell Optuna's cache layer (``_CachedStorage``, what ``study._storage`` is) about a trial
    this process just claimed: it must know a trial before parameters can be set on it. Its own
    way is a read of every unfinished trial; the claim already read this one."""
    import copy

    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

    cache = study._storage
    if not isinstance(cache, _CachedStorage):
        return
    with cache._lock:
        info = cache._studies.setdefault(study._study_id, _StudyInfo())
        cache._add_trials_to_cache(study._study_id, [copy.deepcopy(frozen)])
        info.unfinished_trial_ids.add(frozen._trial_id)


# ---------------------------------------------------------------------------- outcomes


def finish(study: optuna.Study, claimed: Claimed, state: str, values: list[float] | None, *,
           attrs: dict[str, Any] | None = None, details: dict[str, Any] | None = None) -> str:
    """COMPLETE (``values``) or PRUNED: attrs, values and state in one transaction.

    Returns the state written, or ``SUPERSEDED`` when another driver had already failed the
    trial as stale (its retry runs; this outcome is dropped). Stops the trial's heartbeat."""
    try:
        return _finish(study, claimed, state, values, attrs=attrs, details=details)
    finally:
        claimed.stop_heartbeat()


def _finish(study: optuna.Study, claimed: Claimed, state: str, values: list[float] | None, *,
            attrs: dict[str, Any] | None, details: dict[str, Any] | None) -> str:
    from optuna import pruners

    assert state in (COMPLETE, PRUNED), state
    import copy

    attrs = {**(attrs or {}), A.FINISHED_AT: _now_unix()}
    target = TrialState[state]
    # The trial as this process knows it (Optuna's Trial keeps its params and intermediate
    # values current): what ``after_trial`` needs, without reading it back. Whether another
    # driver ended it meanwhile is checked under the transaction's lock below.
    frozen = copy.deepcopy(claimed.trial._cached_frozen_trial)
    if target == TrialState.PRUNED and values is None and frozen.last_step is not None:
        last = frozen.intermediate_values[frozen.last_step]
        values = [last] if len(study.directions) == 1 and last == last else None  # Optuna's rule (not NaN)
    if values is not None and len(values) != len(study.directions):
        raise ValueError(f"{len(values)} objective values for a study with {len(study.directions)} objectives")
    try:
        study.sampler.after_trial(pruners._filter_study(study, frozen), frozen, target, values)
    except Exception as exc:  # as Study.tell: the result is recorded whatever the sampler says
        _log.warning("sampler after_trial failed for trial %s: %s", claimed.number, exc)

    def commit() -> str:
        with _sql.transaction(study._storage) as s:
            failpoint("finish.begin")
            trial = _sql.lock_trial(s, claimed.trial_id)
            assert trial is not None
            if trial.state != TrialState.RUNNING:
                own = trial.state == target and _sql.attrs_of(s, claimed.trial_id, system=False).get(
                    A.FINISHED_AT) == attrs[A.FINISHED_AT]
                return state if own else SUPERSEDED  # own: our commit went through, its ack was lost
            write_pending(claimed.trial, s)
            _sql.put_attrs(s, claimed.trial_id, attrs)
            failpoint("finish.attrs")
            _sql.put_attrs(s, claimed.trial_id, details or {}, system=True)
            if values is not None:
                _sql.set_values(s, study._storage, trial, [float(v) for v in values])
            _sql.finish_state(trial, target)
            failpoint("finish.commit")
        failpoint("finish.committed")
        return state

    result = with_storage_retry(commit, what="recording a result")
    return _superseded(claimed) if result == SUPERSEDED else result


def fail(study: optuna.Study, claimed: Claimed, reason: str, *, attrs: dict[str, Any] | None = None,
         details: dict[str, Any] | None = None, retry_limit: int = 0) -> str:
    """The model's fault: FAIL with ``reason``. With ``retry_limit`` > 0 (keras-tuner's
    ``max_retries_per_trial``) the retry is enqueued in the same transaction while the chain
    has had fewer error retries. Returns FAIL, REQUEUED or SUPERSEDED. Stops the heartbeat."""
    try:
        result = with_storage_retry(
            _end_run, study, claimed.trial_id, kind="error", reason=reason, attrs=attrs, details=details,
            retry_limit=retry_limit, run=claimed.trial, what="recording a failure")
    finally:
        claimed.stop_heartbeat()
    return _superseded(claimed) if result == SUPERSEDED else result


def requeue(study: optuna.Study, trial_id: int, *, kind: str, reason: str, stale_only: bool = False,
            attrs: dict[str, Any] | None = None, details: dict[str, Any] | None = None,
            trial: optuna.Trial | None = None) -> str:
    """A run that will not finish: FAIL + WAITING retry in one transaction.

    ``kind="crash"`` (the runner died, or its heartbeat went stale) counts a crash and gives
    up past ``MAX_RETRIES``; ``kind="hand_back"`` (SIGTERM, SIGINT, a drain) counts apart and
    never gives up. ``stale_only``: re-check under the lock that the heartbeat is still stale.
    Returns REQUEUED, GAVE_UP, SUPERSEDED (not RUNNING any more) or NOT_STALE. ``trial``: this
    process's own run of it, whose batched writes go into the same transaction."""
    assert kind in ("crash", "hand_back"), kind
    return with_storage_retry(_end_run, study, trial_id, kind=kind, reason=reason, attrs=attrs, details=details,
                              stale_only=stale_only, run=trial, what="re-queueing a trial")


def _end_run(study: optuna.Study, trial_id: int, *, kind: str, reason: str, attrs: dict[str, Any] | None,
             details: dict[str, Any] | None, retry_limit: int = 0, stale_only: bool = False,
             run: optuna.Trial | None = None) -> str:
    storage = study._storage
    with _sql.transaction(storage) as s:
        failpoint(f"{kind}.begin")
        trial = _sql.lock_trial(s, trial_id)
        if trial is None:
            return SUPERSEDED
        if trial.state != TrialState.RUNNING:
            if trial.state == TrialState.FAIL and _sql.attrs_of(s, trial_id, system=False).get(A.FAIL_REASON, "").startswith(reason):
                return REQUEUED if kind != "error" else FAIL  # our own commit, whose ack was lost
            return SUPERSEDED
        if stale_only and not _still_stale(s, trial):
            return NOT_STALE
        if run is not None:
            write_pending(run, s)  # the parameters the retry must run, the epochs it reported
        system = _sql.attrs_of(s, trial_id, system=True)
        crashes = int(system.get(A.CRASHES, 0)) + (kind == "crash")
        hand_backs = int(system.get(A.HAND_BACKS, 0)) + (kind == "hand_back")
        error_retries = int(system.get(A.ERROR_RETRIES, 0)) + (kind == "error")
        if kind == "crash":
            retry = crashes <= MAX_RETRIES
            outcome = "crash" if retry else "gave_up"
            if not retry:
                reason = f"{reason}; gave up after {MAX_RETRIES} retries"
        elif kind == "hand_back":
            retry, outcome = True, "hand_back"
        else:
            retry = error_retries <= retry_limit
            outcome = "error_retried" if retry else "error"
        _sql.put_attrs(s, trial_id, {**(attrs or {}), A.FAIL_REASON: reason})
        _sql.put_attrs(s, trial_id, {**(details or {}), OUTCOME: outcome}, system=True)
        _sql.finish_state(trial, TrialState.FAIL)
        failpoint(f"{kind}.failed")
        if retry:
            _enqueue_retry(s, storage, trial, system, reason, crashes=crashes, hand_backs=hand_backs,
                           error_retries=error_retries if kind == "error" else int(system.get(A.ERROR_RETRIES, 0)))
            failpoint(f"{kind}.enqueued")
        failpoint(f"{kind}.commit")
    failpoint(f"{kind}.committed")
    if kind == "error":
        return REQUEUED if retry else FAIL
    return REQUEUED if retry else GAVE_UP


def _enqueue_retry(s: Any, storage: Any, failed: Any, system: dict[str, Any], reason: str, *,
                   crashes: int, hand_backs: int, error_retries: int) -> None:
    """The WAITING retry of ``failed``: same parameters and distributions; Optuna's
    ``failed_trial``/``retry_history``; the chain's counts; the checkpoint directory."""
    params, distributions = _sql.params_of(s, failed.trial_id)
    user = _sql.attrs_of(s, failed.trial_id, system=False)
    history = [*system.get(A.RETRY_HISTORY, []), failed.number]
    carried = {k: v for k, v in system.items() if k not in _RUN_ONLY}
    retry = _sql.new_trial(s, failed.study_id, TrialState.WAITING)
    _sql.put_params(s, retry.trial_id, params, distributions)
    _sql.put_attrs(s, retry.trial_id, {
        **carried, A.FAILED_TRIAL: history[0], A.RETRY_HISTORY: history, A.RETRY_REASON: reason,
        A.CRASHES: crashes, A.HAND_BACKS: hand_backs, A.ERROR_RETRIES: error_retries,
    }, system=True, fresh=True)
    kept = {k: user[k] for k in (A.CHECKPOINT_DIR,) if k in user}
    _sql.put_attrs(s, retry.trial_id, {**kept, A.RETRY_OF: failed.number, A.RETRY_REASON: reason}, fresh=True)


def _superseded(claimed: Claimed) -> str:
    _log.warning("trial %s was failed as stale while it ran (its retry runs instead); this run's result is dropped",
                 claimed.number)
    return SUPERSEDED


# ---------------------------------------------------------------------------- liveness


def _stale(now: dt.datetime, beat: dt.datetime | None, started: dt.datetime | None) -> bool:
    grace = dt.timedelta(seconds=HEARTBEAT_GRACE)
    if beat is not None:
        return now - beat > grace
    # No heartbeat row (claimed by another tool): judge by its start (naive UTC, as Optuna
    # stores it), on this machine's clock.
    return started is not None and dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - started > grace


def _still_stale(s: Any, trial: Any) -> bool:
    from optuna.storages._rdb import models

    hb = s.query(models.TrialHeartbeatModel).filter(
        models.TrialHeartbeatModel.trial_id == trial.trial_id).with_for_update().one_or_none()
    return _stale(_sql.db_now(s), hb.heartbeat if hb is not None else None, trial._datetime_start_utc)


def fail_stale(study: optuna.Study) -> list[tuple[int, str]]:
    """Fail and re-queue the study's RUNNING trials whose heartbeat went stale; each trial is
    one transaction. Returns (trial id, result) per stale trial. Does nothing until this
    process's storage access has been healthy for ``LIVENESS_MARGIN`` seconds."""
    if healthy_for() < LIVENESS_MARGIN:
        return []
    storage = study._storage
    with _sql.read(storage) as s:
        now = _sql.db_now(s)
        rows = _sql.running_with_beats(s, study._study_id)
    out = []
    for trial_id, beat, started in rows:
        if not _stale(now, beat, started):
            continue
        failpoint("stale.found")
        result = requeue(study, trial_id, kind="crash", stale_only=True,
                         reason=f"heartbeat stale (no sign of life for over {HEARTBEAT_GRACE} s)")
        if result != NOT_STALE:
            _log.warning("trial id %s: heartbeat stale; %s", trial_id, result.lower())
        out.append((trial_id, result))
    return out


def reconcile(study: optuna.Study) -> list[tuple[int, str]]:
    """Retry trials that code outside the lifecycle failed because their heartbeat went stale
    (they have no ``fail_reason``), and give the others a reason, so each is looked at once."""
    from optuna.storages._rdb import models

    storage = study._storage
    with _sql.read(storage) as s:
        ids = _sql.unexplained_failures(s, study._study_id)
    out = []
    for trial_id in ids:
        with _sql.transaction(storage) as s:
            trial = _sql.lock_trial(s, trial_id)
            if trial is None or trial.state != TrialState.FAIL or A.FAIL_REASON in _sql.attrs_of(s, trial_id, system=False):
                continue
            hb = s.query(models.TrialHeartbeatModel).filter(models.TrialHeartbeatModel.trial_id == trial_id).one_or_none()
            ended = trial._datetime_complete_utc
            stale = (hb is not None and ended is not None
                     and ended - hb.heartbeat > dt.timedelta(seconds=HEARTBEAT_GRACE / 2))
            system = _sql.attrs_of(s, trial_id, system=True)
            if stale:
                reason = "heartbeat stale (failed by another program's stale check)"
                crashes = int(system.get(A.CRASHES, 0)) + 1
                _sql.put_attrs(s, trial_id, {A.FAIL_REASON: reason})
                if crashes <= MAX_RETRIES:
                    _sql.put_attrs(s, trial_id, {OUTCOME: "crash"}, system=True)
                    _enqueue_retry(s, storage, trial, system, reason, crashes=crashes,
                                   hand_backs=int(system.get(A.HAND_BACKS, 0)),
                                   error_retries=int(system.get(A.ERROR_RETRIES, 0)))
                    out.append((trial_id, REQUEUED))
                else:
                    _sql.put_attrs(s, trial_id, {A.FAIL_REASON: f"{reason}; gave up after {MAX_RETRIES} retries"})
                    _sql.put_attrs(s, trial_id, {OUTCOME: "gave_up"}, system=True)
                    out.append((trial_id, GAVE_UP))
            else:
                _sql.put_attrs(s, trial_id, {A.FAIL_REASON: "failed outside tuner-service (e.g. in optuna-dashboard)"})
                _sql.put_attrs(s, trial_id, {OUTCOME: "error"}, system=True)
                out.append((trial_id, FAIL))
    return out


# ---------------------------------------------------------------------------- study-wide


def check_consecutive_failures(study: optuna.Study, limit: int = MAX_CONSECUTIVE_FAILURES) -> str | None:
    """Why the study should stop (its last ``limit`` final outcomes, study-wide, were all
    failures), or None."""
    from optuna.storages._rdb import models
    from sqlalchemy import and_, or_, select

    if limit <= 0:
        return None
    t, sa = models.TrialModel, models.TrialSystemAttributeModel
    with _sql.read(study._storage) as s:
        rows = s.execute(
            select(t.state, sa.value_json).select_from(t)
            .outerjoin(sa, and_(sa.trial_id == t.trial_id, sa.key == OUTCOME))
            .where(t.study_id == study._study_id,
                   or_(t.state.in_([TrialState.COMPLETE, TrialState.PRUNED]),
                       and_(t.state == TrialState.FAIL, sa.value_json.in_([f'"{o}"' for o in FINAL_FAILURES]))))
            .order_by(t._datetime_complete_utc.desc(), t.trial_id.desc()).limit(limit)
        ).all()
    if len(rows) == limit and all(r[0] == TrialState.FAIL for r in rows):
        return f"{limit} consecutive trials failed"
    return None


def _now_unix() -> float:
    import time

    return round(time.time(), 3)
