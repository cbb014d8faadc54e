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


def test_a_signal_during_a_storage_call_interrupts_the_trial_after_the_call(tmp_path):
    """SIGTERM hands the running trial back by raising into it; arriving while the trial's code
    is inside a database call (here: storing its parameters), it waits until the call returns,
    so the connection is never left mid-statement for the hand-back that follows."""
    import signal
    import time

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from tuner_service.lifecycle import flush
    from tuner_service.runners import Outcome
    from tuner_service.spec import StudySpec
    from tuner_service.worker import Worker, WorkerOptions

    url = f"sqlite:///{tmp_path / 's.db'}"
    from conftest import MODELS

    spec = StudySpec.model_validate({"name": "s", "model": f"{MODELS / 'tiny.py'}:build_model", "tuner": "random",
                                     "budget": {"max_trials": 1}})
    study_mod.create(spec, open_storage(url))
    seen: dict[str, bool] = {}

    class Runner:
        backend, device = "none", "cpu"

        def preflight(self):
            return {}

        def run(self, trial, *, prune):
            trial.suggest_int("x", 0, 9)
            fired = []

            def in_call(*_args):
                if not fired:
                    fired.append(1)
                    signal.raise_signal(signal.SIGTERM)

            event.listen(Engine, "before_cursor_execute", in_call)
            try:
                flush(trial)  # stores the parameters: the signal arrives inside this call
                seen["stored"] = True
                time.sleep(5)  # the trial's own code: here the interrupt lands
                seen["slept"] = True
            finally:
                event.remove(Engine, "before_cursor_execute", in_call)
            return Outcome([1.0], False, {}, {})

    worker = Worker("s", url, WorkerOptions(index=1), runner=Runner())
    previous = worker.install_signal_handlers()
    try:
        worker.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert seen == {"stored": True}
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=open_storage(url)).trials]
    assert states == ["FAIL", "WAITING"]  # handed back: failed and re-queued in one transaction
