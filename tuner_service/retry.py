"""Re-queueing trials that did not finish: stale heartbeats, hand-backs on shutdown.

A re-queued trial is a new WAITING trial with the same parameters (and distributions), so
the next worker that claims it runs the same point. The failed original keeps its record
(state FAIL, ``user_attrs["fail_reason"]``); the retry carries Optuna's own
``failed_trial``/``retry_history`` system attrs, so
``optuna.storages.RetryFailedTrialCallback.retried_trial_number`` works on our trials too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

import os

#: How often a trial whose run died (crash, OOM kill, lost machine) is retried before it stays
#: FAIL: a model that kills its runner every time must not loop forever.
MAX_RETRIES = int(os.environ.get("TUNER_SERVICE_MAX_RETRIES", "3"))

#: System attrs that must not be carried to the retry (they describe the failed run).
_RUN_ONLY_SYSTEM_ATTRS = ("checkpoint_epoch",)


class RequeueStaleTrial:
    """Heartbeat-stale callback: re-enqueue the failed trial's parameters (at most N times).

    Unlike Optuna's ``RetryHeartbeatStaleTrialCallback`` it does not copy the failed run's
    user attrs (pid, host, traceback), which describe that run, not the retry.
    """

    def __init__(self, max_retry: int = MAX_RETRIES, reason: str = "heartbeat stale") -> None:
        self.max_retry = max_retry
        self.reason = reason

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        requeue(study, trial, reason=self.reason, max_retry=self.max_retry)


def fail_and_requeue(study: optuna.Study, trial_id: int, *, reason: str, max_retry: int = MAX_RETRIES) -> bool:
    """Fail a RUNNING trial whose run is gone and enqueue its retry; False when another process
    finished it first or its retries are used up. The reason (and whether retries ran out) is
    written before the trial is failed: Optuna keeps finished trials read-only."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    frozen = storage.get_trial(trial_id)
    if len(frozen.system_attrs.get("retry_history", [])) + 1 > max_retry:
        reason = f"{reason}; gave up after {max_retry} retries"
    try:
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # a heartbeat check or the worker itself got there first
    return requeue(study, storage.get_trial(trial_id), reason=reason, max_retry=max_retry)


def requeue(
    study: optuna.Study, trial: FrozenTrial, *, reason: str, max_retry: int = MAX_RETRIES
) -> bool:
    """Record why ``trial`` failed and enqueue a retry; False when retries are used up."""
    import optuna

    storage = study._storage
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > max_retry:
        _set_fail_reason(storage, trial, f"{reason}; gave up after {max_retry} retries")
        return False
    _set_fail_reason(storage, trial, reason)
    system_attrs: dict[str, Any] = {
        k: v for k, v in trial.system_attrs.items() if k not in _RUN_ONLY_SYSTEM_ATTRS
    }
    system_attrs["failed_trial"] = history[0]
    system_attrs["retry_history"] = history
    system_attrs["retry_reason"] = reason  # the failed original may not be writable any more
    # Keep the per-trial checkpoint directory so a retry resumes where the failed run stopped.
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k in ("checkpoint_dir",)}
    user_attrs["retry_of"] = trial.number
    user_attrs["retry_reason"] = reason
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs=system_attrs,
            user_attrs=user_attrs,
        )
    )
    return True


def _set_fail_reason(storage: Any, trial: FrozenTrial, reason: str) -> None:
    """Record why ``trial`` failed where Optuna still allows it.

    Optuna refuses attribute writes to finished trials, and ``fail_stale_trials`` fails the
    trial before it calls the stale callback; the reason then lives on the retry only.
    """
    import optuna

    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
