"""One storage suite, run on SQLite and on PostgreSQL (like Optuna's ``pytest_storages``).

The service's guarantees are storage properties: a budget of N enqueued trials is run
exactly N times however many processes claim at once, every fixed point runs once, a dead
worker's trial is failed and re-queued with the same parameters, and passwords never leak
into errors. Both backends must keep them, so every test here takes the ``storage_url``
fixture, which is a fresh SQLite file or a fresh PostgreSQL database.

No Keras here: workers are plain processes (fresh interpreters, see ``_mp_context``) that claim,
suggest and tell.
"""

from __future__ import annotations

import multiprocessing
import queue
import secrets
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from pg_server import PostgresServer, wait_for

from tuner_service import lifecycle
from tuner_service import study as study_mod
from tuner_service.errors import BadInput, StorageUnavailable
from tuner_service.lifecycle import claim, finish
from tuner_service.storage import mask_password, open_storage

WORKER_TIMEOUT = 90  # seconds; a hung worker fails the test instead of hanging the run


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh storage URL per test: a SQLite file, or a new database on the session server.

    ``getfixturevalue`` keeps the SQLite cases free of the PostgreSQL server.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/t.db"
    return str(request.getfixturevalue("pg_url"))


def _new_study(url: str, name: str = "s", **kwargs: Any) -> optuna.Study:
    return optuna.create_study(
        study_name=name, storage=open_storage(url, **kwargs),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )


# --------------------------------------------------------------------------- opening storage


def test_open_storage_creates_tables(storage_url: str) -> None:
    import sqlalchemy

    storage = open_storage(storage_url)
    tables = set(sqlalchemy.inspect(storage.engine).get_table_names())
    assert {"studies", "trials", "trial_params", "trial_heartbeats", "trial_system_attributes", "version_info"} <= tables
    optuna.create_study(study_name="s", storage=storage)
    # A second opening (another process, a read-only command) sees the same study.
    again = open_storage(storage_url, create=False)
    assert [s.study_name for s in again.get_all_studies()] == ["s"]


@pytest.mark.postgres
def test_wrong_password_is_masked(postgres_server: PostgresServer, pg_url: str) -> None:  # noqa: F811
    wrong = secrets.token_hex(12)
    url = pg_url.replace(f":{postgres_server.password}@", f":{wrong}@")
    with pytest.raises(StorageUnavailable) as info:
        open_storage(url)
    exc = info.value
    assert isinstance(exc, BadInput)  # the CLI prints it as one line, exit code 2
    text = "".join(traceback.format_exception(exc))
    for shown in (str(exc), repr(exc), text):
        assert wrong not in shown
        assert postgres_server.password not in shown
    assert "tuner:***@" in str(exc)
    assert "password authentication failed" in str(exc)


def test_unreachable_server_is_masked() -> None:
    """No server needed: a closed port fails to connect, and the message still hides the password."""
    secret = secrets.token_hex(12)
    with pytest.raises(StorageUnavailable) as info:
        open_storage(f"postgresql+psycopg://tuner:{secret}@127.0.0.1:1/tuner")
    shown = str(info.value) + repr(info.value) + "".join(traceback.format_exception(info.value))
    assert secret not in shown
    assert "postgresql+psycopg://tuner:***@127.0.0.1:1/tuner" in str(info.value)


def test_schemeless_url_with_password_is_masked() -> None:
    secret = secrets.token_hex(12)
    with pytest.raises(BadInput) as info:
        open_storage(f"tuner:{secret}@db.example/tuner")
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql+psycopg://tuner:s3cret@db:5432/tuner", "postgresql+psycopg://tuner:***@db:5432/tuner"),
        ("postgresql://tuner:pa:ss/wo%40rd@db/tuner", "postgresql://tuner:***@db/tuner"),
        ("mysql+pymysql://u:pw@h/db?charset=utf8mb4", "mysql+pymysql://u:***@h/db?charset=utf8mb4"),
        ("postgresql://:only-pw@db/tuner", "postgresql://:***@db/tuner"),
        ("postgresql://tuner@db/tuner", "postgresql://tuner@db/tuner"),  # no password: unchanged
        ("postgresql://db:5432/tuner", "postgresql://db:5432/tuner"),  # a port is not a password
        ("sqlite:///tuner.db", "sqlite:///tuner.db"),
        ("sqlite:////abs/path/t.db", "sqlite:////abs/path/t.db"),
        (
            "cannot open 'postgresql://a:x1@h1/d' nor 'postgresql://b:x2@h2/d'",
            "cannot open 'postgresql://a:***@h1/d' nor 'postgresql://b:***@h2/d'",
        ),
        ("url=postgresql+psycopg://tuner:pw@[::1]:5432/t\nnext", "url=postgresql+psycopg://tuner:***@[::1]:5432/t\nnext"),
    ],
)
def test_mask_password(text: str, expected: str) -> None:
    assert mask_password(text) == expected


