"""The lifecycle's own contracts that need no process: what a claim hands back."""

from __future__ import annotations

import optuna

from tuner_service import study as study_mod
from tuner_service.lifecycle import claim, finish
from tuner_service.storage import open_storage


def test_a_claimed_trial_is_what_optuna_would_build(tmp_path):
    """The claim builds the ``optuna.Trial`` from the record it already holds instead of reading
    it back; it must equal Optuna's own construction (this fails when an Optuna release changes
    ``Trial.__init__``), for a budget slot and for an enqueued point."""
    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    study = optuna.create_study(study_name="c", storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))
    study_mod.enqueue_slots(study, 1, [{"x": 3}])
    study_mod.add_budget(storage, study._study_id, 1)
    for _ in range(2):
        claimed = claim(study, {"host": "h", "pid": 1})
        ours = claimed.trial
        theirs = optuna.Trial(study, claimed.trial_id)
        assert set(vars(ours)) == set(vars(theirs))
        for key in ("_trial_id", "relative_search_space", "_relative_params", "_fixed_params"):
            assert getattr(ours, key) == getattr(theirs, key), key
        a, b = ours._cached_frozen_trial, theirs._cached_frozen_trial
        for key in ("number", "state", "params", "distributions", "user_attrs", "system_attrs", "datetime_start",
                    "intermediate_values"):
            assert getattr(a, key) == getattr(b, key), key
        x = ours.suggest_int("x", 0, 9)
        finish(study, claimed, "COMPLETE", [float(x)])
    assert [t.params["x"] for t in study.trials][0] == 3  # the enqueued point ran first
