"""Multi-objective search: hypervolume after N trials, the service's samplers against plain
Optuna's default multi-objective sampler, side by side on the same problems.

Each study runs through the service's trial loop (``lifecycle.TrialLoop``: claims, results
and values in its transactions) with ``WORKERS`` worker processes on one SQLite study, as
``submit --workers`` runs them; only the sampler differs:

- ``service tpe``: the ``tpe`` tuner (Optuna's TPE, multivariate + grouped, constant liar,
  inside the service's ``UniqueSampler``), multi-objective (MOTPE) when the study has two;
- ``service nsga2``: the ``nsga2`` tuner (Optuna's NSGA-II);
- ``optuna default``: ``optuna.samplers.TPESampler()`` with no arguments, what
  ``optuna.create_study(directions=[...])`` uses.

Problems (both objectives minimised, no Keras): ZDT1 (6 continuous variables in [0, 1]; its
front is f2 = 1 - sqrt(f1)); and a surrogate of the digits MLP's accuracy-against-size trade-off
(1-3 layers of 16-256 units by 16, a log learning rate, an optimizer: the space of
``studies/digits_model.py``; error rate falls with capacity and with the right learning rate,
parameters are counted as Keras counts them). Hypervolume with Optuna's own implementation
against a fixed reference point per problem; medians over seeds.

Run: ``.venv/bin/python benchmarks/multi_objective.py [--trials 40] [--seeds 3] [--quick]``
"""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Target, emit, fmt, log, make_spec, median, parser, scratch_dir, sqlite_url, table  # noqa: E402

WORKERS = 4
SAMPLERS = ("service tpe", "service nsga2", "optuna default")
REFERENCE = {"zdt1": (1.1, 11.0), "mlp": (1.0, 3.5)}  # (f1, f2) worse than anything a trial reaches


def zdt1_space(trial: Any) -> dict[str, Any]:
    return {f"x{i}": trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)}


def zdt1(p: dict[str, Any]) -> list[float]:
    x = [p[f"x{i}"] for i in range(6)]
    g = 1 + 9 * sum(x[1:]) / 5
    return [x[0], g * (1 - math.sqrt(x[0] / g))]


def mlp_space(trial: Any) -> dict[str, Any]:
    layers = trial.suggest_int("num_layers", 1, 3)
    p = {"num_layers": layers, **{f"units_{i}": trial.suggest_int(f"units_{i}", 16, 256, step=16) for i in range(layers)}}
    p["learning_rate"] = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    p["optimizer"] = trial.suggest_categorical("optimizer", ["adam", "rmsprop", "sgd"])
    return p


def mlp(p: dict[str, Any]) -> list[float]:
    """(validation error, parameters / 10^4) of a digits MLP, from a smooth surrogate."""
    widths = [64] + [p[f"units_{i}"] for i in range(p["num_layers"])] + [10]
    params = sum(a * b + b for a, b in zip(widths, widths[1:]))
    capacity = sum(widths[1:-1]) * (1 + 0.25 * (p["num_layers"] - 1))
    lr_miss = abs(math.log10(p["learning_rate"]) - {"adam": -3.0, "rmsprop": -3.2, "sgd": -2.2}[p["optimizer"]])
    error = 0.02 + 0.5 * math.exp(-capacity / 60) + 0.08 * lr_miss ** 2 + (0.01 if p["optimizer"] == "sgd" else 0.0)
    return [min(error, 1.0), params / 1e4]


PROBLEMS = {"zdt1": (zdt1_space, zdt1), "mlp": (mlp_space, mlp)}


class VectorRunner:
    """A runner returning several objective values of a pure function (no Keras)."""

    device, backend = "CPU", "none"

    def __init__(self, problem: str) -> None:
        self.space, self.fn = PROBLEMS[problem]

    def preflight(self) -> dict[str, Any]:
        return {}

    def run(self, trial: Any, *, prune: bool) -> Any:
        from tuner_service.runners import Outcome

        return Outcome(self.fn(self.space(trial)))


