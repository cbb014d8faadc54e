"""The claim -> run -> record loop every driver runs (workers, agent runners, the keras-tuner
API's searches, Ray actors): one process, one study, one :class:`~tuner_service.runners.Runner`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner_service import attrs as A
from tuner_service.errors import BadInput, StorageOutage, StudyAborted, TrialError, error_line
from tuner_service.lifecycle import _sql
from tuner_service.lifecycle import _transitions as lc
from tuner_service.runners import TrialInterrupted
from tuner_service.storage import with_storage_retry

if TYPE_CHECKING:
    import optuna

    from tuner_service.runners import Outcome, Runner

_log = logging.getLogger("tuner_service.lifecycle")


@dataclass
class LoopOptions:
    #: Keep watching while other drivers' trials run (one may die and be re-queued). Agent
    #: runners say False: they exit and let the agent give the slot to another study.
    wait_for_others: bool = True
    max_trials: int | None = None  # recycle the process after this many trials
    memory_limit_mb: int | None = None  # ... or once its resident memory exceeds this
    poll: float = 1.0
    retry_limit: int = 0  # keras-tuner's max_retries_per_trial (model errors retried)
    max_consecutive_failures: int = lc.MAX_CONSECUTIVE_FAILURES


class TrialLoop:
    """Claims trials of one study and runs them until none is left for this process.

    ``run_attrs()`` gives the attrs stored with each claim (host, pid, slot, device);
    ``stop_reason(study_user_attrs)`` says why the study takes no new trial (aborted, timed
    out, paused...), or None. ``current`` is the claimed trial while its runner runs, for a
    signal handler that interrupts it (``TrialInterrupted``) to hand it back.
    """

    def __init__(self, study: optuna.Study, runner: Runner, run_attrs: Callable[[], dict[str, Any]], *,
                 prune: bool, objective: str | None = None, options: LoopOptions | None = None,
                 stop_reason: Callable[[dict[str, Any]], str | None] | None = None,
                 artifact_store: Any = None, on_trial_done: Callable[[str], None] | None = None) -> None:
        self.study, self.runner, self.run_attrs = study, runner, run_attrs
        self.prune, self.objective = prune, objective
        self.options = options or LoopOptions()
        self.stop_reason = stop_reason or (lambda attrs: attrs.get(A.ABORTED) or None)
        self.artifact_store = artifact_store
        self.on_trial_done = on_trial_done
        self.current: lc.Claimed | None = None
        self.trials_run = 0
        self._stop = threading.Event()
        self._housekeeping_due = 0.0
        self._study_attrs: dict[str, Any] = {}

    def stop(self) -> None:
        """Take no new trial (the running one finishes)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Claim and run trials until none is left for this process; returns how many ran."""
        while not self._stop.is_set():
            claimed, finished = with_storage_retry(self.next_trial, what="claiming a trial")
            if finished:
                break
            if claimed is None:
                self._stop.wait(self.options.poll)  # others run; one may die and be re-queued
                continue
            state = self.run_claimed(claimed)
            self.trials_run += 1
            if self.on_trial_done:
                self.on_trial_done(state)
            if state == lc.FAIL:
                self._check_failures()
            if self.options.max_trials and self.trials_run >= self.options.max_trials:
                break
            if self.options.memory_limit_mb and rss_mb() > self.options.memory_limit_mb:
                _log.info("recycling: resident memory %.0f MB > %d MB", rss_mb(), self.options.memory_limit_mb)
                break
        return self.trials_run

    def next_trial(self) -> tuple[lc.Claimed | None, bool]:
        """(claimed trial or None, whether nothing is left for this process)."""
        now = time.monotonic()
        if now >= self._housekeeping_due:
            # Once per heartbeat interval, not per trial: a stale trial cannot be detected
            # sooner than its grace period anyway, and a stop flag a few seconds late costs at
            # most one extra trial.
            lc.fail_stale(self.study)
            lc.reconcile(self.study)
            self._study_attrs = self.study.user_attrs
            self._housekeeping_due = now + lc.HEARTBEAT_INTERVAL
        reason = self.stop_reason(self._study_attrs)
        if reason:
            _log.info("study %r takes no new trials: %s", self.study.study_name, reason)
            return None, True
        claimed = lc.claim(self.study, self.run_attrs(), prune=self.prune)
        if claimed is None:
            blocked = self._blocked()
            if blocked == "paused":
                # Paused: plain workers wait for `tuner-service resume` (looking every poll);
                # an agent's runner leaves, and the agent gives its slot to another study.
                self._housekeeping_due = 0.0
                return None, not self.options.wait_for_others
            if blocked:
                return None, True
            return None, not (self.options.wait_for_others and self._others_running())
        return claimed, False

    def _blocked(self) -> str | None:
        with _sql.read(self.study._storage) as s:
            return _sql.claims_blocked(s, self.study._study_id)

    def _others_running(self) -> bool:
        from optuna.storages._rdb import models
        from optuna.trial import TrialState
        from sqlalchemy import func, select

        t = models.TrialModel
        with _sql.read(self.study._storage) as s:
            return bool(s.execute(select(func.count()).select_from(t).where(
                t.study_id == self.study._study_id, t.state.in_([TrialState.RUNNING, TrialState.WAITING]))).scalar())

    def _check_failures(self) -> None:
        reason = with_storage_retry(lc.check_consecutive_failures, self.study, self.options.max_consecutive_failures,
                                    what="checking failures")
        if reason:
            reason = f"{reason}; see `tuner-service trials {self.study.study_name}`"
            with_storage_retry(self.study.set_user_attr, A.ABORTED, reason, what="stopping the study")
            raise StudyAborted(f"study {self.study.study_name!r} stopped: {reason}")

    # ------------------------------------------------------------------ one trial

    def run_claimed(self, claimed: lc.Claimed) -> str:
        """Run one claimed trial and record how it ended; returns the transition's result
        (COMPLETE, PRUNED, FAIL, REQUEUED, SUPERSEDED, HANDED_BACK...)."""
        self.current = claimed
        try:
            try:
                outcome = self.runner.run(claimed.trial, prune=self.prune)
            finally:
                self.current = None
            return self._record(claimed, outcome)
        except (TrialInterrupted, KeyboardInterrupt) as exc:
            self._stop.set()
            with _shielded():
                result = lc.requeue(self.study, claimed.trial_id, kind="hand_back",
                                    reason=f"handed back ({_signal_name(exc)})", trial=claimed.trial)
            _log.info("trial %s handed back (%s)", claimed.number, result.lower())
            if isinstance(exc, KeyboardInterrupt):
                raise
            return "HANDED_BACK"
        except (TrialError, BadInput) as exc:
            retry = self.options.retry_limit if getattr(exc, "retry", False) else 0
            details = {A.TRACEBACK: traceback.format_exc()[-8000:]}
            self._decorate(claimed, lc.FAIL, None, {A.FAIL_REASON: str(exc)}, details)
            return lc.fail(self.study, claimed, str(exc), details=details, retry_limit=retry)
        except StorageOutage:
            raise  # the trial stays RUNNING; its heartbeat stops with this process, then it is retried
        except Exception as exc:
            # Not the model's fault as far as we know (a bug of ours, a user error escaping the
            # runner): retried like a crash, so a process that keeps failing gives up.
            with contextlib.suppress(Exception):
                lc.requeue(self.study, claimed.trial_id, kind="crash", reason=f"worker error: {error_line(exc)}",
                           details={A.TRACEBACK: traceback.format_exc()[-8000:]}, trial=claimed.trial)
            raise
        finally:
            claimed.stop_heartbeat()

    def _record(self, claimed: lc.Claimed, outcome: Outcome) -> str:
        state = lc.PRUNED if outcome.pruned else lc.COMPLETE
        self._decorate(claimed, state, outcome.values, outcome.attrs, outcome.details)
        return lc.finish(self.study, claimed, state, outcome.values, attrs=outcome.attrs, details=outcome.details)

    def _decorate(self, claimed: lc.Claimed, state: str, values: list[float] | None, attrs: dict[str, Any],
                  details: dict[str, Any]) -> None:
        """The dashboard's trial note and learning curve, written while the trial is RUNNING."""
        from tuner_service import notes

        decorate = getattr(notes, "decorate_trial", None)
        if decorate is None:
            return
        decorate(self.study, claimed.trial_id, number=claimed.number, state=state, values=values,
                 params=dict(claimed.trial.params), attrs=attrs, details=details, objective=self.objective,
                 artifact_store=self.artifact_store)


def rss_mb() -> float:
    """This process's resident memory in MB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _signal_name(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ignore Ctrl-C while a trial is handed back (main thread only, where signals land):
    a second Ctrl-C must not break the transaction that re-queues it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