# --------------------------------------------------------------------------- concurrent claims


def _claim_loop(url: str, study_name: str, high: int, barrier: Any, out: Any) -> None:
    """A minimal worker: claim, suggest ``p``, finish, until no WAITING trial is left.

    Reports ``(claimed [(number, p)], errors)``; any exception is an error the test counts.
    Runs in a fresh process (see ``_mp_context``), so it opens its own storage like a real worker.
    """
    claimed: list[tuple[int, int]] = []
    errors: list[str] = []
    try:
        storage = open_storage(url)
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
        barrier.wait(timeout=WORKER_TIMEOUT)  # start together: maximum contention
        for _ in range(10_000):  # a bound, should claim() never return None
            trial = claim(study)
            if trial is None:
                break
            p = trial.trial.suggest_int("p", 0, high)
            finish(study, trial, "COMPLETE", [float(p)])
            claimed.append((trial.number, p))
    except Exception:
        errors.append(traceback.format_exc())
    out.put((claimed, errors))


#: Imported once by the fork server, so each worker starts in milliseconds instead of paying
#: ~1 s of imports (6-8 workers per test on a 2-core CI box would otherwise dominate the run).
_PRELOAD = [
    __name__, "optuna", "tuner_service.lifecycle", "psycopg", "alembic",
    "sqlalchemy.dialects.postgresql.psycopg", "sqlalchemy.dialects.sqlite.pysqlite", "optuna.storages._rdb.models",
]


