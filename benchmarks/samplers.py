"""Samplers side by side with parallel workers: the service's ``bayesian`` tuner (both
acquisitions) against Optuna's own ``GPSampler`` and the service's ``tpe``, on Branin (2-d) and
Hartmann6 (6-d).

Why: ``bayesian`` is the service's own Gaussian process (scikit-learn, no torch); Optuna 5 ships
``GPSampler`` (torch). Is ours as good, with workers running in parallel, and at what cost per
suggestion?

Every run is one study in Optuna's ``InMemoryStorage`` with ``--workers`` threads, each with its
own ``Study`` object and its own sampler (as the service's worker processes have: the tuner's
sampler for worker *i*, seed ``seed + 7919 * i``), asking and telling until the budget is spent.
Each evaluation sleeps ``--eval-seconds`` after computing the function, so while one worker
suggests, the others' trials are RUNNING with known parameters, as with real (slow) trials; how
each sampler treats those pending trials is what parallel search tests:

- ``bayesian`` (``tuners.make`` for tuner ``bayesian``, its default ``acquisition: ei``:
  ``tuner_service.tuners.bayesian.BayesianSampler``): ``scale * Matern 5/2`` GP with one length
  scale per parameter (at most 2 on the [0, 1] scale) and a fitted noise level (scikit-learn;
  each fit starts from the sampler's previous optimum plus one random restart; past 50 trials
  only once the data grew by 10%), log expected improvement over 2000 random candidates +
  L-BFGS-B refinements from the best 5 and the best trial; random for the first 10 completed
  trials. RUNNING trials with a point (their params, or the proposal they claimed in system
  attributes) enter the GP as fantasies at the pessimistic ``mean + std`` (keras-tuner's rule;
  the kernel stays as fitted on completed trials), and no point any trial holds or claims is
  proposed again.
- ``bayesian_ucb`` (tuner ``bayesian`` with ``acquisition: ucb``, what ``kt.BayesianOptimization``
  runs, and what ``bayesian`` was until 2026-12-06): keras-tuner's GP: one length scale, fixed
  noise ``alpha``, 20 optimiser restarts, lower confidence bound ``mean - 2.6 std``, random for the
  first ``3 x dimensions`` completed trials; the same candidates, fantasies and exclusion as above.
- ``GPSampler`` (``optuna.samplers.GPSampler(seed=...)``, defaults): Matern 5/2 ARD GP fitted in
  torch (priors on length scales, scale and noise; warm-started from its previous fit), log
  expected improvement maximised from 2048 quasi-random points and the best trial by 10 batched
  L-BFGS-B local searches; random for the first 10 completed trials. RUNNING trials whose point
  is known (their params, or the relative params another GPSampler wrote to the
  ``gp:relative_params`` system attribute) make it switch to ``qLogEI``: 128 quasi-Monte-Carlo
  draws from the GP's joint posterior at the pending points and the candidate, scoring the
  improvement of the best of {pending, candidate}, so a candidate next to a pending point adds
  little (sequential greedy batch selection; no fantasy values, no hard exclusion).
- ``tpe`` (``tuners.make`` for tuner ``tpe``): Optuna's ``TPESampler(multivariate=True, group=True,
  constant_liar=True, n_startup_trials=10)`` inside the service's ``UniqueSampler``. Constant
  liar: RUNNING trials count as the worst trials (the "above" group), so workers steer away from
  each other's points; ``UniqueSampler`` changes nothing on continuous spaces.
- ``random`` (the baseline, tuner ``random``): trial *n*'s point depends only on (seed, n), so it
  runs with one worker and no sleep and proposes exactly what 4 workers would.

Budgets are separate studies (a 20-trial study is not the prefix of a 50-trial one). Time per
suggestion is the sampler's CPU time on the worker's thread (``before_trial``, search space,
relative and independent sampling) over the suggestions its model made (completed trials at
least its startup count), so other load on the machine and waiting for the GIL do not count; it
is comparable across samplers within one run, not across machines. The objective functions and
their optima are ``search_quality.py``'s. No Keras: the digits space of ``search_quality.py`` is
not run here (its trials would dominate the time and it answers a different question).

Run: ``PYTHONPATH=. python benchmarks/samplers.py [--seeds 10] [--budgets 20 50] [--workers 4] [--quick]``
(GPSampler needs ``torch`` and ``scipy`` in the environment; without torch it is left out.)
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, fmt, log, machine, make_spec, median, parser, table  # noqa: E402
from search_quality import FUNCTIONS  # noqa: E402

SAMPLERS = ("bayesian", "bayesian_ucb", "gp", "tpe")
LABEL = {"bayesian": "bayesian (service, ei)", "bayesian_ucb": "bayesian (service, ucb)", "gp": "GPSampler (Optuna)",
         "tpe": "tpe (service)", "random": "random"}
NO_TORCH = "GPSampler needs torch (pip install torch); compared bayesian and TPE only"


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def startup_trials(name: str, dims: int) -> int:
    """Completed trials before the sampler's model is used (each sampler's default)."""
    from tuner_service.tuners import BayesianOptions, TPEOptions
    from tuner_service.tuners.bayesian import N_INITIAL_EI

    if name == "bayesian":
        return BayesianOptions().num_initial_points or N_INITIAL_EI
    if name == "bayesian_ucb":
        return BayesianOptions().num_initial_points or max(3 * dims, 3)
    if name == "tpe":
        return TPEOptions().n_startup_trials
    if name == "gp":
        return 10  # GPSampler(n_startup_trials=10)
    return 0


def build_sampler(name: str, seed: int, worker: int) -> Any:
    """Worker ``worker``'s sampler: the service's tuner (as its worker process builds it) or GPSampler."""
    if name == "gp":
        import optuna

        return optuna.samplers.GPSampler(seed=(seed + 7919 * worker) % 2**32)
    from tuner_service import tuners

    tuner: str | dict[str, Any] = {"name": "bayesian", "acquisition": "ucb"} if name == "bayesian_ucb" else name
    return tuners.make(make_spec(f"{name}_{seed}", tuner=tuner, seed=seed), worker)[0]


def timed_sampler(inner: Any, dims: int) -> Any:
    """``inner`` behind a pass-through sampler that records, per trial, the thread CPU seconds spent
    suggesting, how many trials had completed and how many others were RUNNING with a full point."""
    import optuna
    from optuna.trial import TrialState

    class Timed(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.inner = inner
            self.cpu: dict[int, float] = {}
            self.seen: dict[int, tuple[int, int]] = {}  # trial number -> (completed, pending with a point)

        def _timed(self, trial: Any, call: Any, *args: Any) -> Any:
            t0 = time.thread_time()
            try:
                return call(*args)
            finally:
                self.cpu[trial.number] = self.cpu.get(trial.number, 0.0) + time.thread_time() - t0

        def reseed_rng(self) -> None:
            inner.reseed_rng()

        def before_trial(self, study: Any, trial: Any) -> None:
            self._timed(trial, inner.before_trial, study, trial)

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)  # outside the timing
            done = sum(t.state == TrialState.COMPLETE for t in trials)
            pending = sum(t.state == TrialState.RUNNING and t.number != trial.number and len(t.params) == dims
                          for t in trials)
            self.seen[trial.number] = (done, pending)
            return self._timed(trial, inner.infer_relative_search_space, study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self._timed(trial, inner.sample_relative, study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return self._timed(trial, inner.sample_independent, study, trial, name, dist)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            inner.after_trial(study, trial, state, values)

    return Timed()


_WARM: set[str] = set()


def warm_up(sampler_name: str) -> None:
    """Once per process and sampler: a short sequential study past the startup phase, so imports
    (torch, scikit-learn's GP) and first-call costs are not timed as a suggestion."""
    import optuna

    if sampler_name in _WARM:
        return
    fn, bounds, _ = FUNCTIONS["branin"]
    study = optuna.create_study(sampler=build_sampler(sampler_name, 12345, 0))
    study.optimize(lambda t: fn({k: t.suggest_float(k, lo, hi) for k, (lo, hi) in bounds.items()}),
                   n_trials=startup_trials(sampler_name, len(bounds)) + 2)
    _WARM.add(sampler_name)


def run_one(job: tuple[str, str, int, int, int, float]) -> dict[str, Any]:
    """One study: ``workers`` threads minimise ``fn`` with ``sampler`` until ``budget`` trials exist."""
    fn_name, sampler_name, seed, budget, workers, eval_seconds = job
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")  # ExperimentalWarning for TPE's group, GP fit warnings
    warm_up(sampler_name)
    fn, bounds, optimum = FUNCTIONS[fn_name]
    dims = len(bounds)
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s", direction="minimize")
    lock, issued, errors = threading.Lock(), [0], []
    samplers = [timed_sampler(build_sampler(sampler_name, seed, i), dims) for i in range(workers)]

    def worker(sampler: Any) -> None:
        study = optuna.load_study(study_name="s", storage=storage, sampler=sampler)
        try:
            while True:
                with lock:
                    if issued[0] >= budget:
                        return
                    issued[0] += 1
                trial = study.ask()
                value = fn({k: trial.suggest_float(k, lo, hi) for k, (lo, hi) in bounds.items()})
                if eval_seconds:
                    time.sleep(eval_seconds)
                study.tell(trial, value)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(s,)) for s in samplers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name="s", storage=storage)
    startup = startup_trials(sampler_name, dims)
    cpu, model_cpu, pending, model_based = [], [], [], 0
    for s in samplers:
        for number, seconds in s.cpu.items():
            cpu.append(seconds)
            done, pend = s.seen.get(number, (0, 0))
            if done >= startup and sampler_name != "random":
                model_cpu.append(seconds)
                pending.append(pend)
                model_based += 1
    return {"fn": fn_name, "sampler": sampler_name, "seed": seed, "budget": budget, "trials": len(study.trials),
            "best": study.best_value, "regret": study.best_value - optimum, "wall": wall,
            "cpu_all": cpu, "cpu_model": model_cpu, "pending": pending, "model_based": model_based}


