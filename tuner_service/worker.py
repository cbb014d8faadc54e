"""A worker: one process serving one study with the trial lifecycle (:mod:`tuner_service.lifecycle`).

One worker process serves many trials (imports, user code and data are loaded once). Any
process that can reach the storage can run one (``tuner-service worker NAME``); ``submit
--workers N`` starts N of them; an agent starts one per slot (``--slot``), which exits as soon
as its study has nothing claimable so the agent can give the slot to another study.

An agent starts its runners with ``--standby``: the process imports Keras (TensorFlow with it,
the seconds a start costs), says ``ready`` on its stdout (a pipe the agent watches), points its
stdout at its log, and only then reads its study and sampler index as one JSON line from
stdin. The agent either writes that line at once (a cold start) or keeps the process waiting
as the slot's *standby* runner, so the slot's next study, or the replacement of a recycled
runner, starts without the import. A standby runner whose study sets ``speed.onednn`` unlike
the environment it imported TensorFlow in re-executes itself (same pid) with the setting, since
TensorFlow reads it only at import. EOF on stdin before the line: exit 0.

Before it claims anything the worker checks that it can serve the study here, and refuses
(exit 5) a study created by the keras-tuner API, one whose stored spec does not validate on
this machine (a file it names is missing), or one whose model source differs from the
submitted one. SIGTERM/SIGINT hand the running trial back and stop the worker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner_service import attrs as A
from tuner_service import study as study_mod
from tuner_service.errors import BadInput, Refused, StorageOutage, StorageUnavailable, StudyAborted
from tuner_service.lifecycle import LoopOptions, TrialLoop
from tuner_service.storage import open_storage, resolve_url, with_storage_retry

if TYPE_CHECKING:
    from tuner_service.runners import Runner

_log = logging.getLogger(__name__)


#: Modules whose frames mean "the main thread is inside a storage call" to the signal handler.
#: (The trial itself runs below ``tuner_service.lifecycle._driver``, which is not one of them.)
_STORAGE_MODULES = ("sqlalchemy.", "psycopg", "sqlite3", "optuna.storages.", "tuner_service.lifecycle._sql",
                    "tuner_service.lifecycle._transitions", "tuner_service.lifecycle._writes",
                    "tuner_service.storage", "tuner_service._rdb")


def _in_storage_call(frame: Any) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_STORAGE_MODULES):
            return True
        frame = frame.f_back
    return False


@dataclass
class WorkerOptions:
    index: int | None = None  # sampler stream; None: derived from host and pid (distinct per process)
    threads: int | None = None
    max_trials: int | None = None  # recycle the process after this many trials
    memory_limit_mb: int | None = None  # ... or once its resident memory exceeds this
    slot: str | None = None  # agent slot label, recorded per trial; an agent runner exits when idle
    poll: float = 1.0


class Worker:
    """Runs trials of one study until nothing is left for it (or it is told to stop)."""

    def __init__(self, study_name: str, storage_url: str | None, options: WorkerOptions | None = None,
                 *, runner: Runner | None = None) -> None:
        from tuner_service import tuners

        self.options = options or WorkerOptions()
        self.url = resolve_url(storage_url)
        self.storage = with_storage_retry(open_storage, self.url, create=False, what="opening the storage")
        probe = with_storage_retry(study_mod.load, self.storage, study_name, what="loading the study")
        self.spec = study_mod.servable_spec(probe)
        if self.options.index is None:
            self.options.index = zlib.crc32(f"{socket.gethostname()}/{os.getpid()}".encode()) % 1_000_003
        sampler, pruner = tuners.make(self.spec, worker=self.options.index)
        self.study = study_mod.load(self.storage, study_name, sampler=sampler, pruner=pruner)
        self.prune = type(pruner).__name__ != "NopPruner"  # should_prune costs a read
        self._runner = runner
        self.loop: TrialLoop | None = None
        self._stopped = False

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            from tuner_service.runners import make_runner
            from tuner_service.runners._env import apply_speed, configure_threads

            configure_threads(self.options.threads)
            apply_speed(self.spec.speed)
            self._runner = make_runner(self.spec)
        return self._runner

    def stop(self) -> None:
        self._stopped = True
        if self.loop is not None:
            self.loop.stop()

    def install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM/SIGINT: stop claiming, and hand the running trial back at once. SIGUSR1
        (an agent draining): finish the running trial, claim no other, exit.

        Returns the previous handlers, for callers that run a worker inside a longer-lived
        program (``submit`` from Python) to restore."""
        from tuner_service.runners import TrialInterrupted

        def handler(signum: int, frame: Any) -> None:
            self.stop()
            loop = self.loop
            if loop is None or loop.current is None:
                return
            if _in_storage_call(frame):
                # Raising inside a database call would leave its connection mid-statement (and
                # the hand-back that follows on a broken pool): deliver the signal again shortly,
                # once the call has returned to the trial's own code.
                again = threading.Timer(0.05, os.kill, (os.getpid(), signum))
                again.daemon = True
                again.start()
                return
            # Raise into the trial only once: a terminal and a parent may both deliver SIGINT.
            loop.current = None
            raise TrialInterrupted(signal.Signals(signum).name)

        def drain(_signum: int, _frame: Any) -> None:
            self.stop()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, drain)
        return previous

    def run(self, on_trial_done: Callable[[str], None] | None = None) -> int:
        """Claim and run trials until none is left; returns how many this worker ran."""
        from tuner_service.dashboard import default_artifact_store

        runner = self.runner  # imports, user code and data first: a failure here must not strand a claimed trial
        self.loop = TrialLoop(
            self.study, runner, self._run_attrs, prune=self.prune, objective=self.spec.objective.name,
            options=LoopOptions(wait_for_others=self.options.slot is None, max_trials=self.options.max_trials,
                                memory_limit_mb=self.options.memory_limit_mb, poll=self.options.poll),
            stop_reason=self._stop_reason, artifact_store=default_artifact_store(self.url), on_trial_done=on_trial_done,
        )
        if self._stopped:
            return 0
        ran = self.loop.run()
        if ran:
            from tuner_service.notes import write_study_note

            write_study_note(self.study)  # the dashboard's study note: best so far (never raises)
        return ran

    def _stop_reason(self, attrs: dict[str, Any]) -> str | None:
        return study_mod.stop_reason(attrs, self.spec.budget.timeout)

    def _run_attrs(self) -> dict[str, Any]:
        runner = self.runner
        attrs = {
            A.HOST: socket.gethostname(),
            A.PID: os.getpid(),
            A.WORKER: self.options.index,
            A.DEVICE: runner.device,
            A.KERAS_BACKEND: runner.backend,
            A.STARTED_AT: round(time.time(), 3),
        }
        if self.options.slot is not None:
            attrs[A.SLOT] = self.options.slot
            attrs[A.CUDA_VISIBLE_DEVICES] = os.environ.get("CUDA_VISIBLE_DEVICES")
        return attrs


