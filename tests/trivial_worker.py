"""A Keras-free worker for storage stress tests: claim -> suggest -> report -> finish, in a loop,
through the service's trial lifecycle (:mod:`tuner_service.lifecycle`).

Usage: python trivial_worker.py URL STUDY [--print-done]
Prints one JSON line at the end: {"ran": [...], "errors": [...]} (with --print-done, also a
"done N" line after every committed result, flushed, for crash-durability tests).
"""

from __future__ import annotations

import json
import os
import sys

import optuna

from tuner_service.lifecycle import claim, finish
from tuner_service.storage import open_storage, with_storage_retry


def main() -> None:
    url, name = sys.argv[1], sys.argv[2]
    print_done = "--print-done" in sys.argv
    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    ran: list[int] = []
    errors: list[str] = []
    while True:
        try:
            claimed = with_storage_retry(claim, study, what="claim")
            if claimed is None:
                break
            p = claimed.trial.suggest_int("p", 0, 10**6)
            claimed.trial.report(float(p), 1)
            finish(study, claimed, "COMPLETE", [float(p)])
            ran.append(claimed.number)
            if print_done:
                print(f"done {claimed.number} {p}", flush=True)
        except Exception as exc:  # counted: the test asserts there are none
            errors.append(f"{type(exc).__name__}: {exc}")
            if len(errors) > 20:
                break
    print(json.dumps({"ran": ran, "errors": errors, "pid": os.getpid()}), flush=True)


if __name__ == "__main__":
    main()
