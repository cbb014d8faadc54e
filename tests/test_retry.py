"""Retries of dead runs: same parameters, a bounded chain, and the reason recorded."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tuner_service.lifecycle import claim, flush, requeue
from tuner_service.storage import open_storage
from tuner_service.study import Counts, add_budget


def test_a_trial_that_keeps_dying_is_retried_three_times_then_stays_failed(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    study = optuna.create_study(study_name="r", storage=storage)
    add_budget(storage, study._study_id, 1)
    claimed = claim(study)
    trial = claimed.trial
    params = {"x": trial.suggest_float("x", 0, 1), "n": trial.suggest_int("n", 1, 9)}
    flush(trial)  # what a runner does once the model is built: the point is stored
    results = []
    for _ in range(4):
        claimed.stop_heartbeat()
        results.append(requeue(study, claimed.trial_id, kind="crash", reason="runner process died"))
        claimed = claim(study)
        if claimed is None:
            break
        assert claimed.trial.params == params, "a retry runs the same point"
    assert results == ["REQUEUED"] * 3 + ["GAVE_UP"]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 4 and claim(study) is None
    assert trials[-1].user_attrs["fail_reason"] == "runner process died; gave up after 3 retries"
    assert all(t.user_attrs["fail_reason"] == "runner process died" for t in trials[:-1])
    assert trials[-1].system_attrs["retry_history"] == [0, 1, 2]
    counts = Counts.of_trials(trials)
    assert (counts.failed, counts.retried, counts.budget_used) == (1, 3, 1)  # one slot, spent once
    assert counts.failures == [(3, "runner process died; gave up after 3 retries")]


def test_hand_backs_do_not_use_up_crash_retries(tmp_path):
    """Issue 12.1: three hand-backs, then a crash: the trial is still retried; crashes alone give up."""
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}")
    study = optuna.create_study(study_name="h", storage=storage)
    add_budget(storage, study._study_id, 1)
    claimed = claim(study)
    x = claimed.trial.suggest_float("x", 0, 1)
    flush(claimed.trial)
    for kind in ["hand_back"] * 3 + ["crash"] * 3:
        claimed.stop_heartbeat()
        assert requeue(study, claimed.trial_id, kind=kind, reason=f"{kind} test") == "REQUEUED"
        claimed = claim(study)
        assert claimed.trial.params == {"x": x}
    system = study._storage.get_trial(claimed.trial_id).system_attrs
    assert (system["hand_backs"], system["crashes"]) == (3, 3)
    claimed.stop_heartbeat()
    assert requeue(study, claimed.trial_id, kind="crash", reason="crash test") == "GAVE_UP"


def test_every_worker_index_gives_a_valid_sampler_seed():
    """Agent runners and `tuner-service worker` derive large stream indexes (crc32-based)."""
    from tuner_service.spec import StudySpec
    from tuner_service.tuners import make

    for tuner in ("tpe", "bayesian", "hyperband", "random"):
        spec = StudySpec.model_validate({"name": "s", "model": "m.py:f", "tuner": tuner, "seed": 2**31})
        for worker in (0, 1, 1_000_002):
            sampler, _ = make(spec, worker=worker)
            study = optuna.create_study(sampler=sampler)
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)


def test_a_database_blip_while_build_model_draws_a_parameter_is_retried():
    """A PostgreSQL restart while ``hp.Int`` stores its value must not fail the trial as the
    user's error (it did, in CI: "build_model raised StorageInternalError")."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError

    from tuner_service.hp import TrialHyperParameters

    class Flaky(optuna.storages.InMemoryStorage):
        failures = 2

        def set_trial_param(self, *args, **kwargs):
            if self.failures:
                self.failures -= 1
                # What Optuna's RDBStorage raises: its error, chained to the driver's.
                cause = OperationalError("INSERT", None, Exception("server closed the connection unexpectedly"))
                raise StorageInternalError("An exception is raised during the commit.") from cause
            return super().set_trial_param(*args, **kwargs)

    storage = Flaky()
    study = optuna.create_study(storage=storage)
    hp = TrialHyperParameters(study.ask())
    units = hp.Int("units", 8, 64, step=8)
    assert storage.failures == 0
    assert study.trials[0].params == {"units": units} and hp.values == {"units": units}


def test_after_an_outage_the_liveness_margin_counts_from_the_attempt_that_succeeds():
    """Issue 12.4: a driver retrying with backoff (up to 10 s between attempts) saw its last
    failure up to 10 s before the database came back; a stale check inside the attempt that
    succeeded then judged at once, before the live runs' heartbeats resumed (a PostgreSQL
    outage test failed a live trial that way). The margin counts from that attempt."""
    from sqlalchemy.exc import OperationalError

    from tuner_service.lifecycle import healthy_for
    from tuner_service.storage import with_storage_retry

    failures, seen = [2], []

    def call():
        if failures[0]:
            failures[0] -= 1
            raise OperationalError("SELECT", None, ConnectionRefusedError("connection refused"))
        seen.append(healthy_for())  # what fail_stale would check here
        return "ok"

    assert with_storage_retry(call, what="a test") == "ok"
    assert seen[0] < 0.3, f"healthy for {seen[0]:.2f} s inside the first attempt that worked"
