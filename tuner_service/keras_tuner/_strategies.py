"""What to try next: a keras-tuner ``Oracle`` mapped onto the service.

keras-tuner's own oracle classes describe the search; the service runs it:

- ``RandomSearchOracle`` / ``BayesianOptimizationOracle`` with ``max_trials``: the service's
  seeded random sampler / Gaussian-process sampler, a budget of ``max_trials`` slots.
- ``HyperbandOracle``: keras-tuner's bracket schedule (:class:`HyperbandSchedule`) as an
  Optuna pruner over one trial per configuration, continued in place when promoted.
- ``GridSearchOracle``: every point of keras-tuner's grid order (:func:`grid_points`; nothing
  is built to enumerate them), one budget slot each.
- Any other oracle (a subclass with its own ``populate_space``, or a built-in one with
  ``max_trials=None``, "until the space is exhausted"): its ``populate_space`` proposes each
  new trial's values, which :class:`ProposalSampler` hands to Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras_tuner as _kt
import optuna
from keras_tuner import HyperParameters

#: Trial system attr: (iteration, bracket) of a Hyperband configuration; carried to retries.
BRACKET_ATTR = "kt_bracket"
#: Budget of an oracle without ``max_trials``: the search ends when it says STOPPED.
UNBOUNDED = 1_000_000


@dataclass
class Strategy:
    """How a study runs its oracle: ``kind`` is sampler, hyperband, grid or oracle."""

    kind: str
    tuner: str  # the service tuner named in the stored spec
    options: dict[str, Any] = field(default_factory=dict)
    max_trials: int | None = None
    max_epochs: int | None = None
    schedule: HyperbandSchedule | None = None

    @property
    def stored_name(self) -> str:
        return {"grid": "gridsearch", "oracle": "oracle"}.get(self.kind, self.tuner)


def _own(oracle: Any, cls: type) -> bool:
    """``oracle`` is a ``cls`` whose ``populate_space`` is keras-tuner's own."""
    return isinstance(oracle, cls) and type(oracle).populate_space is cls.populate_space


def strategy_of(oracle: Any) -> Strategy:
    """The service strategy that runs ``oracle`` (see the module docstring)."""
    oracles = _kt.oracles
    max_trials = oracle.max_trials
    if max_trials is not None and max_trials < 1:
        raise ValueError(f"max_trials must be at least 1 (got {max_trials}); or None to search until the oracle stops")
    if _own(oracle, oracles.HyperbandOracle):
        iterations = oracle.hyperband_iterations
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"hyperband_iterations must be a positive integer here (got {iterations!r}): the "
                             "study's budget is fixed when it is created")
        schedule = HyperbandSchedule(oracle.max_epochs, oracle.factor, oracle.min_epochs)
        return Strategy("hyperband", "hyperband", {"factor": oracle.factor, "min_epochs": oracle.min_epochs,
                                                   "hyperband_iterations": iterations},
                        max_trials=schedule.trials_per_iteration * iterations, max_epochs=oracle.max_epochs,
                        schedule=schedule)
    if _own(oracle, oracles.GridSearchOracle):
        return Strategy("grid", "random", max_trials=max_trials)
    if max_trials is not None and _own(oracle, oracles.BayesianOptimizationOracle):
        return Strategy("sampler", "bayesian", {"num_initial_points": oracle.num_initial_points, "alpha": oracle.alpha,
                                                "acquisition": "ucb", "beta": oracle.beta}, max_trials=max_trials)
    if max_trials is not None and _own(oracle, oracles.RandomSearchOracle):
        return Strategy("sampler", "random", max_trials=max_trials)
    return Strategy("oracle", "random", max_trials=max_trials)


# ---------------------------------------------------------------------------- grid


