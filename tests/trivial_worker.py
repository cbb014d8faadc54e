"""A Keras-free worker for storage stress tests: claim -> suggest -> report -> tell, in a loop.

Usage: python trivial_worker.py URL STUDY [--print-done]
Prints one JSON line at the end: {"ran": [...], "errors": [...]} (with --print-done, also a
"done N" line after every committed result, flushed, for crash-durability tests).
"""

from __future__ import annotations

import json
import os
import sys

import optuna

from tuner_service.storage import open_storage, with_storage_retry
from tuner_service.worker import claim


def main() -> None:
    url, name = sys.argv[1], sys.argv[2]
    print_done = "--print-done" in sys.argv
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    ran: list[int] = []
    errors: list[str] = []
    while True:
        try:
            trial = with_storage_retry(claim, study, what="claim")
            if trial is None:
                break
            p = trial.suggest_int("p", 0, 10**6)
            trial.report(float(p), 1)
            with_storage_retry(study.tell, trial, float(p), what="tell")
            ran.append(trial.number)
            if print_done:
                print(f"done {trial.number} {p}", flush=True)
        except Exception as exc:  # counted: the test asserts there are none
            errors.append(f"{type(exc).__name__}: {exc}")
            if len(errors) > 20:
                break
    print(json.dumps({"ran": ran, "errors": errors, "pid": os.getpid()}), flush=True)


if __name__ == "__main__":
    main()
