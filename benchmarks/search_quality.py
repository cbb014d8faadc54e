"""Search quality of the tuners: what each finds for a given number of trials.

Why: a tuner is only worth its cost if it finds better configurations than random search for
the same budget (or the same configurations for less). Three questions:

1. Digits MLP space (the shape of ``studies/digits_model.py``: 1-3 layers, widths 16-256 step
   16, activation, a regulariser switch, log learning rate, optimizer): best validation accuracy
   after 10, 20 and 40 trials for ``random``, ``tpe``, ``bayesian`` and ``hyperband``, median over
   seeds; for Hyperband also the epochs it spent until it matched random search's final best.
   Every study runs through the service (``study.create`` + ``Worker.run``, its samplers and
   pruner) but the model is a **cheaper one**: scikit-learn's ``MLPClassifier`` trained epoch by
   epoch with ``partial_fit`` (9 epochs at most), not Keras, because a Keras model costs ~0.6 s
   of tracing per trial and the 800 trials here must fit the benchmarks' 20-minute budget.
   ``grid`` does not apply to this space (a continuous learning rate) and is reported as n/a.
2. Branin (2-d) and Hartmann6 (6-d), pure functions, the samplers used directly
   (``BayesianSampler``, the service's ``tpe`` = Optuna's ``TPESampler`` with the service's options
   inside ``UniqueSampler``, ``RandomSampler``):
   regret after 50 trials against random search after 100, over 10 seeds.
3. Four worker processes on one SQLite study, a discrete space of 144 points, 40 trials: the
   share of duplicate proposals (trials whose parameters an earlier trial already had) for
   ``bayesian`` and ``tpe`` (target: 0 for both).

Run: ``.venv/bin/python benchmarks/search_quality.py [--seeds 5] [--trials 40] [--fn-seeds 10] [--quick]``
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    FunctionRunner,
    Target,
    create_study,
    emit,
    fmt,
    log,
    make_spec,
    median,
    parser,
    scratch_dir,
    sqlite_url,
    table,
)

TUNERS = ("random", "tpe", "bayesian", "hyperband")
MAX_EPOCHS = 9  # Hyperband with factor 3: rungs at 1, 3 and 9 epochs
CHECKPOINTS = (10, 20, 40)


# --------------------------------------------------------------------------- 1. digits MLP


class DigitsMLPRunner:
    """A ``KerasRunner`` stand-in: the digits MLP space drawn through the service's ``hp``,
    trained with scikit-learn epoch by epoch, reporting validation accuracy after every epoch
    (so Hyperband prunes exactly as it does a Keras trial). Value = best epoch's accuracy."""

    device = "CPU"
    backend = "scikit-learn"

    def __init__(self, epochs: int = MAX_EPOCHS) -> None:
        from tuner_service import data as data_mod
        from tuner_service.spec import DataSpec

        d = data_mod.load(DataSpec(source="sklearn:digits", validation_split=0.2, test_split=0.2), 0)
        self.x, self.y = d.x_train.reshape(len(d.x_train), -1), d.y_train
        self.xv, self.yv = d.x_val.reshape(len(d.x_val), -1), d.y_val
        self.epochs = epochs

    @staticmethod
    def model(hp: Any) -> Any:
        from sklearn.neural_network import MLPClassifier

        layers = tuple(hp.Int(f"units_{i}", 16, 256, step=16, default=128)
                       for i in range(hp.Int("num_layers", 1, 3, default=2)))
        activation = hp.Choice("activation", ["relu", "tanh"])
        alpha = 1e-3 if hp.Boolean("regularize") else 1e-5
        lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
        solver = hp.Choice("optimizer", ["adam", "sgd"])
        return MLPClassifier(hidden_layer_sizes=layers, activation=activation, alpha=alpha, solver=solver,
                             learning_rate_init=lr, momentum=0.9, batch_size=128, random_state=0)

    def run(self, trial: Any, *, prune: bool, extra_callbacks: Any = None) -> Any:
        from tuner_service.hp import TrialHyperParameters
        from tuner_service.runners import Outcome

        clf = self.model(TrialHyperParameters(trial))
        best, best_epoch, epochs_run, pruned = -1.0, 0, 0, False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for epoch in range(1, self.epochs + 1):
                clf.partial_fit(self.x, self.y, classes=list(range(10)))
                acc = float(clf.score(self.xv, self.yv))
                epochs_run = epoch
                if acc > best:
                    best, best_epoch = acc, epoch
                trial.report(acc, epoch)
                if prune and epoch < self.epochs and trial.should_prune():
                    pruned = True
                    break
        attrs = {"epochs_run": epochs_run, "best_epoch": best_epoch}
        return Outcome(None if pruned else [best], pruned, attrs)