def _warm_runner(study_name: str, storage_url: str | None, options: WorkerOptions) -> Runner | None:
    """For ``submit --workers N``: build the runner from the submitted spec (``$TUNER_SERVICE_SPEC``)
    while submit checks the model, then wait until the study registered by that submission
    (``$TUNER_SERVICE_SUBMISSION``) exists; None if submit goes away first."""
    import json

    from tuner_service.queries import peek_study_attrs
    from tuner_service.runners import make_runner
    from tuner_service.runners._env import apply_speed, configure_threads
    from tuner_service.spec import StudySpec

    spec = StudySpec.model_validate(json.loads(os.environ["TUNER_SERVICE_SPEC"]))
    token = os.environ.get("TUNER_SERVICE_SUBMISSION")
    configure_threads(options.threads)
    apply_speed(spec.speed)
    runner = make_runner(spec)
    parent = os.getppid()
    while os.getppid() == parent:  # submit still there
        # Plain SQL: opening an Optuna storage would create its tables, racing submit's creation.
        attrs = peek_study_attrs(resolve_url(storage_url), study_name) or {}
        if attrs.get(A.SUBMISSION) == token and attrs.get(A.READY):
            return runner
        time.sleep(0.2)
    return None


def _standby(threads: int | None) -> tuple[str, int] | None:
    """``--standby``: import what every trial needs, say ``ready``, then wait for the study
    (module doc). None on EOF: the agent no longer needs this process."""
    import json

    from tuner_service.runners._env import configure_threads

    configure_threads(threads)
    import keras  # noqa: F401  (TensorFlow, or the configured backend, with it)

    import tuner_service.lifecycle  # noqa: F401
    import tuner_service.runners.keras  # noqa: F401

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # from now on stdout is the runner's log, as stderr
    line = sys.stdin.readline()
    if not line.strip():
        return None
    job = json.loads(line)
    return str(job["study"]), int(job["index"])


#: Exit codes of a worker process, read by the agent and ``submit --workers``.
EXIT_OK, EXIT_BAD_INPUT, EXIT_ABORTED, EXIT_OUTAGE, EXIT_REFUSED = 0, 2, 3, 4, 5


def main(argv: list[str] | None = None) -> int:
    """``python -m tuner_service.worker NAME [--storage URL] [--index I] [--threads T] ...``."""
    import argparse

    from tuner_service.runners._env import onednn_too_late, process_defaults, quiet_optuna
    from tuner_service.storage import mask_password

    process_defaults()  # our own process: TensorFlow's settings before it is imported
    quiet_optuna()
    p = argparse.ArgumentParser(prog="tuner_service.worker")
    p.add_argument("study", nargs="?")
    p.add_argument("--storage")
    p.add_argument("--index", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--max-trials", type=int)
    p.add_argument("--slot")
    p.add_argument("--memory-limit-mb", type=int)
    p.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)  # started by submit before the study exists
    p.add_argument("--standby", action="store_true", help=argparse.SUPPRESS)  # started by an agent: see _standby
    args = p.parse_args(argv)
    if args.study is None and not args.standby:
        p.error("the study name is required")
    try:
        if args.standby:
            job = _standby(args.threads)
            if job is None:
                return EXIT_OK
            args.study, args.index = job
        options = WorkerOptions(index=args.index, threads=args.threads, max_trials=args.max_trials, slot=args.slot,
                                memory_limit_mb=args.memory_limit_mb)
        runner = _warm_runner(args.study, args.storage, options) if args.warm else None
        if args.warm and runner is None:
            return EXIT_OK  # the submission never registered its study (its model check failed)
        worker = Worker(args.study, args.storage, options, runner=runner)
        onednn = onednn_too_late(worker.spec.speed) if args.standby else None
        if onednn is not None:  # a standby imported TensorFlow before it knew the study: start again
            os.environ["TF_ENABLE_ONEDNN_OPTS"] = onednn
            cold = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--standby"]
            sys.stdout.flush()
            os.execv(sys.executable, [sys.executable, "-m", "tuner_service.worker", args.study, "--index",
                                      str(args.index), *cold])
        worker.install_signal_handlers()
        worker.run()
    except (StorageOutage, StorageUnavailable) as exc:  # not the study's fault: try again later
        print(f"error: {mask_password(str(exc))}", flush=True)
        return EXIT_OUTAGE
    except (BadInput, StudyAborted, Refused) as exc:
        print(f"error: {mask_password(str(exc))}", flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
