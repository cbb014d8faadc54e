"""Worker memory over many Keras trials, and sampler cost as a study grows.

Why: one worker process serves many trials (imports and data are paid once), so anything a
trial leaves behind accumulates for the life of the worker; and model-based samplers refit on
every finished trial, so their cost per suggestion grows with the study.

1. Worker RSS: a service ``Worker`` in a fresh process runs 200 consecutive trials of the
   trivial Keras model (``benchmarks/models.py``) on SQLite; VmRSS after every trial, and each
   trial's wall time and ``gc.collect`` time (Keras' ``clear_session`` runs a full collection, so
   anything that leaks also makes every later trial slower). The runner drops the TensorFlow
   gradient-registry entries each trial registers and freezes its setup objects out of the
   collector (``tuner_service/runners/keras.py``); this shows whether anything else accumulates.
2. Sampler time per suggestion (``study.ask()`` + 6 ``suggest_float``) for ``bayesian`` and
   ``tpe`` (the service's options) with 50, 200 and 500 finished Hartmann6 trials in the
   service's SQLite storage (what a worker pays; the Bayesian sampler reads every trial).

Run: ``.venv/bin/python benchmarks/memory.py [--trials 200] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MODELS,
    Target,
    create_study,
    emit,
    fmt,
    fresh_url,
    log,
    make_spec,
    median,
    parser,
    rss_mb,
    run_json,
    scratch_dir,
    table,
)

SAMPLER_LEVELS = (50, 200, 500)


# --------------------------------------------------------------------------- 1. worker RSS (child process)


def child_rss(url: str, trials: int) -> dict[str, Any]:
    """Run ``trials`` Keras trials in one Worker; RSS, wall and gc time after every trial."""
    from overhead import GcTimer

    from tuner_service.worker import Worker

    gc_timer = GcTimer()
    data = {"source": f"{MODELS}:load_trivial", "validation_split": 0.2, "test_split": 0}
    spec = make_spec("memory", model=f"{MODELS}:TimedTrivial", max_trials=trials, max_epochs=1, seed=3, data=data)
    create_study(spec, url)
    worker = Worker(spec.name, url)
    hypermodel = worker.runner.hypermodel
    rss, wall, gcs = [rss_mb()], [], []
    last, last_gc = time.perf_counter(), gc_timer.spent

    def done(_state: str) -> None:
        nonlocal last, last_gc
        now = time.perf_counter()
        rss.append(rss_mb())
        wall.append(now - last)
        gcs.append(gc_timer.spent - last_gc)
        last, last_gc = now, gc_timer.spent

    worker.run(on_trial_done=done)
    work = [t["build"] + t["fit"] for t in hypermodel.timings]
    return {"rss": rss, "wall": wall, "gc": gcs, "work": work}


def rss_summary(label: str, out: dict[str, Any]) -> dict[str, Any]:
    rss, n = out["rss"], len(out["rss"]) - 1
    over = [w - k for w, k in zip(out["wall"], out["work"])]
    tail = slice(max(2, n - 20), n)

    def mean(values: list[float]) -> float:
        return sum(values) / max(1, len(values))

    return {
        "variant": label, "trials": n, "rss_start": rss[0], "rss_1": rss[1], "rss_end": rss[-1],
        "growth_1_end": rss[-1] - rss[1], "per_100": 100 * (rss[-1] - rss[min(10, n)]) / max(1, n - min(10, n)),
        "gc_early_ms": 1000 * mean(out["gc"][2:12]), "gc_late_ms": 1000 * mean(out["gc"][tail]),
        "overhead_early_ms": 1000 * mean(over[2:12]), "overhead_late_ms": 1000 * mean(over[tail]),
        "gc_max_late_ms": 1000 * max(out["gc"][tail], default=0.0),
    }


# --------------------------------------------------------------------------- 2. sampler time


def hartmann_trial(params: dict[str, float]) -> Any:
    import optuna
    from search_quality import hartmann6

    dists = {k: optuna.distributions.FloatDistribution(0.0, 1.0) for k in params}
    return optuna.trial.create_trial(params=params, distributions=dists, value=hartmann6(params))


def sampler_times(sampler_name: str, url: str, levels: tuple[int, ...], asks: int) -> dict[int, float]:
    """Median seconds per suggestion with ``level`` finished trials in the study."""
    import numpy as np
    import optuna
    from search_quality import hartmann6, make_sampler

    from tuner_service.storage import open_storage

    rng = np.random.default_rng(0)
    study = optuna.create_study(storage=open_storage(url), sampler=make_sampler(sampler_name, 0), direction="minimize")
    out: dict[int, float] = {}
    for level in levels:
        missing = level - len(study.trials)
        study.add_trials([hartmann_trial({f"x{i}": float(v) for i, v in enumerate(rng.random(6))})
                          for _ in range(missing)])
        times = []
        for _ in range(asks):
            t0 = time.perf_counter()
            trial = study.ask()
            params = {f"x{i}": trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)}
            times.append(time.perf_counter() - t0)
            study.tell(trial, hartmann6(params))
        out[level] = median(times)
        log(f"memory: {sampler_name} at {level} trials: {fmt(out[level])} s per suggestion")
    return out


# --------------------------------------------------------------------------- main


def render(rss_rows: list[dict[str, Any]], samplers: dict[str, dict[int, float]], levels: tuple[int, ...]) -> str:
    parts = []
    if rss_rows:
        parts.append("Worker RSS over consecutive trivial Keras trials (service Worker, SQLite), MB; gc.collect and "
                     "overhead (wall - build - fit) in ms per trial, means over trials 3-12 and over the last 20 (means, "
                     "not medians: the runner may collect garbage only every few trials), and the longest collection "
                     "among the last 20:\n\n"
                     + table(["variant", "trials", "RSS before", "after trial 1", "after last", "growth 1 -> last",
                              "MB per 100 trials (10 -> last)", "gc early", "gc late", "longest gc late",
                              "overhead early", "overhead late"],
                             [[r["variant"], r["trials"], r["rss_start"], r["rss_1"], r["rss_end"], r["growth_1_end"],
                               r["per_100"], r["gc_early_ms"], r["gc_late_ms"], r["gc_max_late_ms"], r["overhead_early_ms"],
                               r["overhead_late_ms"]] for r in rss_rows]))
    if samplers:
        parts.append("Seconds per suggestion (ask + 6 suggestions) on Hartmann6, service SQLite storage, by finished "
                     "trials:\n\n" + table(["sampler", *[f"@ {n}" for n in levels]],
                                           [[s, *[fmt(t[n]) for n in levels]] for s, t in samplers.items()]))
    return "\n".join(parts)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--asks", type=int, default=3, help="suggestions timed per level")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child_rss(args.url, args.trials)))
        return
    levels = SAMPLER_LEVELS
    if args.quick:
        args.trials, args.asks, levels = 12, 1, (20, 50)
    rss_rows: list[dict[str, Any]] = []
    samplers: dict[str, dict[int, float]] = {}
    with scratch_dir("memory") as directory:
        log(f"memory: {args.trials} Keras trials in one worker")
        url = fresh_url("sqlite", directory, None, "rss")
        cmd = [sys.executable, __file__, "--child", "--trials", str(args.trials), "--url", url]
        try:
            out, _ = run_json(cmd, timeout=120 + 10 * args.trials)
            rss_rows.append(rss_summary("as is", out))
        except Exception as exc:
            log(f"memory: worker run failed: {exc}")
        for sampler in ("bayesian", "tpe"):
            samplers[sampler] = sampler_times(sampler, fresh_url("sqlite", directory, None, f"s_{sampler}"), levels,
                                              args.asks)
    targets = []
    as_is = next((r for r in rss_rows if r["variant"] == "as is"), None)
    if as_is:
        targets.append(Target(f"worker RSS growth over {as_is['trials']} Keras trials", f"{fmt(as_is['growth_1_end'])} MB",
                              "<= 50 MB", as_is["growth_1_end"] <= 50))
    if "bayesian" in samplers and 200 in samplers["bayesian"]:
        t = samplers["bayesian"][200]
        targets.append(Target("bayesian suggestion at 200 finished trials", f"{fmt(t)} s", "<= 1 s", t <= 1))
    emit(args, "Memory and sampler cost", render(rss_rows, samplers, levels),
         {"rss": rss_rows, "samplers": {k: {str(n): v for n, v in t.items()} for k, t in samplers.items()}}, targets)


if __name__ == "__main__":
    main()
