"""BayesianSampler on real Optuna storages: optimisation quality, direction, mixed and conditional
spaces, the random start, and no duplicate points across concurrent workers."""

from __future__ import annotations

import math
import multiprocessing
import time
from typing import Any

import numpy as np
import optuna
import pytest
from conftest import rival_claims_the_same_point
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tuner_service import tuners
from tuner_service.errors import BadInput
from tuner_service.tuners._unique import Space
from tuner_service.tuners.bayesian import PROPOSAL_ATTR, BayesianSampler, log_expected_improvement

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _branin(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 10)
    y = trial.suggest_float("y", 0, 15)
    return (
        (y - 5.1 / (4 * math.pi**2) * x**2 + 5 / math.pi * x - 6) ** 2
        + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x)
        + 10
    )


def _best(sampler: optuna.samplers.BaseSampler, n_trials: int = 30) -> float:
    study = optuna.create_study(sampler=sampler)
    study.optimize(_branin, n_trials=n_trials)
    return study.best_value


@pytest.mark.parametrize("acquisition", ["ei", "ucb"])
def test_beats_random_search_on_branin(acquisition: str) -> None:
    seeds = range(3)
    bayes = sum(_best(BayesianSampler(seed=s, acquisition=acquisition)) for s in seeds) / 3
    rand = sum(_best(optuna.samplers.RandomSampler(seed=s)) for s in seeds) / 3
    assert bayes < rand
    assert bayes < 1.5  # global minimum 0.398; random search averages about 2 here


def test_log_expected_improvement_is_the_closed_form_and_finite_far_from_the_best() -> None:
    from scipy.stats import norm

    mean = np.array([-1.0, 0.0, 0.5, 2.0, 5.0])
    std = np.array([1.0, 0.5, 2.0, 1.0, 1.5])
    z = (0.0 - mean) / std
    exact = std * (z * norm.cdf(z) + norm.pdf(z))
    assert np.allclose(np.exp(log_expected_improvement(mean, std, 0.0)), exact, rtol=1e-9)
    # 40 and 400 standard deviations above the best: plain EI is 0 (or denormal), log EI finite and
    # still decreasing, so the optimiser has a slope to follow back towards the best.
    far = log_expected_improvement(np.array([40.0, 41.0, 400.0]), np.ones(3), 0.0)
    assert np.all(np.isfinite(far)) and far[0] > far[1] > far[2]
    assert abs(far[2] - (-0.5 * 400**2 - 0.5 * math.log(2 * math.pi) - 2 * math.log(400))) < 1e-3


def test_beta_means_keras_tuners_ucb_and_is_refused_with_ei() -> None:
    assert tuners.validate_options("bayesian", {})["acquisition"] == "ei"
    assert tuners.validate_options("bayesian", {"beta": 3.0})["acquisition"] == "ucb"
    # A study stored before "ei" existed has beta 2.6 and no acquisition: it resumes as it ran.
    assert tuners.validate_options("bayesian", {"alpha": 1e-4, "beta": 2.6})["acquisition"] == "ucb"
    with pytest.raises(BadInput, match="beta weighs the confidence bound of acquisition: ucb .*set acquisition: ucb"):
        tuners.validate_options("bayesian", {"acquisition": "ei", "beta": 3.0})
    assert BayesianSampler(beta=1.0)._acquisition_name == "ucb"
    with pytest.raises(ValueError, match="beta"):
        BayesianSampler(beta=1.0, acquisition="ei")


def test_maximize_is_the_mirror_of_minimize() -> None:
    low = optuna.create_study(sampler=BayesianSampler(seed=1))
    low.optimize(_branin, n_trials=15)
    high = optuna.create_study(direction="maximize", sampler=BayesianSampler(seed=1))
    high.optimize(lambda t: -_branin(t), n_trials=15)
    # The sampler negates maximised values, so it sees exactly the minimising run's data: the runs
    # coincide, and the maximising one ends where the minimiser found the lowest Branin value.
    assert [t.params for t in high.trials] == [t.params for t in low.trials]
    assert high.best_value == -low.best_value


