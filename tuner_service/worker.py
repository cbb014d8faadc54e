"""The worker loop: claim a WAITING trial, run it, tell the result; heartbeat while it runs.

One worker process serves many trials (imports, user code and data are loaded once). Any
process that can reach the storage can run one (``tuner-service worker NAME``); ``submit
--workers N`` starts N of them; an agent starts one per GPU slot.

Failure handling, by cause:

- the model raised, diverged or does not log the objective -> the trial is FAIL with the
  reason in ``user_attrs["fail_reason"]`` (and the traceback); the worker carries on; after
  ``MAX_CONSECUTIVE_FAILURES`` in a row the study is marked aborted (keras-tuner's
  ``max_consecutive_failed_trials``);
- the worker is stopped (SIGTERM/SIGINT) -> the running trial is failed at once and a copy
  with the same parameters is re-queued ("handed back");
- the worker dies (SIGKILL, OOM, machine lost) -> its heartbeat goes stale; the next worker
  that looks fails the trial and re-queues it (Optuna's ``fail_stale_trials``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner_service import study as study_mod
from tuner_service.errors import BadInput, StorageOutage, StudyAborted, TrialError
from tuner_service.storage import HEARTBEAT_INTERVAL, open_storage, set_trial_user_attrs, with_storage_retry

if TYPE_CHECKING:
    import optuna

_log = logging.getLogger(__name__)

HAND_BACK_RETRIES = 1000
MAX_CONSECUTIVE_FAILURES = int(os.environ.get("TUNER_SERVICE_MAX_CONSECUTIVE_FAILURES", "3"))
POLL_SECONDS = 1.0


@dataclass
class WorkerOptions:
    index: int | None = None  # sampler stream; None: derived from host and pid (distinct per process)
    threads: int | None = None
    max_trials: int | None = None  # recycle the process after this many trials
    memory_limit_mb: int | None = None  # ... or once its resident memory exceeds this
    slot: str | None = None  # agent slot label, recorded per trial
    poll: float = POLL_SECONDS


class Worker:
    """Runs trials of one study until its budget is spent (or it is told to stop)."""

    def __init__(self, study_name: str, storage_url: str | None, options: WorkerOptions | None = None,
                 *, runner: Any = None) -> None:
        self.options = options or WorkerOptions()
        self.storage = open_storage(storage_url, heartbeat=True, create=False)
        probe = study_mod.load(self.storage, study_name)
        study_mod.refuse_facade_study(probe)
        self.spec = study_mod.stored_spec(probe)
        check_code_identity(probe)
        from tuner_service import tuners

        if self.options.index is None:
            import zlib

            self.options.index = zlib.crc32(f"{socket.gethostname()}/{os.getpid()}".encode()) % 1_000_003
        sampler, pruner = tuners.make(self.spec, worker=self.options.index)
        self.study = study_mod.load(self.storage, study_name, sampler=sampler, pruner=pruner)
        import optuna

        self.prune = not isinstance(pruner, optuna.pruners.NopPruner)  # should_prune costs a read
        self._runner = runner
        from tuner_service.dashboard import open_artifact_store

        self.artifact_store = open_artifact_store()  # None unless an artifact directory is configured
        self._stop = threading.Event()
        self._current: optuna.Trial | None = None
        self.trials_run = 0
        self._housekeeping_due = 0.0  # next stale-trial check and study-attrs read (monotonic)
        self._study_attrs: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def runner(self) -> Any:
        if self._runner is None:
            from tuner_service import tuners
            from tuner_service.runner import TrialRunner, configure_threads

            configure_threads(self.options.threads)
            runner_cls = tuners.get(self.spec.tuner.name).runner or TrialRunner
            self._runner = runner_cls(self.spec)
        return self._runner

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM/SIGINT: stop claiming, and hand the running trial back at once.

        Returns the previous handlers, for callers that run a worker inside a longer-lived
        program (``submit`` from Python) to restore."""
        from tuner_service.runner import TrialInterrupted

        def handler(signum: int, _frame: Any) -> None:
            self._stop.set()
            # Raise into the trial only once: a terminal and a parent may both deliver SIGINT.
            current, self._current = self._current, None
            if current is not None:
                raise TrialInterrupted(signal.Signals(signum).name)

        return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def run(self, on_trial_done: Callable[[Any], None] | None = None) -> int:
        """Claim and run trials until none is left; returns how many this worker ran."""

        consecutive_failures = 0
        _ = self.runner  # imports, user code and data first: a failure here must not strand a claimed trial
        while not self._stop.is_set():
            trial, finished = with_storage_retry(self._next_trial, what="claiming a trial")
            if finished:
                break
            if trial is None:
                # Others are still running: one may die and be re-queued; wait for it.
                self._stop.wait(self.options.poll)
                continue
            state = self.run_trial(trial)
            self.trials_run += 1
            if on_trial_done:
                on_trial_done(state)
            consecutive_failures = consecutive_failures + 1 if state == "FAIL" else 0
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                reason = f"{consecutive_failures} consecutive trials failed; see `tuner-service trials {self.spec.name}`"
                self.study.set_user_attr(study_mod.ABORTED_ATTR, reason)
                raise StudyAborted(f"study {self.spec.name!r} stopped: {reason}")
            if self.options.max_trials and self.trials_run >= self.options.max_trials:
                break
            rss = rss_mb() if self.options.memory_limit_mb else 0.0
            if self.options.memory_limit_mb and rss > self.options.memory_limit_mb:
                _log.info("recycling: resident memory %.0f MB > %d MB", rss, self.options.memory_limit_mb)
                break
        if self.trials_run:
            from tuner_service.notes import write_study_note

            write_study_note(self.study)  # the dashboard's study note: best so far (never raises)
        return self.trials_run

    def _next_trial(self) -> tuple[optuna.Trial | None, bool]:
        """(claimed trial or None, whether the study has nothing left for this worker)."""
        import optuna
        from optuna.trial import TrialState

        now = time.monotonic()
        if now >= self._housekeeping_due:
            # Once per heartbeat interval, not per trial: a stale trial cannot be detected
            # sooner than its grace period anyway, and a stop flag a few seconds late costs at
            # most one extra trial (each check is a read; short trials would pay it every time).
            optuna.storages.fail_stale_trials(self.study)
            self._study_attrs = self.study.user_attrs
            self._housekeeping_due = now + HEARTBEAT_INTERVAL
        attrs = self._study_attrs
        if study_mod.expired(attrs, self.spec) or attrs.get(study_mod.ABORTED_ATTR):
            return None, True
        trial = claim(self.study, self._run_attrs(self.runner))
        if trial is None:
            # No slot left; while others run, one may die and be re-queued, so keep watching.
            running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            return None, not running
        return trial, False

    # ------------------------------------------------------------------ one trial

    def run_trial(self, trial: optuna.Trial) -> str:
        """Run one claimed trial and record its outcome; returns the final state name."""
        import optuna
        from optuna.trial import TrialState

        from tuner_service.retry import fail_and_requeue
        from tuner_service.runner import TrialInterrupted

        storage, tid = self.storage, trial._trial_id
        runner = self.runner
        beat = Heartbeat(storage, tid)
        self._current = trial

        def record(attrs: dict[str, Any], what: str) -> None:
            with_storage_retry(set_trial_user_attrs, storage, tid, attrs, what=what)

        def tell(**kwargs: Any) -> None:
            with_storage_retry(self.study.tell, trial, what="recording a result", **kwargs)

        try:
            beat.start(beat_now=False)  # claim() beat once and stored the run attrs (host, pid, slot...)
            outcome = runner.run(trial, prune=self.prune)
            self._current = None
            record({**outcome.attrs, "finished_at_unix": time.time()}, "recording a result")
            if self.artifact_store is not None:  # before tell: finished trials are read-only
                from tuner_service.notes import upload_trial_curves

                upload_trial_curves(self.study, tid, outcome.attrs.get("history") or {}, self.artifact_store,
                                    objective=self.spec.objective.name, best_epoch=outcome.attrs.get("best_epoch"))
            if outcome.pruned:
                tell(state=TrialState.PRUNED)
                return "PRUNED"
            tell(values=outcome.value)
            return "COMPLETE"
        except TrialInterrupted as exc:
            self._current = None
            reason = f"worker stopped ({exc})"

            def hand_back() -> None:
                # Preemption is not the trial's fault: hand-backs do not use up its retries.
                with_storage_retry(fail_and_requeue, self.study, tid, reason=reason, max_retry=HAND_BACK_RETRIES,
                                   what="handing a trial back")

            return self._unless_superseded(trial, hand_back, "HANDED_BACK")
        except (TrialError, BadInput) as exc:
            self._current = None
            details = {"fail_reason": str(exc), "traceback": traceback.format_exc()[-8000:]}

            def fail() -> None:
                record(details, "recording a failure")
                tell(state=TrialState.FAIL)

            return self._unless_superseded(trial, fail, "FAIL")
        except optuna.exceptions.UpdateFinishedTrialError:
            return self._superseded(trial)
        finally:
            self._current = None
            beat.stop()

    def _unless_superseded(self, trial: optuna.Trial, action: Callable[[], None], state: str) -> str:
        import optuna

        try:
            action()
        except optuna.exceptions.UpdateFinishedTrialError:
            return self._superseded(trial)
        return state

    @staticmethod
    def _superseded(trial: optuna.Trial) -> str:
        # Our heartbeat went stale (e.g. a long database outage) and another worker failed and
        # re-queued this trial meanwhile: its retry runs; this run's outcome is dropped.
        _log.warning("trial %s was failed as stale while running; its retry runs instead", trial.number)
        return "SUPERSEDED"

    def _run_attrs(self, runner: Any) -> dict[str, Any]:
        attrs = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "worker": self.options.index,
            "device": runner.device,
            "keras_backend": runner.backend,
            "started_at_unix": time.time(),
        }
        if self.options.slot is not None:
            attrs["slot"] = self.options.slot
            attrs["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        return attrs


def rss_mb() -> float:
    """This process's resident memory in MB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def claim(study: optuna.Study, user_attrs: dict[str, Any] | None = None) -> optuna.Trial | None:
    """Atomically take one WAITING trial (WAITING -> RUNNING), or None when there is none.

    WAITING trials (retries of failed runs, grid points) go first, with the same atomic
    transition as ``Study.ask``'s queue pop; otherwise a new trial is started only after
    taking a slot from the study's budget counter, so N workers never exceed the budget.
    ``user_attrs`` are stored with the claim (for a new trial, in the transaction that creates it).
    """
    import datetime

    import optuna
    from optuna.trial import FrozenTrial, TrialState

    from tuner_service.storage import set_trial_user_attrs, take_budget, waiting_trial_ids

    storage = study._storage
    while True:
        candidates = waiting_trial_ids(storage, study._study_id)
        if not candidates:
            break
        for trial_id in candidates:
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    _first_heartbeat(storage, trial_id)
                    if user_attrs:
                        with_storage_retry(set_trial_user_attrs, storage, trial_id, user_attrs, what="starting a trial")
                    # Optuna's cache layer must see the trial before params can be set on it.
                    storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
                    return optuna.Trial(study, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        # Every candidate was taken by other workers meanwhile: look again.
    if take_budget(storage, study._study_id):
        # The slot is ours: create its trial even through an outage rather than lose the slot.
        template = FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(),
            datetime_complete=None, params={}, distributions={}, user_attrs=dict(user_attrs or {}),
            system_attrs={}, intermediate_values={}, trial_id=-1,
        )
        trial_id = with_storage_retry(storage.create_new_trial, study._study_id, template, what="creating a trial")
        _first_heartbeat(storage, trial_id)
        return optuna.Trial(study, trial_id)
    return None


def _first_heartbeat(storage: Any, trial_id: int) -> None:
    """Beat at once on claim: Optuna never fails a trial that has no heartbeat at all, so a
    worker dying between the claim and its first beat would leave the trial RUNNING forever."""
    from tuner_service.storage import _rdb

    backend = _rdb(storage)
    if getattr(backend, "get_heartbeat_interval", lambda: None)() is not None:
        backend.record_heartbeat(trial_id)


def check_code_identity(study: optuna.Study) -> None:
    """Refuse to run a study whose model source here differs from the submitted one."""
    from tuner_service.spec import code_hash

    expected = study.user_attrs.get(study_mod.CODE_HASH_ATTR)
    spec = study_mod.stored_spec(study)
    try:
        actual = code_hash(spec.model)
    except BadInput as exc:
        raise BadInput(f"study {study.study_name!r}: {exc} (this machine needs the same code checkout)") from None
    if expected and actual != expected:
        raise BadInput(
            f"study {study.study_name!r}: model source {spec.model.split(':')[0]!r} here differs from the "
            f"submitted one (sha256 {actual[:12]} != {expected[:12]}); check out the submitted version of the code"
        )


class Heartbeat:
    """Records the trial's heartbeat every interval from a daemon thread while it runs."""

    def __init__(self, storage: Any, trial_id: int, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{trial_id}", daemon=True)

    def start(self, beat_now: bool = True) -> None:
        if beat_now:
            self.storage.record_heartbeat(self.trial_id)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # the storage may be briefly down; the next beat retries
                _log.warning("heartbeat for trial %s failed: %s", self.trial_id, exc)


def main(argv: list[str] | None = None) -> int:
    """``python -m tuner_service.worker NAME [--storage URL] [--index I] [--threads T]``."""
    import argparse

    from tuner_service.storage import mask_password

    p = argparse.ArgumentParser(prog="tuner_service.worker")
    p.add_argument("study")
    p.add_argument("--storage")
    p.add_argument("--index", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--max-trials", type=int)
    p.add_argument("--slot")
    p.add_argument("--memory-limit-mb", type=int)
    args = p.parse_args(argv)
    try:
        worker = Worker(args.study, args.storage, WorkerOptions(
            index=args.index, threads=args.threads, max_trials=args.max_trials, slot=args.slot,
            memory_limit_mb=args.memory_limit_mb))
        worker.install_signal_handlers()
        worker.run()
    except (BadInput, StudyAborted, StorageOutage) as exc:
        print(f"error: {mask_password(str(exc))}", flush=True)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
