"""A real ``tuner_service.worker.Worker`` (claim loop, signal handling, the lifecycle) with a
Keras-free runner, for the fault-injection tests: they need hundreds of trials across dozens of
processes, and Keras' start-up would cost seconds each. Faults are armed by the tests through
``TUNER_SERVICE_FAILPOINTS`` in this process's environment.

Usage:
  python lifecycle_harness.py work URL STUDY      run trials until none is left (a worker)
  python lifecycle_harness.py reap URL STUDY PID  the agent's reaper for a dead runner PID
  python lifecycle_harness.py stale URL STUDY     one stale-heartbeat check (any driver's)

The fake runner: draws ``x``, reports ``HARNESS_EPOCHS`` epochs (sleeping ``HARNESS_SLEEP`` s
each), returns ``x``; a trial whose ``x`` is ``HARNESS_FAIL_X`` raises a TrialError (the model's
fault), in whichever process runs it. It prints "started <number>" when a trial starts.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tuner_service.errors import TrialError
from tuner_service.lifecycle import flush
from tuner_service.runners import Outcome


class FakeRunner:
    backend, device = "none", "cpu"

    def preflight(self) -> dict[str, Any]:
        return {}

    def run(self, trial: Any, *, prune: bool) -> Outcome:
        print(f"started {trial.number}", flush=True)
        x = trial.suggest_int("x", 0, 2 * 10**6)
        flush(trial)  # a runner's word that the model is built: its parameters are stored
        epochs = int(os.environ.get("HARNESS_EPOCHS", "2"))
        for epoch in range(1, epochs + 1):
            time.sleep(float(os.environ.get("HARNESS_SLEEP", "0")))
            if str(x) == os.environ.get("HARNESS_FAIL_X"):
                raise TrialError("the fake model raised ValueError: bad shape")
            trial.report(float(x), epoch)
        return Outcome([float(x)], False, {"best_epoch": epochs, "epochs_run": epochs}, {"history": {"x": [x] * epochs}})


def main() -> int:
    command, url, name = sys.argv[1:4]
    if command == "work":
        from tuner_service.worker import Worker, WorkerOptions

        worker = Worker(name, url, WorkerOptions(index=os.getpid()), runner=FakeRunner())
        worker.install_signal_handlers()
        worker.run()
        return 0
    import optuna

    from tuner_service.storage import open_storage

    storage = open_storage(url)
    if command == "reap":
        from tuner_service.agent import Agent

        Agent(url, []).requeue_trials_of(int(sys.argv[4]), name, "runner process died (exit -9)")
        return 0
    if command == "stale":
        from tuner_service import lifecycle
        from tuner_service.lifecycle import _transitions

        study = optuna.load_study(study_name=name, storage=storage)
        # A process that just started judges no heartbeat until its own access has been healthy
        # for the liveness margin (it may have just come out of an outage): wait that long.
        time.sleep(max(0.0, _transitions.LIVENESS_MARGIN - lifecycle.healthy_for()))
        print(lifecycle.fail_stale(study), flush=True)
        return 0
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    raise SystemExit(main())
