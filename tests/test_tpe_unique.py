"""The ``tpe`` tuner's UniqueSampler (TPE wrapped in the claims of tuners/_unique.py): no repeated
parameter sets until the space is exhausted, sequentially and across concurrent workers; continuous
spaces and seeded single workers behave as plain TPE."""

from __future__ import annotations

import math
import threading
import time
import warnings
from typing import Any

import optuna
from conftest import rival_claims_the_same_point
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from tuner_service.spec import StudySpec
from tuner_service.tuners import make
from tuner_service.tuners._unique import PROPOSAL_ATTR, Space, UniqueSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's ``group``


def _tpe(seed: int, n_startup_trials: int = 4) -> optuna.samplers.TPESampler:
    # The tpe tuner's settings (tuner_service/tuners/__init__.py).
    return optuna.samplers.TPESampler(
        n_startup_trials=n_startup_trials, multivariate=True, group=True, constant_liar=True, seed=seed
    )


def _discrete(trial: optuna.Trial) -> float:
    a = trial.suggest_int("a", 0, 3)
    b = trial.suggest_categorical("b", ["x", "y", "z"])
    c = trial.suggest_int("c", 0, 4, step=2)
    return (a - 1) ** 2 + (b == "y") + c / 4  # 36 points, one optimum: TPE keeps proposing it


def _points(study: optuna.Study) -> list[tuple[Any, ...]]:
    return [tuple(sorted(t.params.items())) for t in study.trials]


def test_sequential_discrete_space_is_exhausted_before_repeating() -> None:
    plain = optuna.create_study(sampler=_tpe(0))
    plain.optimize(_discrete, n_trials=36)
    assert len(set(_points(plain))) < 36  # plain TPE repeats itself here (the point of the wrapper)
    study = optuna.create_study(sampler=UniqueSampler(_tpe(0), seed=0))
    study.optimize(_discrete, n_trials=40)
    points = _points(study)
    assert len(set(points[:36])) == 36  # every point once; then what TPE gives, still valid
    assert len(points) == 40 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert study.best_value == 0.0
    assert any(t.system_attrs.get(PROPOSAL_ATTR) for t in study.trials[4:])  # claimed TPE points


def test_seeded_single_worker_is_deterministic() -> None:
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=UniqueSampler(_tpe(7), seed=7))
        study.optimize(_discrete, n_trials=20)
        runs.append(_points(study))
    assert runs[0] == runs[1]


def test_continuous_space_passes_through_unchanged() -> None:
    def branin(trial: optuna.Trial) -> float:
        x, y = trial.suggest_float("x", -5, 10), trial.suggest_float("y", 0, 15)
        b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
        return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10

    plain = optuna.create_study(sampler=_tpe(3))
    plain.optimize(branin, n_trials=25)
    wrapped = optuna.create_study(sampler=UniqueSampler(_tpe(3), seed=3))
    wrapped.optimize(branin, n_trials=25)
    assert _points(wrapped) == _points(plain)  # exactly TPE's suggestions
    assert not any(t.system_attrs.get(PROPOSAL_ATTR) for t in wrapped.trials)  # and no claims written


def test_conditional_space_stays_valid() -> None:
    def objective(trial: optuna.Trial) -> float:
        if trial.suggest_categorical("kind", ["a", "b"]) == "a":
            return trial.suggest_int("x", 0, 9)
        return 10 + trial.suggest_int("y", 0, 9)

    study = optuna.create_study(sampler=UniqueSampler(_tpe(1, n_startup_trials=3), seed=1))
    study.optimize(objective, n_trials=14)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    for t in study.trials:
        assert ("x" in t.params) == (t.params["kind"] == "a") and ("y" in t.params) == (t.params["kind"] == "b")
    assert len(set(_points(study))) == 14


def test_claim_written_at_the_same_instant_is_detected() -> None:
    """A rival worker claims the same point between our claim and our re-read: we must move on."""
    space = {"a": IntDistribution(0, 3), "b": CategoricalDistribution(["x", "y"])}
    study = optuna.create_study(sampler=UniqueSampler(_tpe(0, n_startup_trials=2), seed=0))
    for a, b in ((0, "x"), (1, "y")):
        study.enqueue_trial({"a": a, "b": b})
        trial = study.ask(space)
        study.tell(trial, float(a))
    rival = study.ask()  # RUNNING, no params yet
    claims = rival_claims_the_same_point(study, rival, PROPOSAL_ATTR)
    trial = study.ask(space)
    point = (trial.params["a"], trial.params["b"])
    assert claims and point not in ((0, "x"), (1, "y"), (claims[0]["a"], claims[0]["b"]))


def test_nearest_free_point_in_a_space_too_large_to_enumerate() -> None:
    sampler = UniqueSampler(_tpe(0), seed=0)
    space = Space({n: IntDistribution(0, 19) for n in "abc"})  # 8000 points: random moves, not a grid
    key = (5.0, 5.0, 5.0)
    taken = {key} | {(5.0, 5.0, float(v)) for v in range(20)}
    moved = sampler._nearest_free(space, key, taken, 1)
    assert moved is not None and moved not in taken and sum(m != k for m, k in zip(moved, key)) <= 2
    small = Space({"a": IntDistribution(0, 9), "b": CategoricalDistribution(["x", "y"])})
    near = sampler._nearest_free(small, (4.0, 0.0), {(4.0, 0.0)}, 1)
    assert near in {(3.0, 0.0), (5.0, 0.0)}  # one step along the integer beats changing the category
    everything = {(float(a), float(b)) for a in range(10) for b in (0, 1)}
    assert sampler._nearest_free(small, (4.0, 0.0), everything, 1) is None


def test_concurrent_workers_never_repeat_a_point(tmp_path: Any) -> None:
    """Workers (threads, one storage connection and one seeded sampler each, as the tpe tuner
    builds them) race on one SQLite study of 36 points; TPE alone repeats its favourite."""
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="dedupe", storage=url)
    spec = StudySpec.model_validate(
        {"name": "dedupe", "model": "m.py:build", "data": {"source": "sklearn:digits"}, "objective": "val_loss",
         "tuner": {"name": "tpe", "options": {"n_startup_trials": 4}}, "seed": 0}
    )
    errors: list[BaseException] = []
    workers = 4

    def worker(index: int) -> None:
        try:
            sampler = make(spec, worker=index)[0]
            assert isinstance(sampler, UniqueSampler)
            storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
            study = optuna.load_study(study_name="dedupe", storage=storage, sampler=sampler)
            for _ in range(7):
                trial = study.ask()
                value = _discrete(trial)
                time.sleep(0.01)  # keep trials RUNNING a while so workers overlap
                study.tell(trial, value)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    trials = optuna.load_study(study_name="dedupe", storage=url).trials
    points = [tuple(sorted(t.params.items())) for t in trials]
    assert len(points) == 7 * workers and all(t.state == TrialState.COMPLETE for t in trials)
    assert len(set(points)) == len(points), sorted(points)