def report(results: list[dict[str, Any]], names: list[str], budgets: list[int], seeds: int, workers: int,
           eval_seconds: float, gp_skipped: bool) -> tuple[str, dict[str, Any]]:
    by = {(r["fn"], r["sampler"], r["budget"], r["seed"]): r for r in results}
    rows, h2h, data = [], [], {}
    for fn_name, (_, bounds, _) in FUNCTIONS.items():
        dims = len(bounds)
        for budget in budgets:
            rnd = [by[(fn_name, "random", budget, s)]["regret"] for s in range(seeds)]
            base_cpu = math.nan
            for name in [*names, "random"]:
                runs = [by[(fn_name, name, budget, s)] for s in range(seeds)]
                regret = [r["regret"] for r in runs]
                wins = sum(a < b for a, b in zip(regret, rnd)) if name != "random" else None
                model_cpu = [x for r in runs for x in r["cpu_model"]]
                cpu = median(model_cpu) if model_cpu else math.nan
                if name == "bayesian":
                    base_cpu = cpu
                model_based = median([r["model_based"] for r in runs])
                pending = [p for r in runs for p in r["pending"]]
                data[f"{fn_name}@{budget}:{name}"] = {
                    "regret": regret, "best": [r["best"] for r in runs], "wins_vs_random": wins,
                    "cpu_per_model_suggestion": cpu, "model_based_per_run": model_based,
                    "pending_median": median(pending) if pending else None,
                    "wall": [r["wall"] for r in runs]}
                rows.append([
                    fn_name, budget, LABEL[name], fmt(median([r["best"] for r in runs]), 5), fmt(median(regret)),
                    fmt(max(regret)), "-" if wins is None else f"{wins} / {seeds}",
                    "-" if name == "random" else f"{fmt(model_based)} ({startup_trials(name, dims)})",
                    "-" if name == "random" or not pending else fmt(median(pending)),
                    "-" if name == "random" else (fmt(cpu) if model_cpu else "n/a"),
                    "-" if name == "random" or not model_cpu or not base_cpu > 0 else f"{fmt(cpu / base_cpu, 2)}x",
                ])
            pairs = [("bayesian", other) for other in ("bayesian_ucb", "gp", "tpe") if other in names]
            for a, b in pairs:
                ra = [by[(fn_name, a, budget, s)]["regret"] for s in range(seeds)]
                rb = [by[(fn_name, b, budget, s)]["regret"] for s in range(seeds)]
                wa, wb = sum(x < y for x, y in zip(ra, rb)), sum(y < x for x, y in zip(ra, rb))
                data[f"{fn_name}@{budget}:{a}_vs_{b}"] = {"wins": wa, "losses": wb, "ties": seeds - wa - wb}
                h2h.append([fn_name, budget, f"{LABEL[a]} vs {LABEL[b]}", wa, wb, seeds - wa - wb])
    m = machine()
    versions = ", ".join(f"{k} {m[k]}" for k in ("optuna", "scikit-learn", "numpy") if k in m)
    for dist in ("torch", "scipy"):
        try:
            from importlib.metadata import version

            versions += f", {dist} {version(dist)}"
        except Exception:
            pass
    md = (NO_TORCH + "\n\n" if gp_skipped else "") + (
        f"{workers} worker threads per study (each its own sampler, seeded as the service seeds worker *i*), "
        f"in-memory storage, each evaluation sleeping {fmt(eval_seconds)} s so the other workers' trials are "
        f"pending while one suggests; budgets are separate studies; {seeds} seeds; minimised, regret = best "
        f"found - known optimum (Branin {FUNCTIONS['branin'][2]}, Hartmann6 {FUNCTIONS['hartmann6'][2]}). "
        "`random`: the service's random tuner (trial n's point depends on (seed, n) only, so one worker "
        "proposes what four would). The digits (Keras) space is not run here: see search_quality.py.\n\n"
        + table(["function", "budget", "sampler", "median best", "median regret", "worst regret",
                 "seeds better than random", "model-based suggestions per run (startup)",
                 "pending trials seen (median)", "CPU s per model-based suggestion (median)", "vs bayesian"], rows)
        + "\nHead to head, same seed and budget (lower regret wins):\n\n"
        + table(["function", "budget", "pair", "first wins", "second wins", "ties"], h2h)
        + f"\nMachine: {m.get('nproc')} cores, {m.get('cpu', '?')}, load {m.get('loadavg')}; {versions}.\n")
    return md, data


