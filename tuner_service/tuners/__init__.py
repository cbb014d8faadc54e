"""Tuners by name: each maps a study spec to an Optuna sampler and pruner.

A tuner is one small entry in :data:`TUNERS`: a pydantic model of its options (unknown
options are rejected with the list of valid ones) and a factory. Factories import Optuna (and
anything heavier) lazily, so validating a spec stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from tuner_service.errors import BadInput

if TYPE_CHECKING:
    import optuna

    from tuner_service.spec import StudySpec


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RandomOptions(_Options):
    pass


class TPEOptions(_Options):
    n_startup_trials: int = Field(10, ge=0)
    multivariate: bool = True
    constant_liar: bool = True


class HyperbandOptions(_Options):
    factor: int = Field(3, ge=2)
    min_epochs: int = Field(1, ge=1)
    hyperband_iterations: int = Field(1, ge=1)
    sampler: Literal["random", "tpe"] = "random"


class BOHBOptions(_Options):
    factor: int = Field(3, ge=2)
    min_epochs: int = Field(1, ge=1)
    hyperband_iterations: int = Field(1, ge=1)
    n_startup_trials: int = Field(10, ge=0)


class NSGA2Options(_Options):
    population_size: int = Field(50, ge=2)
    mutation_prob: float | None = Field(None, ge=0, le=1)
    crossover_prob: float = Field(0.9, ge=0, le=1)


def bayesian_acquisition(acquisition: str | None, beta: float | None) -> str:
    """The acquisition a ``bayesian`` tuner runs: the one given, else ``ucb`` when ``beta`` is
    given (it weighs ucb's confidence bound; studies stored before ``ei`` existed have beta 2.6 and
    ran ucb), else ``ei``. ValueError for ``beta`` with another acquisition. Shared by the study
    file's options and :class:`~tuner_service.tuners.bayesian.BayesianSampler`."""
    chosen = acquisition or ("ucb" if beta is not None else "ei")
    if beta is not None and chosen != "ucb":
        raise ValueError("beta weighs the confidence bound of acquisition: ucb (keras-tuner's); "
                         "set acquisition: ucb or remove beta")
    return chosen


class BayesianOptions(_Options):
    num_initial_points: int | None = Field(None, ge=1, description="default: 10 (ei), 3 x hyperparameters (ucb)")
    alpha: float = Field(1e-4, gt=0)
    acquisition: Literal["ei", "ucb"] = Field("ei", description="default: ucb when beta is given, else ei")
    beta: float | None = Field(None, ge=0, description="ucb's exploration weight; default 2.6 (keras-tuner's)")

    @model_validator(mode="before")
    @classmethod
    def _default_acquisition(cls, data: Any) -> Any:
        if isinstance(data, dict) and "acquisition" not in data:  # stored explicitly: what the study runs
            return {**data, "acquisition": bayesian_acquisition(None, data.get("beta"))}
        return data

    @field_validator("beta")
    @classmethod
    def _beta_needs_ucb(cls, beta: float | None, info: ValidationInfo) -> float | None:
        bayesian_acquisition(info.data.get("acquisition", "invalid"), beta)
        return beta


@dataclass(frozen=True)
class Tuner:
    """A search strategy: its options, its sampler/pruner, and an optional submit hook.

    ``prepare``: ``"module:function"`` of a ``prepare(spec) -> (runner or None, extra study
    attrs, points or None)`` that replaces the default submit-time check (and may fix the
    points to enqueue), imported only when a study of this tuner is submitted (it may import
    Keras; this package does not).
    """

    options: type[_Options]
    build: Callable[[StudySpec, int], tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]]
    summary: str
    prepare: str | None = None
    #: How many objectives it optimises: 1, or None for any number (a Pareto front).
    max_objectives: int | None = None


def _random(spec: StudySpec, worker: int) -> tuple[Any, Any]:
    import optuna

    return TrialSeededRandomSampler(spec.seed), optuna.pruners.NopPruner()


def _tpe_sampler(spec: StudySpec, worker: int, **overrides: Any) -> Any:
    import optuna

    known = {k: v for k, v in spec.tuner.options.items() if k in TPEOptions.model_fields}
    o = TPEOptions(**{**known, **overrides})
    return optuna.samplers.TPESampler(
        n_startup_trials=o.n_startup_trials,
        multivariate=o.multivariate,
        group=o.multivariate,  # conditional spaces (layers that exist only for some trials)
        constant_liar=o.constant_liar,
        seed=(spec.seed + 7919 * worker) % 2**32,  # distinct streams per worker, reproducible per study
    )


def _unique_tpe(spec: StudySpec, worker: int, **tpe: Any) -> Any:
    """The service's TPE: no trial repeats another's parameter set while unseen points exist
    (parallel workers included; see ``tuners/_unique.py``)."""
    from tuner_service.tuners._unique import UniqueSampler

    return UniqueSampler(_tpe_sampler(spec, worker, **tpe), seed=(spec.seed + 7919 * worker) % 2**32)


def _tpe(spec: StudySpec, worker: int) -> tuple[Any, Any]:
    import optuna

    return _unique_tpe(spec, worker), optuna.pruners.NopPruner()


def _hyperband_pruner(spec: StudySpec, factor: int, min_epochs: int) -> Any:
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=min_epochs, max_resource=spec.budget.max_epochs or spec.epochs,
                                          reduction_factor=factor)


def _hyperband(spec: StudySpec, worker: int) -> tuple[Any, Any]:
    o = HyperbandOptions(**spec.tuner.options)
    sampler = _unique_tpe(spec, worker) if o.sampler == "tpe" else TrialSeededRandomSampler(spec.seed)
    return sampler, _hyperband_pruner(spec, o.factor, o.min_epochs)