def test_mixed_conditional_space_stays_in_distributions() -> None:
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        units = trial.suggest_int("units", 16, 256, step=16)
        drop = trial.suggest_float("dropout", 0.0, 0.5, step=0.1)
        layers = trial.suggest_int("layers", 1, 32, log=True)
        kind = trial.suggest_categorical("kind", ["dense", "conv", None])
        extra = trial.suggest_int("kernel", 1, 7, step=2) if kind == "conv" else 0
        return (
            (math.log10(lr) + 3) ** 2
            + (units - 128) ** 2 / 1e4
            + drop
            + layers / 32
            + (kind != "conv")
            + extra / 10
        )

    study = optuna.create_study(sampler=BayesianSampler(seed=3))
    study.optimize(objective, n_trials=25)
    trials = study.trials
    assert len(trials) == 25 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        for name, value in t.params.items():
            dist = t.distributions[name]
            assert dist._contains(dist.to_internal_repr(value)), (name, value)
        assert ("kernel" in t.params) == (t.params["kind"] == "conv")
    assert len({tuple(sorted(t.params.items(), key=str)) for t in trials}) == 25
    assert any(PROPOSAL_ATTR in t.system_attrs and t.system_attrs[PROPOSAL_ATTR] for t in trials[-5:])


@pytest.mark.parametrize(("acquisition", "num_initial_points", "expected"),
                         [("ei", 4, 4), ("ei", None, 10), ("ucb", None, 6)])
def test_random_start_before_the_gp(
    monkeypatch: pytest.MonkeyPatch, acquisition: str, num_initial_points: int | None, expected: int
) -> None:
    fitted: list[int] = []
    real_fit = BayesianSampler._fit_gp

    def spy(self: BayesianSampler, x: Any, y: Any) -> Any:
        fitted.append(len(y))
        return real_fit(self, x, y)

    monkeypatch.setattr(BayesianSampler, "_fit_gp", spy)
    sampler = BayesianSampler(num_initial_points=num_initial_points, seed=0, acquisition=acquisition)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_branin, n_trials=12)
    # Defaults: 10 as GPSampler (ei); keras-tuner's 3 x 2 dimensions (ucb). The GP is first fitted
    # on exactly that many trials.
    assert fitted == list(range(expected, 12))


def test_discrete_space_is_exhausted_before_repeating() -> None:
    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_int("a", 0, 2) + (trial.suggest_categorical("b", ["x", "y", "z"]) == "y")

    study = optuna.create_study(sampler=BayesianSampler(num_initial_points=2, seed=0))
    study.optimize(objective, n_trials=11)
    points = [(t.params["a"], t.params["b"]) for t in study.trials]
    assert len(set(points[:9])) == 9  # every point once; then random fallback, still valid
    assert len(points) == 11


def test_claim_written_at_the_same_instant_is_detected() -> None:
    """A rival worker claims the same point between our claim and our re-read: we must move on."""
    study = optuna.create_study(sampler=BayesianSampler(seed=0))
    study.enqueue_trial({"x": 0})
    study.optimize(lambda t: float(t.suggest_int("x", 0, 3)), n_trials=1)
    rival = study.ask()  # RUNNING, no params yet
    claims = rival_claims_the_same_point(study, rival, PROPOSAL_ATTR)
    trial = study.ask({"x": IntDistribution(0, 3)})
    assert claims and trial.params["x"] not in (0, claims[0]["x"])


def _worker(url: str, worker: int, n_trials: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.load_study(study_name="dedupe", storage=storage, sampler=BayesianSampler(seed=worker))
    space = {"x": IntDistribution(0, 5), "y": IntDistribution(0, 5)}
    for _ in range(n_trials):
        trial = study.ask(space)
        time.sleep(0.02)  # keep trials RUNNING a while so workers overlap
        study.tell(trial, (trial.params["x"] - 2) ** 2 + (trial.params["y"] - 3) ** 2)


def test_concurrent_processes_never_repeat_a_point(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    optuna.create_study(study_name="dedupe", storage=storage)
    ctx = multiprocessing.get_context("spawn")
    # Three processes: enough to race on every step, and light on a 2-core CI box (each imports sklearn).
    procs = [ctx.Process(target=_worker, args=(url, w, 10)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    trials = optuna.load_study(study_name="dedupe", storage=storage).trials
    points = [(t.params["x"], t.params["y"]) for t in trials]
    assert len(points) == 30 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len(set(points)) == 30, sorted(points)


def test_mixed_distribution_round_trip() -> None:
    space = Space(
        {
            "f": FloatDistribution(1e-4, 1.0, log=True),
            "s": FloatDistribution(0.0, 1.0, step=0.25),
            "i": IntDistribution(2, 64, log=True),
            "c": CategoricalDistribution([None, 1, "a"]),
        }
    )
    keys = space.decode(np.random.RandomState(0).uniform(size=(500, 4)))
    assert np.allclose(space.decode(space.encode(keys)), keys)  # bucket centres decode to themselves
    units = space.encode(keys)
    assert units.min() >= 0 and units.max() <= 1
    for row in keys:
        for name, value in space.values(tuple(row)).items():
            dist = space.dims[space.names.index(name)].dist
            assert dist._contains(dist.to_internal_repr(value))