def _mp_context() -> multiprocessing.context.BaseContext:
    """Fresh worker processes: never a plain fork of this process.

    A forked child would inherit this process's pooled database connections (closing them in
    the child breaks them here) and threads. ``forkserver`` forks from a clean interpreter
    that only ran the imports above, so every worker still opens its own storage, like a
    real one; where it is not available, ``spawn``.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _run_workers(url: str, study_name: str, n: int, high: int) -> tuple[list[tuple[int, int]], list[str]]:
    ctx = _mp_context()
    out = ctx.Queue()
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_claim_loop, args=(url, study_name, high, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    claimed: list[tuple[int, int]] = []
    errors: list[str] = []
    deadline = time.monotonic() + WORKER_TIMEOUT
    try:
        for _ in procs:  # read before join: a full queue would block the child's exit
            got_claimed, got_errors = out.get(timeout=max(1.0, deadline - time.monotonic()))
            claimed += got_claimed
            errors += got_errors
    except queue.Empty:
        errors.append("a worker neither reported nor finished in time")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                errors.append(f"worker pid {p.pid} hung")
    return claimed, errors


def test_budget_is_exact_under_concurrent_claims(storage_url: str) -> None:
    study = _new_study(storage_url)
    study_mod.enqueue_slots(study, 60)

    claimed, errors = _run_workers(storage_url, "s", n=6, high=10**6)

    assert not errors, f"{len(errors)} worker error(s); the first:\n{errors[0]}"
    numbers = [n for n, _ in claimed]
    assert len(numbers) == 60
    assert len(set(numbers)) == 60, f"claimed twice: {[n for n, c in Counter(numbers).items() if c > 1]}"
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    assert states == {TrialState.COMPLETE: 60}
    assert {t.number for t in trials} == set(numbers)
    assert all(t.value == t.params["p"] for t in trials)
    counts = study_mod.Counts.of_trials(trials)
    assert (counts.complete, counts.waiting, counts.running, counts.budget_used) == (60, 0, 0, 60)


def test_fixed_points_run_exactly_once(storage_url: str) -> None:
    study = _new_study(storage_url)
    study_mod.enqueue_slots(study, 80, points=[{"p": k} for k in range(80)])

    claimed, errors = _run_workers(storage_url, "s", n=8, high=100)

    assert not errors, f"{len(errors)} worker error(s); the first:\n{errors[0]}"
    assert sorted(p for _, p in claimed) == list(range(80))
    trials = study.get_trials(deepcopy=False)
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 80}
    assert sorted(t.params["p"] for t in trials) == list(range(80))
    # Trial k was enqueued with point k: the point stayed with its trial.
    assert all(t.params["p"] == t.system_attrs["fixed_params"]["p"] for t in trials)


# --------------------------------------------------------------------------- heartbeat and retry


def test_stale_trial_is_failed_and_requeued(storage_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The grace period is what this test is about: 2 s instead of 20, and no start-up margin.
    from tuner_service.lifecycle import _transitions

    monkeypatch.setattr(_transitions, "HEARTBEAT_GRACE", 2)
    monkeypatch.setattr(_transitions, "LIVENESS_MARGIN", 0)
    study = _new_study(storage_url)
    study_mod.enqueue_slots(study, 1)
    budget = study_mod.Counts.of_trials(study.get_trials()).budget_used
    assert budget == 1

    claimed = claim(study)
    assert claimed is not None
    p = claimed.trial.suggest_int("p", 0, 1000)
    lifecycle.flush(claimed.trial)  # what a runner does once its model is built: the point is stored
    # Within the grace period the trial is alive.
    assert lifecycle.fail_stale(study) == []
    assert study._storage.get_trial(claimed.trial_id).state == TrialState.RUNNING

    # The worker "dies": no more beats. After the grace (SQLite stores whole seconds) it is stale.
    claimed.stop_heartbeat()

    def failed() -> bool:
        lifecycle.fail_stale(study)
        return study._storage.get_trial(claimed.trial_id).state == TrialState.FAIL

    assert wait_for(failed, timeout=15, interval=0.5)

    trials = study.get_trials(deepcopy=False)
    original = next(t for t in trials if t.number == claimed.number)
    assert original.user_attrs["fail_reason"].startswith("heartbeat stale")
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.params == {"p": p}
    assert retry.distributions == original.distributions
    assert retry.system_attrs["failed_trial"] == claimed.number
    assert retry.system_attrs["retry_history"] == [claimed.number]
    assert retry.system_attrs["crashes"] == 1 and retry.system_attrs["hand_backs"] == 0
    counts = study_mod.Counts.of_trials(trials)
    assert (counts.retried, counts.failed, counts.waiting, counts.running) == (1, 0, 1, 0)
    assert counts.budget_used == budget

    # The retry runs the same point and completes the budget.
    again = claim(study)
    assert again is not None and again.number == retry.number
    assert again.trial.suggest_int("p", 0, 1000) == p
    assert finish(study, again, "COMPLETE", [float(p)]) == "COMPLETE"
    counts = study_mod.Counts.of_trials(study.get_trials(deepcopy=False))
    assert (counts.complete, counts.retried, counts.waiting, counts.budget_used) == (1, 1, 0, budget)
    assert claim(study) is None


# --------------------------------------------------------------------------- server outage


@pytest.mark.postgres
def test_same_storage_survives_postgres_restart(postgres_server: PostgresServer, pg_url: str) -> None:  # noqa: F811
    storage = open_storage(pg_url)
    engine = storage.engine
    study = optuna.create_study(study_name="s", storage=storage)
    study_mod.enqueue_slots(study, 3)
    assert len(study.get_trials()) == 3  # the pool now holds connections to the old server

    # Restart while idle: the first use afterwards succeeds (pool_pre_ping replaces dead connections).
    postgres_server.restart()
    assert len(study.get_trials()) == 3
    trial = claim(study)
    assert trial is not None
    finish(study, trial, "COMPLETE", [1.0])

    # Used during an outage: calls fail (the worker's heartbeat thread logs and retries) ...
    postgres_server.stop()
    with pytest.raises(optuna.exceptions.StorageInternalError):
        study.get_trials()
    # ... and the same storage works again once the server is back.
    postgres_server.start()
    study_mod.enqueue_slots(study, 1)
    trial = claim(study)
    assert trial is not None
    finish(study, trial, "COMPLETE", [2.0])
    assert storage.engine is engine
    reloaded = optuna.load_study(study_name="s", storage=open_storage(pg_url))
    counts = study_mod.Counts.of_trials(reloaded.get_trials())
    assert (counts.complete, counts.waiting, counts.running, counts.budget_used) == (2, 2, 0, 4)


def test_missing_postgres_binaries_fail_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """No server installed must read as "install it" (the fixture then fails, never skips)."""
    import pg_server

    monkeypatch.delenv("TUNER_TEST_PG_BIN", raising=False)
    monkeypatch.setattr(pg_server.glob, "glob", lambda _pattern: [])
    monkeypatch.setattr(pg_server.shutil, "which", lambda _name: None)
    with pytest.raises(pg_server.PostgresUnavailable, match=r"\.ci/run installs the postgresql package"):
        pg_server.find_pg_bin()