def digits_job(job: tuple[str, int, int, str]) -> dict[str, Any]:
    """One (tuner, seed) study through the service; best-so-far and epochs per trial."""
    tuner, seed, trials, directory = job
    from optuna.trial import TrialState

    from tuner_service import study as study_mod
    from tuner_service.storage import open_storage
    from tuner_service.worker import Worker

    name = f"q_{tuner}_{seed}"
    url = sqlite_url(Path(directory), name)
    create_study(make_spec(name, tuner=tuner, max_trials=trials, max_epochs=MAX_EPOCHS, seed=seed), url)
    t0 = time.perf_counter()
    Worker(name, url, runner=DigitsMLPRunner()).run()
    seconds = time.perf_counter() - t0
    study = study_mod.load(open_storage(url, create=False), name)
    rows = [(t.number, t.value if t.state == TrialState.COMPLETE else None, t.user_attrs.get("epochs_run", 0))
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    return {"tuner": tuner, "seed": seed, "rows": rows, "seconds": seconds}


def best_after(rows: list[tuple[int, float | None, int]], k: int) -> float:
    values = [v for _, v, _ in rows[:k] if v is not None]
    return max(values) if values else float("nan")


def epochs_to_reach(rows: list[tuple[int, float | None, int]], level: float) -> float:
    """Epochs spent (in trial order) until a completed trial reaches ``level``; inf if never."""
    spent = 0
    for _, value, epochs in rows:
        spent += epochs
        if value is not None and value >= level - 1e-12:
            return float(spent)
    return math.inf


def digits_section(results: list[dict[str, Any]], trials: int) -> tuple[str, dict[str, Any], list[Target]]:
    by = {(r["tuner"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    checkpoints = [c for c in CHECKPOINTS if c <= trials] or [trials]
    rows, data = [], {}
    for tuner in TUNERS:
        runs = [by[(tuner, s)] for s in seeds if (tuner, s) in by]
        if not runs:
            continue
        bests = {c: median([best_after(r["rows"], c) for r in runs]) for c in checkpoints}
        epochs = median([sum(e for _, _, e in r["rows"]) for r in runs])
        data[tuner] = {"best": bests, "epochs": epochs, "seconds": median([r["seconds"] for r in runs])}
        rows.append([tuner] + [fmt(bests[c], 4) for c in checkpoints] + [fmt(epochs), fmt(data[tuner]["seconds"])])
    rows.append(["grid", *(["n/a"] * len(checkpoints)), "n/a",
                 "n/a: the space has a continuous learning rate (grid needs Choice/Boolean/stepped values)"])
    md = (f"Digits MLP space (scikit-learn MLP, <= {MAX_EPOCHS} epochs, see above), best validation accuracy after "
          f"k trials, median over {len(seeds)} seeds:\n\n"
          + table(["tuner", *[f"best @ {c}" for c in checkpoints], "epochs spent (all trials)", "seconds per study"],
                  rows))
    shares, targets = [], []
    for s in seeds:
        if ("random", s) in by and ("hyperband", s) in by:
            rnd = by[("random", s)]["rows"]
            level = best_after(rnd, trials)
            spent = epochs_to_reach(by[("hyperband", s)]["rows"], level)
            shares.append(spent / sum(e for _, _, e in rnd))
    if shares:
        reached = sum(math.isfinite(x) for x in shares)
        med = median(shares)
        md += (f"\nHyperband: epochs until it matched random search's final best (same seed), as a share of random "
               f"search's {trials} x {MAX_EPOCHS} epochs: median {fmt(100 * med) if math.isfinite(med) else 'never'}%"
               f"; per seed: {', '.join('never' if not math.isfinite(x) else fmt(100 * x) + '%' for x in shares)}"
               f" ({reached} of {len(shares)} seeds reached it within {trials} trials).\n")
        data["hyperband_share"] = shares
        targets.append(Target("hyperband epochs to reach random's final best", f"{fmt(100 * med)}% (median), "
                              f"reached in {reached}/{len(shares)} seeds", "<= 25%", med <= 0.25))
    return md, data, targets


# --------------------------------------------------------------------------- 2. pure functions


def branin(p: dict[str, float]) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_H_A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
_H_P = [[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]]
_H_ALPHA = [1.0, 1.2, 3.0, 3.2]


def hartmann6(p: dict[str, float]) -> float:
    x = [p[f"x{i}"] for i in range(6)]
    return -sum(a * math.exp(-sum(_H_A[i][j] * (x[j] - 1e-4 * _H_P[i][j]) ** 2 for j in range(6)))
                for i, a in enumerate(_H_ALPHA))


FUNCTIONS: dict[str, tuple[Any, dict[str, tuple[float, float]], float]] = {
    "branin": (branin, {"x1": (-5.0, 10.0), "x2": (0.0, 15.0)}, 0.397887),
    "hartmann6": (hartmann6, {f"x{i}": (0.0, 1.0) for i in range(6)}, -3.32237),
}


def make_sampler(name: str, seed: int) -> Any:
    import optuna

    from tuner_service import tuners
    from tuner_service.tuners.bayesian import BayesianSampler

    if name == "bayesian":
        return BayesianSampler(seed=seed)
    if name == "tpe":  # the service's own tpe sampler (TPESampler inside UniqueSampler), worker 0
        return tuners.make(make_spec(f"tpe_{seed}", tuner="tpe", seed=seed))[0]
    return optuna.samplers.RandomSampler(seed=seed)


def function_job(job: tuple[str, str, int, int]) -> dict[str, Any]:
    """Minimise one function with one sampler for ``n`` trials; regret = best - optimum."""
    import optuna

    fn_name, sampler_name, seed, n = job
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    fn, bounds, optimum = FUNCTIONS[fn_name]
    study = optuna.create_study(sampler=make_sampler(sampler_name, seed), direction="minimize")
    study.optimize(lambda t: fn({k: t.suggest_float(k, lo, hi) for k, (lo, hi) in bounds.items()}), n_trials=n)
    return {"fn": fn_name, "sampler": sampler_name, "seed": seed, "regret": study.best_value - optimum}


def function_section(results: list[dict[str, Any]], seeds: int) -> tuple[str, dict[str, Any], list[Target]]:
    by = {(r["fn"], r["sampler"], r["seed"]): r["regret"] for r in results}
    rows, data, targets = [], {}, []
    for fn in FUNCTIONS:
        rnd = [by.get((fn, "random", s), math.nan) for s in range(seeds)]
        for sampler in ("bayesian", "tpe", "random"):
            reg = [by.get((fn, sampler, s), math.nan) for s in range(seeds)]
            wins = sum(a < b for a, b in zip(reg, rnd)) if sampler != "random" else None
            data[f"{fn}:{sampler}"] = {"regret": reg, "wins_vs_random100": wins}
            n = 100 if sampler == "random" else 50
            rows.append([fn, f"{sampler} @ {n}", fmt(median(reg)), fmt(max(reg)),
                         "-" if wins is None else f"{wins} / {seeds}"])
        wins = data[f"{fn}:bayesian"]["wins_vs_random100"]
        targets.append(Target(f"bayesian@50 beats random@100 on {fn}", f"{wins} of {seeds} seeds", ">= 8 of 10",
                              wins >= math.ceil(0.8 * seeds)))
    md = (f"Pure functions, regret (best found - optimum), {seeds} seeds:\n\n"
          + table(["function", "sampler @ trials", "median regret", "worst regret", "seeds better than random @ 100"],
                  rows))
    return md, data, targets


# --------------------------------------------------------------------------- 3. duplicates


def discrete_space(trial: Any) -> dict[str, Any]:
    return {"a": trial.suggest_int("a", 0, 5), "b": trial.suggest_int("b", 0, 5),
            "c": trial.suggest_categorical("c", ["w", "x", "y", "z"])}


def discrete_objective(p: dict[str, Any]) -> float:
    return (p["a"] - 2) ** 2 + (p["b"] - 3) ** 2 + 0.5 * "wxyz".index(p["c"])


def _duplicate_worker(index: int, url: str, name: str, sleep: float) -> None:
    from tuner_service.worker import Worker, WorkerOptions

    Worker(name, url, WorkerOptions(index=index), runner=FunctionRunner(discrete_space, discrete_objective, sleep)).run()


def duplicates_run(tuner: str, seed: int, trials: int, workers: int, directory: Path) -> dict[str, Any]:
    """``workers`` processes on one SQLite study; share of trials repeating an earlier trial's point."""
    from optuna.trial import TrialState

    from tuner_service import study as study_mod
    from tuner_service.storage import open_storage

    name = f"dup_{tuner}_{seed}"
    url = sqlite_url(directory, name)
    create_study(make_spec(name, tuner=tuner, max_trials=trials, seed=seed), url)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_duplicate_worker, args=(i, url, name, 0.05)) for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    study = study_mod.load(open_storage(url, create=False), name)
    points = [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    return {"tuner": tuner, "seed": seed, "trials": len(points), "duplicates": len(points) - len(set(points))}


def duplicates_section(results: list[dict[str, Any]], workers: int) -> tuple[str, dict[str, Any]]:
    rows, data = [], {}
    for tuner in ("bayesian", "tpe"):
        runs = [r for r in results if r["tuner"] == tuner]
        if not runs:
            continue
        total, dup = sum(r["trials"] for r in runs), sum(r["duplicates"] for r in runs)
        data[tuner] = {"trials": total, "duplicates": dup, "share": dup / total if total else math.nan}
        rows.append([tuner, len(runs), total, dup, f"{fmt(100 * data[tuner]['share'])}%",
                     " / ".join(str(r["duplicates"]) for r in runs)])
    md = (f"{workers} worker processes on one SQLite study, discrete space of 144 points (a, b in 0..5, c in 4 "
          "choices), duplicate = a completed trial with the parameters of an earlier one:\n\n"
          + table(["tuner", "studies", "trials", "duplicates", "share", "duplicates per study"], rows))
    return md, data


# --------------------------------------------------------------------------- main


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds for the digits studies")
    p.add_argument("--trials", type=int, default=40, help="trials per digits study")
    p.add_argument("--fn-seeds", type=int, default=10, help="seeds for Branin/Hartmann6")
    p.add_argument("--dup-seeds", type=int, default=3)
    p.add_argument("--dup-trials", type=int, default=40)
    p.add_argument("--processes", type=int, default=2, help="parallel studies (digits, functions)")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.trials, args.fn_seeds, args.dup_seeds, args.dup_trials = 2, 10, 2, 1, 12
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        # One BLAS thread per process: two processes on two cores; OpenBLAS threads spinning
        # against each other made scikit-learn's small matrix products ~10x slower.
        os.environ.setdefault(var, "1")
    with scratch_dir("quality") as directory:
        # Bayesian studies are the slowest: start them first so the two processes finish together.
        jobs = [(t, s, args.trials, str(directory)) for t in ("bayesian", "tpe", "hyperband", "random")
                for s in range(args.seeds)]
        log(f"search_quality: {len(jobs)} digits studies x {args.trials} trials, {args.processes} processes")
        with mp.get_context("spawn").Pool(args.processes) as pool:
            digits = pool.map(digits_job, jobs, chunksize=1)
            fjobs = [(fn, s, seed, 50 if s != "random" else 100) for s in ("bayesian", "tpe", "random")
                     for fn in FUNCTIONS for seed in range(args.fn_seeds)]
            log(f"search_quality: {len(fjobs)} pure-function runs")
            functions = pool.map(function_job, fjobs, chunksize=1)
        dups = []
        for tuner in ("bayesian", "tpe"):
            for seed in range(args.dup_seeds):
                log(f"search_quality: duplicates, {tuner}, seed {seed}")
                dups.append(duplicates_run(tuner, seed, args.dup_trials, 4, directory))
    md1, d1, t1 = digits_section(digits, args.trials)
    md2, d2, t2 = function_section(functions, args.fn_seeds)
    md3, d3 = duplicates_section(dups, 4)
    targets = t1 + t2
    for tuner, d in d3.items():
        targets.append(Target(f"duplicate proposals, 4 workers, {tuner}", f"{fmt(100 * d['share'])}%", "0%",
                              d["duplicates"] == 0))
    emit(args, "Search quality", "\n".join([md1, md2, md3]), {"digits": d1, "functions": d2, "duplicates": d3},
         targets)


if __name__ == "__main__":
    main()
