"""Retries of dead runs: same parameters, a bounded chain, and the reason recorded."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tuner_service.retry import fail_and_requeue
from tuner_service.storage import add_budget, open_storage
from tuner_service.study import Counts
from tuner_service.worker import claim


def test_a_trial_that_keeps_dying_is_retried_three_times_then_stays_failed(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'r.db'}", heartbeat=True)
    study = optuna.create_study(study_name="r", storage=storage)
    add_budget(storage, study._study_id, 1)
    trial = claim(study)
    params = {"x": trial.suggest_float("x", 0, 1), "n": trial.suggest_int("n", 1, 9)}
    for _ in range(4):
        fail_and_requeue(study, trial._trial_id, reason="runner process died", max_retry=3)
        trial = claim(study)
        if trial is None:
            break
        assert trial.params == params, "a retry runs the same point"
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 4 and claim(study) is None
    assert trials[-1].user_attrs["fail_reason"] == "runner process died; gave up after 3 retries"
    assert all(t.user_attrs["fail_reason"] == "runner process died" for t in trials[:-1])
    assert trials[-1].system_attrs["retry_history"] == [0, 1, 2]
    counts = Counts.of(trials)
    assert (counts.failed, counts.retried, counts.budget_used) == (1, 3, 1)  # one slot, spent once


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

    from tuner_service.hp import TrialHyperParameters

    class Flaky(optuna.storages.InMemoryStorage):
        failures = 2

        def set_trial_param(self, *args, **kwargs):
            if self.failures:
                self.failures -= 1
                raise StorageInternalError("server closed the connection unexpectedly")
            return super().set_trial_param(*args, **kwargs)

    storage = Flaky()
    study = optuna.create_study(storage=storage)
    hp = TrialHyperParameters(study.ask())
    units = hp.Int("units", 8, 64, step=8)
    assert storage.failures == 0
    assert study.trials[0].params == {"units": units} and hp.values == {"units": units}