def main() -> None:
    p = parser((__doc__ or "").split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budgets", type=int, nargs="+", default=[20, 50], help="trials per study")
    p.add_argument("--workers", type=int, default=4, help="worker threads per study")
    p.add_argument("--eval-seconds", type=float, default=1.0, help="sleep per evaluation (a slow trial)")
    p.add_argument("--processes", type=int, default=6,
                   help="studies at once (they mostly sleep; the CPU time per suggestion is per thread)")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.budgets, args.eval_seconds = 2, [16], 0.2
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # one BLAS/OpenMP thread per worker thread (GPSampler advises it)
    gp_skipped = not torch_available()  # then NO_TORCH is the markdown's first line
    names = [n for n in SAMPLERS if not (n == "gp" and gp_skipped)]
    jobs = [(fn, name, seed, budget, args.workers, args.eval_seconds)
            for budget in sorted(args.budgets, reverse=True) for name in names for fn in FUNCTIONS
            for seed in range(args.seeds)]
    jobs += [(fn, "random", seed, budget, 1, 0.0) for budget in args.budgets for fn in FUNCTIONS
             for seed in range(args.seeds)]
    log(f"samplers: {len(jobs)} studies ({', '.join(names)} + random), {args.processes} processes")
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.processes) as pool:
        results = pool.map(run_one, jobs, chunksize=1)
    log(f"samplers: done in {time.perf_counter() - t0:.0f} s")
    md, data = report(results, names, args.budgets, args.seeds, args.workers, args.eval_seconds, gp_skipped)
    emit(args, "Samplers with parallel workers: bayesian vs GPSampler vs tpe", md,
         {"results": data, "gp_skipped": gp_skipped}, [])


if __name__ == "__main__":
    main()
