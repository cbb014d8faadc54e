"""Gaussian-process Bayesian optimisation as an Optuna sampler, numerically like keras-tuner's
``BayesianOptimization`` oracle.

Contract of :class:`BayesianSampler`:

* Observations are the study's COMPLETE trials with a finite value, read from storage on every
  suggestion, so any number of workers (threads or processes) on one study share them.
* The relative search space is the intersection of the completed trials' distributions,
  without single-valued ones. Parameters outside it (conditional ones, and all of them before
  the first trial completes) are drawn at random in :meth:`BayesianSampler.sample_independent`.
* Until ``num_initial_points`` trials have completed the point is random; after that it
  minimises the lower confidence bound ``mean - beta * std`` of a GP (Matern 5/2, ``alpha`` on
  the diagonal, normalised targets) fitted on parameters scaled to [0, 1] (log parameters in
  log space, integers, steps and categoricals as keras-tuner's centred buckets). Maximised
  objectives are negated.
* No trial gets the parameter set of any other trial of the study (any state) while an unseen
  point exists: RUNNING/WAITING trials enter the GP as pessimistic fantasies (keras-tuner's
  ``mean + std``), every point seen is excluded, and each proposal is claimed in the trial's
  system attributes and re-checked against the other trials' claims (see :meth:`_settle`).
  When a discrete space is exhausted the sampler falls back to random values.
* With a seed, one worker's sequence of suggestions is deterministic. Single-objective studies only.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import Matern
from threadpoolctl import threadpool_limits

PROPOSAL_ATTR = "bayesian:proposal"  # trial system attr: {name: value} claimed by sample_relative
PARTIAL_ATTR = "bayesian:partial"  # trial system attr: params so far + the independent draw claimed

_N_CANDIDATES = 2000  # random acquisition candidates; bounds the cost of one suggestion
_MAX_GRID = 2000  # discrete spaces up to this size are enumerated, so no unseen point is missed
_N_REFINE = 5  # L-BFGS-B refinements from the best candidates (keras-tuner restarts 50 times)
_MAX_ROUNDS = 6  # claim rounds before giving up on a point and drawing at random
_PENDING = (TrialState.RUNNING, TrialState.WAITING)

Key = tuple[float, ...]
Record = dict[str, Any]


class _Dim:
    """One dimension: external value <-> key (grid index, or the value itself if continuous) <-> [0, 1]."""

    def __init__(self, dist: BaseDistribution) -> None:
        self.dist = dist
        self.choices: Sequence[Any] | None = getattr(dist, "choices", None)
        if self.choices is not None:
            self.n: int | None = len(self.choices)
            return
        self.low, self.high, self.log = float(dist.low), float(dist.high), bool(dist.log)  # type: ignore[attr-defined]
        step = dist.step if isinstance(dist, FloatDistribution) else (dist.step or 1)  # type: ignore[attr-defined]
        self.step = None if step is None else float(step)
        self.n = None if self.step is None else int(round((self.high - self.low) / self.step)) + 1
        # Grid values own a bucket of one step centred on them, as in keras-tuner's Int/step scaling.
        half = 0.0 if self.step is None else self.step / 2
        self.lo, self.hi = self._fwd(self.low - half), self._fwd(self.high + half)

    def _fwd(self, x: Any) -> Any:
        return np.log(x) if self.log else x

    def key(self, value: Any) -> float | None:
        try:
            if self.choices is not None:
                return float(self.dist.to_internal_repr(value))
            if self.step is None:
                return float(value)
            return float(round((float(value) - self.low) / self.step))
        except (TypeError, ValueError):  # a value this distribution cannot hold never matches
            return None

    def value(self, key: float) -> Any:
        if self.choices is not None:
            return self.choices[int(key)]
        if self.step is None:
            return float(key)
        v = min(self.low + int(key) * self.step, self.high)
        return v if isinstance(self.dist, FloatDistribution) else int(round(v))

    def to_unit(self, keys: np.ndarray) -> np.ndarray:
        if self.choices is not None:
            return (keys + 0.5) / len(self.choices)
        x = keys if self.step is None else self.low + keys * self.step
        return (self._fwd(x) - self.lo) / (self.hi - self.lo)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        if self.choices is not None:
            return np.clip(np.floor(u * len(self.choices)), 0, len(self.choices) - 1)
        x = self.lo + np.clip(u, 0.0, 1.0) * (self.hi - self.lo)
        x = np.exp(x) if self.log else x
        if self.step is None:
            return np.clip(x, self.low, self.high)
        return np.clip(np.round((x - self.low) / self.step), 0, self.n - 1)  # type: ignore[operator]


class _Space:
    """Named dimensions in a fixed order; points are key tuples."""

    def __init__(self, dists: dict[str, BaseDistribution]) -> None:
        self.names = list(dists)
        self.dims = [_Dim(d) for d in dists.values()]

    def key_of(self, record: Record) -> Key | None:
        if any(n not in record for n in self.names):
            return None
        keys = tuple(d.key(record[n]) for n, d in zip(self.names, self.dims, strict=True))
        return None if None in keys else keys  # type: ignore[return-value]

    def values(self, key: Key) -> dict[str, Any]:
        return {n: d.value(k) for n, d, k in zip(self.names, self.dims, key, strict=True)}

    def encode(self, keys: np.ndarray) -> np.ndarray:
        return np.column_stack([d.to_unit(keys[:, i]) for i, d in enumerate(self.dims)])

    def decode(self, units: np.ndarray) -> np.ndarray:
        return np.column_stack([d.from_unit(units[:, i]) for i, d in enumerate(self.dims)])

    def grid(self) -> np.ndarray | None:
        sizes = [d.n for d in self.dims]
        if None in sizes or math.prod(sizes) > _MAX_GRID:  # type: ignore[arg-type]
            return None
        return np.array(list(itertools.product(*(range(n) for n in sizes))), dtype=float)  # type: ignore[arg-type]


class BayesianSampler(optuna.samplers.BaseSampler):
    """GP-UCB sampler equivalent to keras-tuner's BayesianOptimization oracle (see module doc).

    Args:
        num_initial_points: completed trials sampled at random before the GP is used; default
            ``max(3 * dimensions, 3)`` as in keras-tuner.
        alpha: noise added to the GP kernel diagonal (in normalised target units).
        beta: exploration weight of the confidence bound.
        seed: seed for the random phase, the candidates and the GP restarts.
    """

    def __init__(
        self,
        num_initial_points: int | None = None,
        alpha: float = 1e-4,
        beta: float = 2.6,
        seed: int | None = None,
    ) -> None:
        self._num_initial_points = num_initial_points
        self._alpha = alpha
        self._beta = beta
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._rng = np.random.RandomState()
        self._random.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        done = study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.COMPLETE,))
        space = optuna.search_space.intersection_search_space(done)
        return {n: d for n, d in sorted(space.items()) if not d.single()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The point for ``trial`` over ``search_space``, claimed unique; ``{}`` means draw at random."""
        if not search_space:
            return {}
        space = _Space(search_space)
        records = self._records(study, trial)
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        obs = [
            (key, sign * t.value)  # type: ignore[operator]
            for t, _ in records
            if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
            if (key := space.key_of(t.params)) is not None
        ]
        grid = space.grid()
        keys = (
            grid
            if grid is not None
            else space.decode(self._rng.uniform(size=(_N_CANDIDATES, len(space.names))))
        )
        n_initial = self._num_initial_points or max(3 * len(space.names), 3)
        if len(obs) < n_initial:
            scores = self._rng.uniform(size=len(keys))  # random phase: uniform over unseen points
        else:
            pending = [k for t, rec in records if t.state in _PENDING if (k := space.key_of(rec)) is not None]
            # One BLAS thread: the matrices are a few hundred wide, and OpenBLAS threads spinning
            # against other workers or the training process on the same cores made it 3-4x slower.
            with threadpool_limits(1, user_api="blas"):
                keys, scores = self._acquisition(space, obs, pending, keys, exhaustive=grid is not None)
        rows = [tuple(map(float, row)) for row in keys]
        order = np.argsort(scores, kind="stable")

        def choose(taken: set[Key], rnd: int) -> Key | None:
            best = [rows[i] for i in order if rows[i] not in taken][: 1 if rnd == 0 else 5]
            # After a clash, pick among the best few at random so two workers in lockstep part ways.
            return best[self._rng.randint(len(best))] if best else None

        key = self._settle(study, trial, PROPOSAL_ATTR, space, choose, records)
        return {} if key is None else space.values(key)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """A random value; for discrete distributions one that, with the trial's params so far, no other
        trial holds or claims (prefix uniqueness), which keeps cold-start and conditional trials distinct."""
        draw = lambda: self._random.sample_independent(study, trial, param_name, param_distribution)  # noqa: E731
        if param_distribution.single() or getattr(param_distribution, "step", 0) is None:
            return draw()  # a continuous value repeats with probability zero
        space = _Space({**trial.distributions, param_name: param_distribution})
        prefix = tuple(d.key(trial.params[n]) for n, d in zip(space.names[:-1], space.dims[:-1], strict=True))
        dim = space.dims[-1]

        def choose(taken: set[Key], rnd: int) -> Key | None:
            for _ in range(32):  # keep RandomSampler's distribution (log, step) while it finds free values
                k = dim.key(draw())
                if prefix + (k,) not in taken:
                    return prefix + (k,)  # type: ignore[return-value]
            n = dim.n if dim.n is not None and dim.n <= 100 * _MAX_GRID else 0  # huge ranges: give up
            free = [prefix + (float(k),) for k in range(n) if prefix + (float(k),) not in taken]
            return free[self._rng.randint(len(free))] if free else None  # type: ignore[return-value]

        key = self._settle(study, trial, PARTIAL_ATTR, space, choose, self._records(study, trial))
        return draw() if key is None else dim.value(key[-1])

    def _records(self, study: optuna.Study, trial: FrozenTrial) -> list[tuple[FrozenTrial, Record]]:
        """Every other trial with what it holds, will run (enqueued ``fixed_params``) or has claimed."""
        return [
            (
                t,
                {
                    **a.get(PARTIAL_ATTR, {}),
                    **a.get(PROPOSAL_ATTR, {}),
                    **a.get("fixed_params", {}),
                    **t.params,
                },
            )
            for t in study._storage.get_all_trials(study._study_id, deepcopy=False)
            if t.number != trial.number
            for a in (t.system_attrs,)
        ]

    def _settle(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        attr: str,
        space: _Space,
        choose: Callable[[set[Key], int], Key | None],
        records: list[tuple[FrozenTrial, Record]],
    ) -> Key | None:
        """Claim a point no other trial holds or claims, or return None (and withdraw the claim).

        Write the claim, then re-read: of two trials claiming one point, the later reader sees the
        other's claim (each writes before it reads), so at least one of them moves on. Both yield,
        not only the higher trial number: the lower one cannot tell whether the other saw it.
        """
        excluded: set[Key] = set()
        for rnd in range(_MAX_ROUNDS):
            taken = excluded | {k for _, rec in records if (k := space.key_of(rec)) is not None}
            key = choose(taken, rnd)
            if key is None:
                break
            study._storage.set_trial_system_attr(trial._trial_id, attr, space.values(key))
            records = self._records(study, trial)
            if all(space.key_of(rec) != key for _, rec in records):
                return key
            excluded.add(key)
        study._storage.set_trial_system_attr(trial._trial_id, attr, {})  # a stale claim would block the point
        return None

    def _fit_gp(self, x: np.ndarray, y: np.ndarray) -> GaussianProcessRegressor:
        """keras-tuner's GP; fewer optimiser restarts on large data keep a suggestion near one second."""
        gp = GaussianProcessRegressor(
            kernel=Matern(nu=2.5),
            alpha=self._alpha,
            normalize_y=True,
            n_restarts_optimizer=20 if len(y) <= 100 else 3,  # 20 as keras-tuner
            random_state=self._rng.randint(2**31 - 1),
        )
        with warnings.catch_warnings():  # length scales at their bounds are expected on flat objectives
            warnings.simplefilter("ignore", ConvergenceWarning)
            return gp.fit(x, y)

    def _acquisition(
        self,
        space: _Space,
        obs: list[tuple[Key, float]],
        pending: list[Key],
        keys: np.ndarray,
        exhaustive: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate keys and their ``mean - beta * std`` (lower is better) under the GP with fantasies."""
        x = space.encode(np.array([k for k, _ in obs]))
        y = np.array([v for _, v in obs])
        gp = self._fit_gp(x, y)
        if pending:
            # Fantasise running trials at a pessimistic value (keras-tuner) so workers spread out;
            # the kernel stays as fitted on real data only.
            xp = space.encode(np.array(pending))
            mu, sd = gp.predict(xp, return_std=True)
            gp = GaussianProcessRegressor(
                kernel=gp.kernel_, alpha=self._alpha, normalize_y=True, optimizer=None
            )
            gp.fit(np.vstack([x, xp]), np.concatenate([y, mu + sd]))

        def lcb(u: np.ndarray) -> np.ndarray:
            mu, sd = gp.predict(u, return_std=True)
            return mu - self._beta * sd

        units = space.encode(keys)
        scores = lcb(units)
        if exhaustive:
            return keys, scores

        def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
            h = 1e-5  # forward differences in one batched predict instead of d + 1 calls
            a = lcb(np.vstack([u, u + h * np.eye(len(u))]))
            return float(a[0]), (a[1:] - a[0]) / h

        starts = units[np.argsort(scores)[:_N_REFINE]]
        found = np.array(
            [minimize(fun, s, jac=True, bounds=[(0.0, 1.0)] * len(s), method="L-BFGS-B").x for s in starts]
        )
        refined = space.decode(found)  # snap to the grid, score where the point really lies
        return np.vstack([keys, refined]), np.concatenate([scores, lcb(space.encode(refined))])