def _worker(index: int, url: str, name: str, sampler_name: str, problem: str, seed: int) -> None:
    import optuna

    from tuner_service import study as study_mod
    from tuner_service import tuners
    from tuner_service.lifecycle import TrialLoop
    from tuner_service.storage import open_storage

    storage = open_storage(url)
    spec = study_mod.stored_spec(study_mod.load(storage, name))
    if sampler_name == "optuna default":
        sampler: Any = optuna.samplers.TPESampler(seed=seed * 100 + index)
    else:
        sampler, _ = tuners.make(spec, worker=index)
    study = study_mod.load(storage, name, sampler=sampler)
    TrialLoop(study, VectorRunner(problem), lambda: {"worker": index}, prune=False).run()


def run_one(problem: str, sampler_name: str, seed: int, trials: int, directory: Path) -> dict[str, Any]:
    import numpy as np
    from optuna._hypervolume import compute_hypervolume
    from optuna.trial import TrialState

    from tuner_service import study as study_mod
    from tuner_service.storage import open_storage

    name = f"{problem}_{sampler_name.replace(' ', '_')}_{seed}"
    url = sqlite_url(directory, name)
    tuner = "nsga2" if sampler_name == "service nsga2" else "tpe"
    options = {"population_size": 10} if tuner == "nsga2" else {}
    spec = make_spec(name, tuner={"name": tuner, **options}, max_trials=trials, seed=seed)
    spec = spec.model_copy(update={"objective": spec.objective.model_copy(update={"name": "f1", "direction": "minimize"}),
                                   "more_objectives": [spec.objective.model_copy(update={"name": "f2",
                                                                                          "direction": "minimize"})]})
    study_mod.create(spec, open_storage(url))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(i, url, name, sampler_name, problem, seed)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(900)
    study = study_mod.load(open_storage(url, create=False), name)
    done = sorted((t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE),
                  key=lambda t: t.number)
    ref = np.asarray(REFERENCE[problem])
    out = {"problem": problem, "sampler": sampler_name, "seed": seed, "trials": len(done)}
    for k in (trials // 2, trials):
        points = np.asarray([t.values for t in done[:k]])
        inside = points[(points < ref).all(axis=1)] if len(points) else points
        out[f"hv@{k}"] = float(compute_hypervolume(inside, ref)) if len(inside) else 0.0
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.trials, args.seeds = 12, 1
    results = []
    with scratch_dir("mo") as directory:
        for problem in PROBLEMS:
            for seed in range(args.seeds):
                for sampler_name in SAMPLERS:
                    log(f"multi-objective: {problem}, {sampler_name}, seed {seed}")
                    results.append(run_one(problem, sampler_name, seed, args.trials, directory))
    half = args.trials // 2
    rows, data, targets = [], {}, []
    for problem in PROBLEMS:
        base = median([r[f"hv@{args.trials}"] for r in results if r["problem"] == problem
                       and r["sampler"] == "optuna default"])
        for sampler_name in SAMPLERS:
            runs = [r for r in results if r["problem"] == problem and r["sampler"] == sampler_name]
            hv_half, hv_full = median([r[f"hv@{half}"] for r in runs]), median([r[f"hv@{args.trials}"] for r in runs])
            data[f"{problem}/{sampler_name}"] = {"hv_half": hv_half, "hv_full": hv_full, "runs": runs}
            rows.append([problem, sampler_name, len(runs), fmt(hv_half), fmt(hv_full),
                         fmt(hv_full / base) if base else "n/a"])
        service = data[f"{problem}/service tpe"]["hv_full"]
        targets.append(Target(f"hypervolume after {args.trials} trials, {problem}: service tpe / Optuna default",
                              fmt(service / base) if base else "n/a", ">= 1.0x", bool(base) and service >= base))
    markdown = (f"{WORKERS} worker processes on one SQLite study per run (the service's trial loop), "
                f"{args.trials} trials, medians over {args.seeds} seed(s); hypervolume of the completed trials' "
                f"objective values (both minimised) against a fixed reference point (ZDT1 {REFERENCE['zdt1']}, "
                f"MLP surrogate {REFERENCE['mlp']}); larger is better.\n\n"
                + table(["problem", "sampler", "runs", f"hypervolume @{half}", f"hypervolume @{args.trials}",
                         "vs Optuna default"], rows))
    emit(args, "Multi-objective search: hypervolume", markdown, data, targets)


if __name__ == "__main__":
    main()
