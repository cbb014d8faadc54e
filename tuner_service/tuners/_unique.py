"""Unique proposals on shared Optuna storage: no trial gets the parameter set of another trial.

Shared by :class:`~tuner_service.tuners.bayesian.BayesianSampler` (the ``bayesian`` tuner) and
:class:`UniqueSampler` (the ``tpe`` tuner wraps Optuna's ``TPESampler`` in it).

The machinery (:class:`Claims`):

* A trial's *record* is what it holds, will run or has claimed: its params, over its enqueued
  ``fixed_params``, over its claims in system attributes. :meth:`Claims.records` reads every other
  trial's record from storage (any state), so workers in any number of threads or processes on
  one study see each other.
* Points are compared as key tuples of a :class:`Space` (grid indices for discrete values, the
  value itself for continuous ones).
* :meth:`Claims.settle` writes the chosen point as a claim in the trial's system attributes,
  re-reads the records, and yields (tries another point) if another trial holds or claims it. Of
  two trials claiming one point at once, the later reader sees the other's claim, so at most one
  keeps it.
* :meth:`Claims.independent` gives an independently sampled discrete parameter a value that,
  with the trial's params so far, no other trial holds or claims (prefix uniqueness); this keeps
  random (cold-start) and conditional trials distinct.

Contract of :class:`UniqueSampler` (wrapping ``inner``, e.g. TPE):

* ``infer_relative_search_space``, ``before_trial``, ``after_trial`` and ``reseed_rng`` are the
  inner sampler's. A value the inner sampler gives that is not taken is used as is, so TPE's
  model, constant liar and seeds are untouched, a seeded single worker is deterministic, and it
  differs from ``inner`` alone only where ``inner`` would repeat a point (or a prefix, below).
* ``sample_relative``: the projection of the inner point on the parameters every finished trial
  has (the unconditional ones; TPE's groups also sample conditional ones, which trials that do
  not use them never record) must be unique. If another trial holds or claims it, the point is
  re-drawn from ``inner`` (its random state has advanced, so a re-draw differs) ``redraws``
  times, then the nearest free point is taken (distance: [0, 1]-scaled numeric values plus one
  per differing categorical, ties at random; spaces over 2000 points: random moves of 1, 2, ...
  dimensions). The point is then claimed and settled. If one of those parameters is continuous
  (a repeat has probability zero), or ``inner`` samples nothing (TPE's startup), the point
  passes through unclaimed at no extra cost.
* ``sample_independent``: continuous values pass through; discrete values get prefix uniqueness,
  drawn from ``inner`` (``independent_tries`` draws, then a random free value).
* Exhausted spaces: when no free point is left, what ``inner`` gives is used (in
  ``sample_relative`` with conditional parameters in the point: ``{}``, so they are sampled one
  by one with prefix uniqueness and may still reach an unseen full parameter set). Uniqueness
  is greedy, parameter by parameter, as in BayesianSampler: in a conditional space, once every
  value of an earlier parameter is taken, a later one may repeat a set although another branch
  still has unseen points. Every suggestion ends after at most ``MAX_ROUNDS`` claims.
* Cost of a claimed suggestion: one write and one read of the study's trials per settle round
  (one round unless two workers race; the first pick uses the trials TPE has just read), plus
  one inner sample per re-draw.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

MAX_GRID = 2000  # discrete spaces up to this size are enumerated, so no unseen point is missed
MAX_ROUNDS = 6  # claim rounds before giving up on a point
PROPOSAL_ATTR = "unique:proposal"  # UniqueSampler's claims (BayesianSampler has its own attribute names)
PARTIAL_ATTR = "unique:partial"

Key = tuple[float, ...]
Record = dict[str, Any]


def is_continuous(dist: BaseDistribution) -> bool:
    """A float range without a step: a value repeats with probability zero."""
    return getattr(dist, "step", 0) is None


class Dim:
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


class Space:
    """Named dimensions in a fixed order; points are key tuples."""

    def __init__(self, dists: dict[str, BaseDistribution]) -> None:
        self.names = list(dists)
        self.dims = [Dim(d) for d in dists.values()]

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
        if None in sizes or math.prod(sizes) > MAX_GRID:  # type: ignore[arg-type]
            return None
        return np.array(list(itertools.product(*(range(n) for n in sizes))), dtype=float)  # type: ignore[arg-type]


class Claims:
    """Claims of one sampler kind, in two trial system attributes (see module doc).

    ``proposal_attr`` holds the point claimed by ``sample_relative``; ``partial_attr`` the params
    so far plus the value claimed by ``sample_independent``.
    """

    def __init__(self, proposal_attr: str, partial_attr: str) -> None:
        self.proposal_attr = proposal_attr
        self.partial_attr = partial_attr

    def records(
        self, study: optuna.Study, trial: FrozenTrial, cached: bool = False
    ) -> list[tuple[FrozenTrial, Record]]:
        """Every other trial with what it holds, will run (enqueued ``fixed_params``) or has claimed.

        ``cached``: the study's per-trial snapshot of its trials (``Study._get_trials`` with
        ``use_cache``, which TPE has just read), not a fresh read: good enough to pick a point, as
        :meth:`settle` re-reads the storage after every claim.
        """
        trials = (
            study._get_trials(deepcopy=False, use_cache=True)
            if cached
            else study._storage.get_all_trials(study._study_id, deepcopy=False)
        )
        return [
            (
                t,
                {
                    **a.get(self.partial_attr, {}),
                    **a.get(self.proposal_attr, {}),
                    **a.get("fixed_params", {}),
                    **t.params,
                },
            )
            for t in trials
            if t.number != trial.number
            for a in (t.system_attrs,)
        ]

    def settle(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        attr: str,
        space: Space,
        choose: Callable[[set[Key], int], Key | None],
        records: list[tuple[FrozenTrial, Record]],
    ) -> Key | None:
        """Claim a point no other trial holds or claims, or return None (and withdraw the claim).

        ``choose(taken, round)`` proposes a point outside ``taken`` (None: give up). Write the
        claim, then re-read: of two trials claiming one point, the later reader sees the other's
        claim (each writes before it reads), so at least one of them moves on. Both yield, not
        only the higher trial number: the lower one cannot tell whether the other saw it.
        """
        excluded: set[Key] = set()
        for rnd in range(MAX_ROUNDS):
            taken = excluded | {k for _, rec in records if (k := space.key_of(rec)) is not None}
            key = choose(taken, rnd)
            if key is None:
                break
            study._storage.set_trial_system_attr(trial._trial_id, attr, space.values(key))
            records = self.records(study, trial)
            if all(space.key_of(rec) != key for _, rec in records):
                return key
            excluded.add(key)
        study._storage.set_trial_system_attr(trial._trial_id, attr, {})  # a stale claim would block the point
        return None

    def independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
        draw: Callable[[], Any],
        rng: np.random.RandomState,
        tries: int = 32,
        cached: bool = False,
    ) -> Any:
        """A value from ``draw()``; for discrete distributions one that, with the trial's params so
        far, no other trial holds or claims (prefix uniqueness): up to ``tries`` draws, then a free
        value at random from ``rng``. ``draw()`` again when none is free. ``cached``: pick the first
        value from the study's cached trials (see :meth:`records`)."""
        if param_distribution.single() or is_continuous(param_distribution):
            return draw()  # a continuous value repeats with probability zero
        space = Space({**trial.distributions, param_name: param_distribution})
        prefix = tuple(d.key(trial.params[n]) for n, d in zip(space.names[:-1], space.dims[:-1], strict=True))
        dim = space.dims[-1]

        def choose(taken: set[Key], rnd: int) -> Key | None:
            for _ in range(tries):  # keep the draw's distribution (log, step, TPE's) while it finds free values
                k = dim.key(draw())
                if prefix + (k,) not in taken:
                    return prefix + (k,)  # type: ignore[return-value]
            n = dim.n if dim.n is not None and dim.n <= 100 * MAX_GRID else 0  # huge ranges: give up
            free = [prefix + (float(k),) for k in range(n) if prefix + (float(k),) not in taken]
            return free[rng.randint(len(free))] if free else None  # type: ignore[return-value]

        key = self.settle(study, trial, self.partial_attr, space, choose, self.records(study, trial, cached))
        return draw() if key is None else dim.value(key[-1])


