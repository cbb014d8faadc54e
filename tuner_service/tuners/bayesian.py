"""Gaussian-process Bayesian optimisation as an Optuna sampler, without torch: by default log
expected improvement on an ARD Gaussian process (the ideas of Optuna's ``GPSampler``), or
keras-tuner's ``BayesianOptimization`` oracle numerically (``acquisition="ucb"``).

Contract of :class:`BayesianSampler`:

* Observations are the study's COMPLETE trials with a finite value, read from storage on every
  suggestion, so any number of workers (threads or processes) on one study share them.
* The relative search space is the intersection of the completed trials' distributions,
  without single-valued ones. Parameters outside it (conditional ones, and all of them before
  the first trial completes) are drawn at random in :meth:`BayesianSampler.sample_independent`.
* Until ``num_initial_points`` trials have completed (default: 10 for ``ei``, keras-tuner's
  ``3 x dimensions`` for ``ucb``) the point is random; after that a GP is
  fitted on parameters scaled to [0, 1] (log parameters in log space, integers, steps and
  categoricals as keras-tuner's centred buckets) and normalised targets. Maximised objectives
  are negated, so the GP always minimises.

  - ``acquisition="ei"`` (default): kernel ``scale * Matern52`` with one length scale per
    parameter (ARD, at most 2 on the [0, 1] scale) plus a fitted noise level (``WhiteKernel``; ``alpha`` stays on the diagonal
    as jitter). Each sampler fits the kernel's hyperparameters from its previous fit (warm start,
    as GPSampler does) and one random restart; past 50 observations, only once the data has
    grown by 10% since the last fit. The point maximises ``log EI`` below the best observed
    value, computed without underflow far from it (Ament et al. 2023, "Unexpected improvements
    to expected improvement"), over 2000 random candidates refined by L-BFGS-B from the best 5
    and from the best observed point.
  - ``acquisition="ucb"``: keras-tuner's oracle: one length scale (``Matern(nu=2.5)``), fixed
    ``alpha`` on the diagonal, 20 restarts, lower confidence bound ``mean - beta * std``.

* No trial gets the parameter set of any other trial of the study (any state) while an unseen
  point exists: RUNNING/WAITING trials enter the GP as pessimistic fantasies (keras-tuner's
  ``mean + std``, the kernel as fitted on completed trials; the best observed value stays the
  real one), every point seen is excluded, and each proposal is claimed in the trial's
  system attributes and re-checked against the other trials' claims (the shared machinery of
  :mod:`tuner_service.tuners._unique`, also used by the ``tpe`` tuner). When a discrete space is
  exhausted the sampler falls back to random values.
* With a seed, one worker's sequence of suggestions is deterministic. Single-objective studies only.

``benchmarks/samplers.py`` compares both acquisitions with GPSampler and TPE on Branin and
Hartmann6 with 4 parallel workers.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy.optimize import minimize
from scipy.special import erfcx, log_ndtr
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Kernel, Matern, WhiteKernel
from threadpoolctl import threadpool_limits

from tuner_service.tuners import bayesian_acquisition
from tuner_service.tuners._unique import Claims, Key, Space

PROPOSAL_ATTR = "bayesian:proposal"  # trial system attr: {name: value} claimed by sample_relative
PARTIAL_ATTR = "bayesian:partial"  # trial system attr: params so far + the independent draw claimed

_N_CANDIDATES = 2000  # random acquisition candidates; bounds the cost of one suggestion
_N_REFINE = 5  # L-BFGS-B refinements from the best candidates (keras-tuner restarts 50 times)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
N_INITIAL_EI = 10  # "ei"'s random start (GPSampler's); "ucb" keeps keras-tuner's 3 x dimensions
# Length scales above 2 (parameters scaled to [0, 1]) would let the GP call a parameter irrelevant
# and stop exploring it: with 10 the median Hartmann6 regret at 50 trials was 0.25, with 2 0.03.
_MAX_LENGTH_SCALE = 2.0
_PENDING = (TrialState.RUNNING, TrialState.WAITING)


def log_expected_improvement(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """``log E[max(best - f, 0)]`` for ``f ~ N(mean, std**2)``, finite however far ``mean`` lies
    above ``best`` (plain EI underflows to 0 there and leaves the optimiser no slope).

    ``EI = std * h(z)`` with ``z = (best - mean) / std`` and ``h(z) = phi(z) + z Phi(z)``; for
    ``z <= -1``, ``h(z) = phi(z) (1 + z Phi(z)/phi(z))`` and ``Phi(z)/phi(z) = sqrt(pi/2)
    erfcx(-z/sqrt(2))``, which stays finite (LogEI, Ament et al. 2023)."""
    std = np.maximum(std, 1e-12)
    z = (best - mean) / std
    log_h = np.empty_like(z)
    near = z > -1
    zn = z[near]
    log_h[near] = np.log(np.exp(-0.5 * zn**2 - _LOG_SQRT_2PI) + zn * np.exp(log_ndtr(zn)))
    zf = z[~near]
    log_h[~near] = -0.5 * zf**2 - _LOG_SQRT_2PI + np.log1p(zf * math.sqrt(math.pi / 2) * erfcx(-zf / math.sqrt(2)))
    return np.log(std) + log_h


class BayesianSampler(optuna.samplers.BaseSampler):
    """Gaussian-process sampler: log EI on an ARD GP, or keras-tuner's GP-UCB (see module doc).

    Args:
        num_initial_points: completed trials sampled at random before the GP is used; default
            10 for ``ei`` (as GPSampler), ``max(3 * dimensions, 3)`` for ``ucb`` (as keras-tuner).
        alpha: value added to the GP kernel diagonal (in normalised target units): the noise for
            ``ucb``, a jitter under the fitted noise for ``ei``.
        beta: exploration weight of the confidence bound (``ucb`` only; default 2.6 as keras-tuner).
        acquisition: ``"ei"`` (log expected improvement, ARD kernel) or ``"ucb"`` (keras-tuner's);
            default ``"ucb"`` when ``beta`` is given, else ``"ei"``.
        seed: seed for the random phase, the candidates and the GP restarts.
    """

    def __init__(
        self,
        num_initial_points: int | None = None,
        alpha: float = 1e-4,
        beta: float | None = None,
        seed: int | None = None,
        acquisition: Literal["ei", "ucb"] | None = None,
    ) -> None:
        if acquisition not in (None, "ei", "ucb"):
            raise ValueError(f"acquisition must be 'ei' or 'ucb', got {acquisition!r}")
        acquisition = bayesian_acquisition(acquisition, beta)  # type: ignore[assignment]
        self._num_initial_points = num_initial_points
        self._alpha = alpha
        self._beta = 2.6 if beta is None else beta
        self._acquisition_name = acquisition
        self._kernel: Kernel | None = None  # the last fitted "ei" kernel: the next fit starts from it
        self._kernel_n = 0  # ... fitted on this many observations
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._claims = Claims(PROPOSAL_ATTR, PARTIAL_ATTR)

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
        space = Space(search_space)
        records = self._claims.records(study, trial)
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
        n_initial = self._num_initial_points or (
            max(3 * len(space.names), 3) if self._acquisition_name == "ucb" else N_INITIAL_EI
        )
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

        key = self._claims.settle(study, trial, PROPOSAL_ATTR, space, choose, records)
        return {} if key is None else space.values(key)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """A random value; for discrete distributions one that, with the trial's params so far, no other
        trial holds or claims (prefix uniqueness), which keeps cold-start and conditional trials distinct."""
        draw = lambda: self._random.sample_independent(study, trial, param_name, param_distribution)  # noqa: E731
        return self._claims.independent(study, trial, param_name, param_distribution, draw, self._rng)

    def _fit_gp(self, x: np.ndarray, y: np.ndarray) -> GaussianProcessRegressor:
        """``ucb``: keras-tuner's GP (fewer optimiser restarts on large data keep a suggestion near one
        second). ``ei``: the ARD kernel with fitted noise, warm-started from this sampler's last fit."""
        if self._acquisition_name == "ucb":
            kernel: Kernel = Matern(nu=2.5)
            restarts = 20 if len(y) <= 100 else 3  # 20 as keras-tuner
        else:
            last = self._kernel
            if last is not None and last.n_dims == 2 + x.shape[1]:  # log scale, length scales, noise
                # From the last optimum, plus one random restart. Past 50 observations the
                # hyperparameters move little and a fit costs 0.4 s at 200: they are re-optimised
                # once the data has grown by 10%, otherwise the fit is one Cholesky factorisation.
                kernel = last
                if len(y) > 50 and len(y) < 1.1 * self._kernel_n:
                    return self._gp(kernel, None).fit(x, y)
            else:
                kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
                    length_scale=np.full(x.shape[1], 0.5), length_scale_bounds=(1e-2, _MAX_LENGTH_SCALE), nu=2.5
                ) + WhiteKernel(1e-3, (1e-6, 1e-1))
            restarts = 1
        gp = self._gp(kernel, "fmin_l_bfgs_b", restarts)
        with warnings.catch_warnings():  # length scales at their bounds are expected on flat objectives
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(x, y)
        if self._acquisition_name == "ei":
            self._kernel, self._kernel_n = gp.kernel_, len(y)
        return gp

    def _gp(self, kernel: Kernel, optimizer: str | None, restarts: int = 0) -> GaussianProcessRegressor:
        return GaussianProcessRegressor(
            kernel=kernel,
            alpha=self._alpha,
            normalize_y=True,
            optimizer=optimizer,
            n_restarts_optimizer=restarts,
            random_state=self._rng.randint(2**31 - 1),
        )

    def _acquisition(
        self,
        space: Space,
        obs: list[tuple[Key, float]],
        pending: list[Key],
        keys: np.ndarray,
        exhaustive: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate keys and their scores (lower is better: ``mean - beta * std``, or ``-log EI``)
        under the GP with fantasies."""
        x = space.encode(np.array([k for k, _ in obs]))
        y = np.array([v for _, v in obs])
        gp = self._fit_gp(x, y)
        best = float(y.min())
        if pending:
            # Fantasise running trials at a pessimistic value (keras-tuner) so workers spread out;
            # the kernel stays as fitted on real data only.
            xp = space.encode(np.array(pending))
            mu, sd = gp.predict(xp, return_std=True)
            gp = self._gp(gp.kernel_, None)
            gp.fit(np.vstack([x, xp]), np.concatenate([y, mu + sd]))

        def score(u: np.ndarray) -> np.ndarray:
            mu, sd = gp.predict(u, return_std=True)
            if self._acquisition_name == "ucb":
                return mu - self._beta * sd
            return -log_expected_improvement(mu, sd, best)

        units = space.encode(keys)
        scores = score(units)
        if exhaustive:
            return keys, scores

        def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
            h = 1e-5  # forward differences in one batched predict instead of d + 1 calls
            a = score(np.vstack([u, u + h * np.eye(len(u))]))
            return float(a[0]), (a[1:] - a[0]) / h

        starts = units[np.argsort(scores)[:_N_REFINE]]
        if self._acquisition_name == "ei":  # and from the best point seen, as GPSampler
            starts = np.vstack([starts, x[np.argmin(y)]])
        found = np.array(
            [minimize(fun, s, jac=True, bounds=[(0.0, 1.0)] * len(s), method="L-BFGS-B").x for s in starts]
        )
        refined = space.decode(found)  # snap to the grid, score where the point really lies
        return np.vstack([keys, refined]), np.concatenate([scores, score(space.encode(refined))])