def grid_points(space: HyperParameters) -> Iterator[dict[str, Any]]:
    """keras-tuner's ``GridSearchOracle`` order over ``space``: each hyperparameter's default
    first, then its other values in ``hp.values`` order, the last one varying fastest; an
    inactive (conditional) hyperparameter is skipped. Yields the active values of each point."""
    hps = list(space.space)
    scratch = space.copy()

    def ordered(hp: Any) -> list[Any]:
        values = [_plain(v) for v in hp.values]
        default = _plain(hp.default)
        return [default, *(v for v in values if v != default)]

    def visit(i: int, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if i == len(hps):
            yield dict(values)
            return
        hp = hps[i]
        scratch.values = values
        if not scratch.is_active(hp):
            yield from visit(i + 1, values)
            return
        for value in ordered(hp):
            yield from visit(i + 1, {**values, hp.name: value})

    yield from visit(0, {})


def covered(point: dict[str, Any], existing: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether a trial run (or enqueued) with ``existing`` values already is ``point`` (a
    hyperparameter it did not have took its default)."""
    return all(existing.get(k, defaults.get(k)) == v for k, v in point.items())


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (grid points are stored as JSON)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


# ---------------------------------------------------------------------------- hyperband


class HyperbandSchedule:
    """keras-tuner's ``HyperbandOracle`` schedule, with its own formulas (floating point
    included): brackets while ``max_epochs / factor**k >= min_epochs``; bracket ``b`` starts
    ``size(b, 0)`` configurations, trains them to ``epochs(b, 0)``, keeps the best
    ``size(b, 1)`` to ``epochs(b, 1)``, ... up to ``max_epochs``; the most aggressive bracket
    first. Here a configuration is one trial from start to its last round."""

    def __init__(self, max_epochs: int, factor: int, min_epochs: int = 1) -> None:
        self.max_epochs, self.factor, self.min_epochs = max_epochs, factor, min_epochs
        epochs, brackets = float(max_epochs), 0
        while epochs >= min_epochs:
            epochs /= factor
            brackets += 1
        self.brackets = brackets
        self.order = list(range(brackets - 1, -1, -1))
        self.trials_per_iteration = sum(self.size(b, 0) for b in self.order)

    def size(self, bracket: int, round_num: int) -> int:
        end_size = math.ceil(1 + math.log(self.max_epochs / self.min_epochs, self.factor)) / (bracket + 1)
        return math.ceil(end_size * self.factor ** (bracket - round_num))

    def epochs(self, bracket: int, round_num: int) -> int:
        return math.ceil(self.max_epochs / self.factor ** (bracket - round_num))

    def place(self, index: int) -> tuple[int, int]:
        """(iteration, bracket) of the ``index``-th configuration of the study."""
        iteration, k = divmod(index, self.trials_per_iteration)
        for bracket in self.order:
            if k < self.size(bracket, 0):
                return iteration, bracket
            k -= self.size(bracket, 0)
        raise AssertionError("unreachable")

    def boundary(self, bracket: int, epochs_done: int) -> int | None:
        """The round that ends after ``epochs_done`` epochs (promotions follow it), or None."""
        for round_num in range(bracket):
            if self.epochs(bracket, round_num) == epochs_done:
                return round_num
        return None


class HyperbandPruner(optuna.pruners.BasePruner):
    """Stops a configuration at the end of round ``r`` of its bracket unless it stays among
    the best ``size(b, r + 1)`` of its bracket: it is stopped when that many bracket-mates
    already scored better at that epoch, or already went on to the next round (keras-tuner
    waits for the whole round; here nobody waits, and no round promotes more than
    keras-tuner's count). A configuration's score at an epoch is its best value so far."""

    def __init__(self, schedule: HyperbandSchedule) -> None:
        self.schedule = schedule

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        place = trial.system_attrs.get(BRACKET_ATTR)
        step = trial.last_step
        if place is None or step is None:
            return False
        bracket = int(place[1])
        round_num = self.schedule.boundary(bracket, step)
        if round_num is None:
            return False
        keep = self.schedule.size(bracket, round_num + 1)
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        mine = _best_until(trial, step, maximize)
        better = promoted = 0
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number or other.system_attrs.get(BRACKET_ATTR) != place:
                continue
            if other.last_step is not None and other.last_step > step:
                promoted += 1
            theirs = _best_until(other, step, maximize)
            if theirs is not None and mine is not None and (theirs > mine if maximize else theirs < mine):
                better += 1
        return better >= keep or promoted >= keep


def _best_until(trial: optuna.trial.FrozenTrial, step: int, maximize: bool) -> float | None:
    values = [v for s, v in trial.intermediate_values.items() if s <= step and v == v]
    if trial.last_step is None or trial.last_step < step or not values:
        return None
    return max(values) if maximize else min(values)


# ---------------------------------------------------------------------------- proposals


class ProposalSampler(optuna.samplers.BaseSampler):
    """Returns the values proposed for a trial (an oracle's ``populate_space``, or a
    hyperparameter's default); anything else comes from ``fallback``."""

    def __init__(self, fallback: optuna.samplers.BaseSampler) -> None:
        self.fallback = fallback
        self.proposals: dict[int, dict[str, Any]] = {}

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        proposal = self.proposals.get(trial.number, {})
        if param_name in proposal:
            return proposal[param_name]
        return self.fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.fallback.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any,
                    values: Any) -> None:
        self.proposals.pop(trial.number, None)
        self.fallback.after_trial(study, trial, state, values)