class UniqueSampler(optuna.samplers.BaseSampler):
    """``inner``'s proposals, made unique across the study's trials (see module doc).

    Args:
        inner: the sampler to wrap (the ``tpe`` tuner: Optuna's ``TPESampler``).
        seed: seed for the choices among free points (the inner sampler has its own).
        redraws: re-draws from ``inner`` when its relative point is taken, before the nearest
            free point is used (more re-draws found few more points on small discrete spaces,
            cost one inner sample each, and did not improve regret).
        independent_tries: draws from ``inner`` for an independent discrete parameter before a
            free value is picked at random.
    """

    def __init__(
        self,
        inner: optuna.samplers.BaseSampler,
        seed: int | None = None,
        redraws: int = 1,
        independent_tries: int = 4,
    ) -> None:
        self._inner = inner
        self._rng = np.random.RandomState(seed)
        self._redraws = redraws
        self._independent_tries = independent_tries
        self._claims = Claims(PROPOSAL_ATTR, PARTIAL_ATTR)

    @property
    def inner(self) -> optuna.samplers.BaseSampler:
        return self._inner

    def __str__(self) -> str:
        return f"UniqueSampler({self._inner})"

    def reseed_rng(self) -> None:
        self._rng = np.random.RandomState()
        self._inner.reseed_rng()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params = self._inner.sample_relative(study, trial, search_space)
        if not any(n in search_space and not is_continuous(search_space[n]) for n in params):
            return params  # nothing sampled (TPE's startup), or continuous values only: free
        records = self._claims.records(study, trial, cached=True)
        # Claim the parameters every finished trial has: conditional ones (TPE's groups sample
        # them for every trial) are absent from the records of trials that do not use them.
        common = optuna.search_space.intersection_search_space(
            [t for t, _ in records if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        )
        names = sorted(n for n in params if n in search_space and n in common and not search_space[n].single())
        if not names or any(is_continuous(search_space[n]) for n in names):
            return params
        space = Space({n: search_space[n] for n in names})
        current = [params]

        def choose(taken: set[Key], rnd: int) -> Key | None:
            for i in range(self._redraws + 1 if rnd == 0 else 2):
                if i > 0:
                    current[0] = self._inner.sample_relative(study, trial, search_space)
                k = space.key_of(current[0])
                if k is None:
                    return None
                if k not in taken:
                    return k
            # After a clash, pick among the nearest few at random so two workers in lockstep part ways.
            return self._nearest_free(space, k, taken, 1 if rnd == 0 else 5)

        key = self._claims.settle(study, trial, PROPOSAL_ATTR, space, choose, records)
        if key is None:
            return current[0] if set(names) == set(current[0]) else {}
        return {**current[0], **space.values(key)}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        draw = lambda: self._inner.sample_independent(study, trial, param_name, param_distribution)  # noqa: E731
        return self._claims.independent(
            study, trial, param_name, param_distribution, draw, self._rng, self._independent_tries, cached=True
        )

    def _nearest_free(self, space: Space, key: Key, taken: set[Key], among: int) -> Key | None:
        """A free point near ``key`` (ties at random), or None when none is found."""
        grid = space.grid()
        if grid is not None:
            rows = [row for row in (tuple(map(float, r)) for r in grid) if row not in taken]
            if not rows:
                return None
            free = np.array(rows)
            dist = np.zeros(len(free))
            for i, d in enumerate(space.dims):
                if d.choices is not None:
                    dist += free[:, i] != key[i]
                else:
                    dist += np.abs(d.to_unit(free[:, i]) - d.to_unit(np.array([key[i]])))
            order = np.lexsort((self._rng.uniform(size=len(free)), dist))
            return rows[order[self._rng.randint(min(among, len(order)))]]
        # Too many points to enumerate: random moves of 1, 2, ... dimensions away from the point.
        for m in range(1, len(space.dims) + 1):
            for _ in range(16):
                moved = list(key)
                for i in self._rng.choice(len(space.dims), m, replace=False):
                    moved[i] = float(self._rng.randint(space.dims[i].n))  # type: ignore[arg-type]
                if tuple(moved) not in taken:
                    return tuple(moved)
        return None