def _bohb(spec: StudySpec, worker: int) -> tuple[Any, Any]:
    """BOHB (Falkner et al. 2018) as Optuna builds it: Hyperband's early stopping with a TPE
    model of where good configurations are, here the service's TPE (unique across workers)."""
    o = BOHBOptions(**spec.tuner.options)
    sampler = _unique_tpe(spec, worker, n_startup_trials=o.n_startup_trials)
    return sampler, _hyperband_pruner(spec, o.factor, o.min_epochs)


def _nsga2(spec: StudySpec, worker: int) -> tuple[Any, Any]:
    import optuna

    o = NSGA2Options(**spec.tuner.options)
    sampler = optuna.samplers.NSGAIISampler(
        population_size=o.population_size, mutation_prob=o.mutation_prob, crossover_prob=o.crossover_prob,
        seed=(spec.seed + 7919 * worker) % 2**32,
    )
    return sampler, optuna.pruners.NopPruner()


def _bayesian(spec: StudySpec, worker: int) -> tuple[Any, Any]:
    import optuna

    from tuner_service.tuners.bayesian import BayesianSampler

    o = BayesianOptions(**spec.tuner.options)
    sampler = BayesianSampler(
        num_initial_points=o.num_initial_points, alpha=o.alpha, beta=o.beta, acquisition=o.acquisition,
        seed=(spec.seed + 7919 * worker) % 2**32,
    )
    return sampler, optuna.pruners.NopPruner()


TUNERS: dict[str, Tuner] = {
    "random": Tuner(RandomOptions, _random, "random search (Optuna RandomSampler)"),
    "tpe": Tuner(TPEOptions, _tpe, "Tree-structured Parzen Estimator (multi-objective: MOTPE), multivariate, "
                                   "constant liar, unique points"),
    "hyperband": Tuner(HyperbandOptions, _hyperband, "Hyperband pruning with epochs as the resource",
                       max_objectives=1),
    "bohb": Tuner(BOHBOptions, _bohb, "Hyperband pruning + the service's TPE (BOHB)", max_objectives=1),
    "bayesian": Tuner(BayesianOptions, _bayesian, "Gaussian-process Bayesian optimisation: log EI on an ARD GP, "
                                                   "or keras-tuner's UCB",
                      max_objectives=1),
    "nsga2": Tuner(NSGA2Options, _nsga2, "NSGA-II genetic search for Pareto fronts (constraint-aware)"),
}


def register(name: str, tuner: Tuner) -> None:
    """Add a tuner (used by the grid tuner module)."""
    TUNERS[name] = tuner


def get(name: str) -> Tuner:
    _load_plugins()
    if name not in TUNERS:
        raise BadInput(f"unknown tuner {name!r}; valid tuners: {', '.join(sorted(TUNERS))}")
    return TUNERS[name]


def _load_plugins() -> None:
    try:
        import tuner_service.tuners.grid  # noqa: F401  (registers "grid")
    except ImportError:
        pass


def validate_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    tuner = get(name)
    try:
        return tuner.options(**options).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = ", ".join(tuner.options.model_fields) or "none"
            raise BadInput(f"tuner {name!r} has no option {field!r}; valid options: {valid}") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise BadInput(f"tuner {name!r} option {field}: {msg} (got {err.get('input')!r})") from None


def make(spec: StudySpec, worker: int = 0) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    return get(spec.tuner.name).build(spec, worker)


def planned_trials(spec: StudySpec) -> int:
    """The study's trial budget; Hyperband without max_trials runs keras-tuner's count."""
    if spec.budget.max_trials is not None:
        return spec.budget.max_trials
    if spec.tuner.name in ("hyperband", "bohb"):
        o = HyperbandOptions(**{k: v for k, v in spec.tuner.options.items() if k in HyperbandOptions.model_fields})
        return o.hyperband_iterations * hyperband_bracket_trials(spec.budget.max_epochs or spec.epochs, o.factor,
                                                                 o.min_epochs)
    planner = getattr(get(spec.tuner.name), "planned_trials", None)
    return planner(spec) if planner else 20


def hyperband_bracket_trials(max_epochs: int, factor: int, min_epochs: int = 1) -> int:
    """Configurations started in one Hyperband iteration, keras-tuner's count
    (``HyperbandOracle``, its floating point included): brackets while
    ``max_epochs / factor**k >= min_epochs``; bracket ``b`` starts
    ``ceil(ceil(1 + log_factor(max_epochs / min_epochs)) / (b + 1) * factor**b)`` configurations
    (22 for max_epochs=10, factor=3; 2 for max_epochs=2)."""
    epochs, brackets = float(max_epochs), 0
    while epochs >= min_epochs:
        epochs /= factor
        brackets += 1
    end_size = math.ceil(1 + math.log(max_epochs / min_epochs, factor))
    return sum(math.ceil(end_size / (b + 1) * factor**b) for b in range(brackets))


class TrialSeededRandomSampler:
    """Random search whose draw for trial *n* depends only on (seed, n).

    Several workers on one study therefore propose the same points a single worker would,
    and never the same point twice by sharing a seed.
    """

    def __new__(cls, seed: int | None) -> Any:  # build a real RandomSampler subclass lazily
        import optuna

        class _Sampler(optuna.samplers.RandomSampler):
            def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                if seed is not None:
                    import numpy as np

                    # SeedSequence mixes (seed, n): consecutive raw seeds give correlated first draws.
                    self._rng.rng.seed(int(np.random.SeedSequence([seed, trial.number]).generate_state(1)[0]))

        return _Sampler(seed=seed)
