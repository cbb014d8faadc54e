"""Per-trial overhead: wall time per trial minus the time spent inside build + fit.

Why: on small models Keras' own per-model cost is about a second, so what a tuning framework
adds per trial (storage round trips, bookkeeping, clean-up) decides how many trials an hour
buys. Measured, side by side in one run, for the same trivial model (1 epoch, 256 samples,
16 features; ``benchmarks/models.py``):

- the service: ``tuner_service.study.create`` + ``Worker(...).run()`` in-process, on SQLite and
  PostgreSQL;
- plain Optuna: ``study.optimize`` on the same storage (the service's engine settings), the same
  builder, ``trial.report`` every epoch and ``keras.backend.clear_session()`` per trial;
- keras-tuner ``RandomSearch`` on the same builder (it keeps its own files).

Each system runs in a fresh process. ``build + fit`` is timed inside the model itself
(``TimedTrivial``), net of the framework's callbacks, so the same definition of overhead applies
to all three; the first trials (warm-up) are dropped. ``gc.collect`` time is reported apart
(Keras' ``clear_session`` runs a full collection, which scans every live TensorFlow object).

Overhead growth: a fake objective without Keras (``FakeRunner``: 3 suggestions, 5 reports, the
attributes a Keras trial records) through ``Worker.run`` on SQLite, trial ~100 vs trial ~5,000,
plus the plain-Optuna equivalent (the anchor) and a cProfile of the service path.

Run: ``.venv/bin/python benchmarks/overhead.py [--trials 200] [--growth-trials 5000] [--quick]``
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MODELS,
    FakeRunner,
    Target,
    create_study,
    emit,
    fmt,
    fresh_url,
    log,
    make_spec,
    mask,
    maybe_postgres,
    median,
    percentile,
    run_json,
    scratch_dir,
    table,
)

WARMUP = 2  # first trials of each process dropped (first tracing, lazy imports)
KERAS_CONFIGS = (("service", "sqlite"), ("service", "postgresql"), ("optuna", "sqlite"), ("optuna", "postgresql"),
                 ("keras-tuner", "files"))


# --------------------------------------------------------------------------- child processes


class GcTimer:
    """Accumulates the time spent in ``gc.collect`` (Keras' ``clear_session`` and keras-tuner
    call it per trial); instrumentation only, behaviour is unchanged."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._collect = gc.collect

        def timed(*args: Any, **kwargs: Any) -> int:
            t0 = time.perf_counter()
            try:
                return self._collect(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t0

        gc.collect = timed


class TrialClock:
    """Marks the end of each trial; yields per-trial wall times and gc time per trial."""

    def __init__(self, gc_timer: GcTimer) -> None:
        self.gc_timer = gc_timer
        self.marks: list[float] = []
        self.gc_marks: list[float] = []

    def start(self) -> None:
        self.mark()

    def mark(self, *_: Any) -> None:
        self.marks.append(time.perf_counter())
        self.gc_marks.append(self.gc_timer.spent)

    def result(self, timings: list[dict[str, float]]) -> dict[str, Any]:
        walls = [b - a for a, b in zip(self.marks, self.marks[1:])]
        gcs = [b - a for a, b in zip(self.gc_marks, self.gc_marks[1:])]
        return {"wall": walls, "gc": gcs, "timings": timings}


def _trivial_spec(name: str, trials: int) -> Any:
    data = {"source": f"{MODELS}:load_trivial", "validation_split": 0.2, "test_split": 0}
    return make_spec(name, model=f"{MODELS}:TimedTrivial", tuner="random", max_trials=trials, max_epochs=1,
                     seed=1, data=data)


def child_service(url: str, trials: int) -> dict[str, Any]:
    """The service: create the study, then one in-process Worker runs every trial."""
    from tuner_service.worker import Worker

    clock = TrialClock(GcTimer())
    spec = _trivial_spec("overhead", trials)
    create_study(spec, url)
    worker = Worker(spec.name, url)
    hypermodel = worker.runner.hypermodel  # imports Keras and loads the data before the clock starts
    clock.start()
    worker.run(on_trial_done=clock.mark)
    return clock.result(hypermodel.timings)


def child_optuna(url: str, trials: int) -> dict[str, Any]:
    """Plain Optuna on the same storage: ``study.optimize`` with build + fit in the objective."""
    import keras
    import optuna
    from models import OptunaEpochReport, OptunaHP, TimedTrivial

    from tuner_service import data as data_mod
    from tuner_service.storage import open_storage

    d = data_mod.load(_trivial_spec("overhead", trials).data, 1)
    hypermodel = TimedTrivial()
    clock = TrialClock(GcTimer())
    study = optuna.create_study(storage=open_storage(url), sampler=optuna.samplers.RandomSampler(seed=1),
                                direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        hp = OptunaHP(trial)
        model = hypermodel.build(hp)
        report = OptunaEpochReport(trial)
        hypermodel.fit(hp, model, d.x_train, d.y_train, validation_data=(d.x_val, d.y_val), epochs=1,
                       batch_size=64, verbose=0, callbacks=[report])
        keras.backend.clear_session()
        return float(report.best)  # type: ignore[arg-type]

    clock.start()
    study.optimize(objective, n_trials=trials, callbacks=[clock.mark])
    return clock.result(hypermodel.timings)


def child_keras_tuner(trials: int) -> dict[str, Any]:
    """keras-tuner ``RandomSearch`` on the same model and data (its own trial files)."""
    import keras_tuner as kt
    from models import TimedTrivial, keras_tuner_without_tensorboard

    from tuner_service import data as data_mod

    keras_tuner_without_tensorboard()
    d = data_mod.load(_trivial_spec("overhead", trials).data, 1)
    hypermodel = TimedTrivial()
    clock = TrialClock(GcTimer())

    class Timed(kt.RandomSearch):
        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            clock.mark()

    with tempfile.TemporaryDirectory(prefix="bench-kt-") as directory:
        tuner = Timed(hypermodel, objective="val_accuracy", max_trials=trials, overwrite=True,
                      directory=directory, project_name="overhead", seed=1)
        clock.start()
        tuner.search(d.x_train, d.y_train, validation_data=(d.x_val, d.y_val), epochs=1, batch_size=64, verbose=0)
    return clock.result(hypermodel.timings)


def child_fake(url: str, trials: int, profile: str | None) -> dict[str, Any]:
    """The service's path with a fake objective (no Keras): per-trial wall times."""
    from tuner_service.worker import Worker

    spec = make_spec("fake", max_trials=trials)
    create_study(spec, url)
    worker = Worker(spec.name, url, runner=FakeRunner())
    marks = [time.perf_counter()]
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    worker.run(on_trial_done=lambda _s: marks.append(time.perf_counter()))
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    return {"wall": [b - a for a, b in zip(marks, marks[1:])]}


#: Steps of the service's per-trial path timed by ``child_breakdown``: (label, module, attribute path).
BREAKDOWN_STEPS = (
    ("claim loop: stale check + reconcile (every 5 s)", "tuner_service.lifecycle._transitions", "fail_stale"),
    ("claim: one transaction (slot or WAITING, run attrs, heartbeat row) + Trial()", "tuner_service.lifecycle._driver",
     "lc.claim"),
    ("claim loop: other (study attrs every 5 s, idle check)", "tuner_service.lifecycle._driver", "TrialLoop.next_trial"),
    ("heartbeat: thread start", "tuner_service.lifecycle._liveness", "Heartbeat.start"),
    ("trial.suggest_* (3)", "optuna.trial", "Trial._suggest"),
    ("trial.report (5)", "optuna.trial", "Trial.report"),
    ("dashboard note (decorate_trial)", "tuner_service.notes", "decorate_trial"),
    ("finish: after_trial + one transaction (attrs, values, state)", "tuner_service.lifecycle._driver", "lc.finish"),
)


def _wrap(module_name: str, path: str, spent: dict[str, float], label: str) -> bool:
    """Replace ``module.path`` (a function or a class attribute) with a timing wrapper."""
    import importlib

    owner: Any = importlib.import_module(module_name)
    *parents, attr = path.split(".")
    for name in parents:
        owner = getattr(owner, name, None)
    original = getattr(owner, attr, None) if owner is not None else None
    if original is None:
        return False

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

    setattr(owner, attr, timed)
    return True


def child_breakdown(url: str, trials: int) -> dict[str, Any]:
    """The fake service path with timing wrappers on its steps (no profiler overhead): ms per trial."""
    from tuner_service.worker import Worker

    spent: dict[str, float] = {}
    present = [label for label, module, path in BREAKDOWN_STEPS if _wrap(module, path, spent, label)]
    _wrap("tuner_service.notes", "write_study_note", spent, "note")  # once, after the last trial: not per trial
    spec = make_spec("breakdown", max_trials=trials)
    create_study(spec, url)
    worker = Worker(spec.name, url, runner=FakeRunner())
    t0 = time.perf_counter()
    ran = worker.run()
    total = time.perf_counter() - t0 - spent.pop("note", 0.0)
    return {"trials": ran, "total": total, "spent": spent, "steps": present}


def child_optuna_fake(url: str, trials: int, engine: str) -> dict[str, Any]:
    """The anchor: plain Optuna, 3 params + 5 reports per trial; Optuna's default engine or the
    service's (WAL, BEGIN IMMEDIATE, synchronous=NORMAL)."""
    import optuna

    from tuner_service.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage: Any = open_storage(url) if engine == "service" else url
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(t: optuna.Trial) -> float:
        x = t.suggest_float("x", -1, 1)
        t.suggest_int("n", 0, 10)
        t.suggest_categorical("c", ["a", "b"])
        for e in range(5):
            t.report(x * e, e)
        return x * x

    marks = [time.perf_counter()]
    study.optimize(objective, n_trials=trials, callbacks=[lambda *_: marks.append(time.perf_counter())])
    return {"wall": [b - a for a, b in zip(marks, marks[1:])]}


def run_child(args: argparse.Namespace) -> None:
    kind = args.child
    if kind == "service":
        out = child_service(args.url, args.trials)
    elif kind == "optuna":
        out = child_optuna(args.url, args.trials)
    elif kind == "keras-tuner":
        out = child_keras_tuner(args.trials)
    elif kind == "fake":
        out = child_fake(args.url, args.trials, args.profile)
    elif kind == "breakdown":
        out = child_breakdown(args.url, args.trials)
    elif kind in ("optuna-fake-default", "optuna-fake-service"):
        out = child_optuna_fake(args.url, args.trials, kind.rsplit("-", 1)[1])
    else:
        raise SystemExit(f"unknown child {kind}")
    print(json.dumps(out))


# --------------------------------------------------------------------------- the parent


def _child(kind: str, trials: int, url: str = "", *, timeout: float, profile: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--trials", str(trials), "--url", url]
    if profile:
        cmd += ["--profile", profile]
    out, _ = run_json(cmd, timeout=timeout)
    return out


def keras_row(system: str, backend: str, out: dict[str, Any]) -> dict[str, Any]:
    """Per-trial overhead = wall - (build + fit net of framework callbacks), warm-up dropped."""
    n = min(len(out["wall"]), len(out["timings"]))
    wall = out["wall"][WARMUP:n]
    work = [t["build"] + t["fit"] for t in out["timings"][WARMUP:n]]
    over = [w - k for w, k in zip(wall, work)]
    return {
        "system": system, "backend": backend, "trials": len(over),
        "wall_ms": 1000 * median(wall), "build_fit_ms": 1000 * median(work),
        "overhead_ms": 1000 * median(over), "overhead_p99_ms": 1000 * percentile(over, 99),
        "overhead_mean_ms": 1000 * sum(over) / max(1, len(over)),
        "gc_ms": 1000 * sum(out["gc"][WARMUP:n]) / max(1, len(over)),  # mean: collections may skip trials
        "callbacks_ms": 1000 * median([t["callbacks"] for t in out["timings"][WARMUP:n]]),
    }


def measure_keras(trials: int, directory: Path, server: Any) -> list[dict[str, Any]]:
    rows = []
    for system, backend in KERAS_CONFIGS:
        if backend == "postgresql" and server is None:
            continue
        log(f"overhead: {system} on {backend}, {trials} Keras trials")
        url = "" if system == "keras-tuner" else fresh_url(backend, directory, server, f"{system}_{backend}")
        try:
            out = _child(system, trials, url, timeout=60 + 20 * trials)
        except Exception as exc:  # one system failing must not lose the others' figures
            log(f"overhead: {system} on {backend} failed: {exc}")
            continue
        rows.append(keras_row(system, backend, out))
    return rows


def measure_growth(trials: int, directory: Path) -> dict[str, Any]:
    """Fake trials through ``Worker.run`` on SQLite: trials ~100 (51-150) vs the last 100."""
    log(f"overhead growth: {trials} fake trials through the service on SQLite")
    out = _child("fake", trials, fresh_url("sqlite", directory, None, "growth"), timeout=120 + 0.5 * trials)
    wall = out["wall"]
    early = wall[50:150] if len(wall) >= 300 else wall[len(wall) // 10: len(wall) // 3]
    late = wall[-100:] if len(wall) >= 300 else wall[-len(wall) // 3:]
    return {"trials": len(wall), "early_ms": 1000 * median(early), "late_ms": 1000 * median(late),
            "early_p99_ms": 1000 * percentile(early, 99), "late_p99_ms": 1000 * percentile(late, 99),
            "median_ms": 1000 * median(wall), "total_s": sum(wall)}


def measure_fake_references(trials: int, directory: Path) -> list[dict[str, Any]]:
    rows = []
    for kind, label in (("fake", "service Worker.run (FakeRunner)"),
                        ("optuna-fake-service", "plain Optuna, service engine settings"),
                        ("optuna-fake-default", "plain Optuna, default SQLite settings (anchor)")):
        log(f"overhead: fake objective, {label}, {trials} trials")
        out = _child(kind, trials, fresh_url("sqlite", directory, None, kind.replace("-", "_")), timeout=60 + trials)
        wall = out["wall"][WARMUP:]
        rows.append({"path": label, "trials": len(wall), "median_ms": 1000 * median(wall),
                     "p99_ms": 1000 * percentile(wall, 99)})
    return rows


def measure_breakdown(trials: int, directory: Path) -> list[dict[str, Any]]:
    """The service's fake-trial path split into its steps by timing wrappers (ms per trial)."""
    log(f"overhead: timing the steps of {trials} fake trials")
    out = _child("breakdown", trials, fresh_url("sqlite", directory, None, "breakdown"), timeout=60 + trials)
    n = max(1, out["trials"])
    spent = dict(out["spent"])
    nested = "claim loop: other (study attrs every 5 s, idle check)"
    if nested in spent:  # next_trial contains the stale check and the claim: keep only its own remainder
        spent[nested] -= spent.get(BREAKDOWN_STEPS[0][0], 0.0) + spent.get(BREAKDOWN_STEPS[1][0], 0.0)
    rows = [{"step": label, "ms_per_trial": 1000 * spent[label] / n} for label, _, _ in BREAKDOWN_STEPS if label in spent]
    accounted = sum(r["ms_per_trial"] for r in rows)
    total = 1000 * out["total"] / n
    rows.append({"step": "everything else (loop, runner, Python)", "ms_per_trial": total - accounted})
    rows.append({"step": "total per trial", "ms_per_trial": total})
    return rows


def measure_profile(trials: int, directory: Path) -> list[dict[str, Any]]:
    """cProfile of the fake service path: where each trial's milliseconds go."""
    log(f"overhead: profiling {trials} fake trials")
    path = str(directory / "fake.prof")
    _child("fake", trials, fresh_url("sqlite", directory, None, "profile"), timeout=60 + trials, profile=path)
    return profile_rows(path, trials)


#: Functions worth naming in the profile table: (label, filename fragment, function name).
PROFILE_FUNCS = (
    ("TrialLoop.run: everything per trial", "tuner_service/lifecycle/_driver.py", "run"),
    ("TrialLoop.next_trial (stale check, attrs, claim)", "tuner_service/lifecycle/_driver.py", "next_trial"),
    ("  fail_stale + reconcile", "tuner_service/lifecycle/_transitions.py", "fail_stale"),
    ("  Study.user_attrs (study flags)", "optuna/study/study.py", "user_attrs"),
    ("  claim()", "tuner_service/lifecycle/_transitions.py", "claim"),
    ("  optuna/trial/_trial.py __init__ (Trial objects)", "optuna/trial/_trial.py", "__init__"),
    ("TrialLoop.run_claimed", "tuner_service/lifecycle/_driver.py", "run_claimed"),
    ("  Heartbeat.start", "tuner_service/lifecycle/_liveness.py", "start"),
    ("  trial.suggest_* (3 params)", "optuna/trial/_trial.py", "_suggest"),
    ("  trial.report (5 epochs)", "optuna/trial/_trial.py", "report"),
    ("  notes.decorate_trial (dashboard note)", "tuner_service/notes.py", "decorate_trial"),
    ("  finish() (after_trial + the outcome's transaction)", "tuner_service/lifecycle/_transitions.py", "finish"),
    ("SQL: Session.commit", "sqlalchemy/orm/session.py", "commit"),
    ("SQL: cursor.execute (sqlite3)", "~", "<method 'execute' of 'sqlite3.Cursor' objects>"),
)


def profile_rows(path: str, trials: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    rows = []
    for label, fragment, func in PROFILE_FUNCS:
        calls, cum = 0, 0.0
        for (filename, _line, name), (cc, _nc, _tt, ct, _callers) in stats.items():
            if name == func and fragment in filename:
                calls += cc  # primitive calls: cumulative time is only counted for those
                cum += ct
        if calls:
            rows.append({"what": label, "calls_per_trial": calls / trials, "ms_per_trial": 1000 * cum / trials})
    return rows


def render(keras_rows: list[dict[str, Any]], growth: dict[str, Any] | None, fake_rows: list[dict[str, Any]],
           prof: list[dict[str, Any]], breakdown: list[dict[str, Any]]) -> str:
    parts = []
    if keras_rows:
        base = next((r["overhead_ms"] for r in keras_rows if r["system"] == "service" and r["backend"] == "sqlite"), None)
        rows = [[r["system"], r["backend"], r["trials"], r["wall_ms"], r["build_fit_ms"], r["overhead_ms"],
                 r["overhead_p99_ms"], r["overhead_mean_ms"], r["gc_ms"], r["callbacks_ms"],
                 fmt(r["overhead_ms"] / base) if base else "n/a"] for r in keras_rows]
        parts.append("Trivial Keras model (1 epoch, 256 samples, 16 features), ms per trial, medians over the trials "
                     f"(first {WARMUP} dropped); overhead = wall - (build + fit net of framework callbacks). "
                     "`gc.collect` (mean per trial: a framework may collect only every few trials) and framework "
                     "callbacks (median) are part of the overhead and shown apart.\n\n"
                     + table(["system", "storage", "trials", "wall", "build+fit", "overhead median", "overhead p99",
                              "overhead mean", "gc.collect (mean)", "callbacks", "median overhead vs service/SQLite"],
                             rows))
    if growth:
        parts.append(f"Overhead growth, fake objective through `Worker.run` on SQLite ({growth['trials']} trials, "
                     f"{fmt(growth['total_s'])} s): ms per trial.\n\n"
                     + table(["trials", "median", "p99"],
                             [["~100 (51-150)", growth["early_ms"], growth["early_p99_ms"]],
                              [f"~{growth['trials']} (last 100)", growth["late_ms"], growth["late_p99_ms"]],
                              ["ratio late / early", fmt(growth["late_ms"] / growth["early_ms"]), ""]]))
    if fake_rows:
        parts.append("Fake objective (3 suggestions, 5 reports), SQLite, ms per trial, side by side:\n\n"
                     + table(["path", "trials", "median", "p99"],
                             [[r["path"], r["trials"], r["median_ms"], r["p99_ms"]] for r in fake_rows]))
    if breakdown:
        parts.append("The service's fake-trial path (SQLite) split into its steps by timing wrappers (no profiler), "
                     "ms per trial:\n\n" + table(["step", "ms/trial"],
                                                  [[r["step"], r["ms_per_trial"]] for r in breakdown]))
    if prof:
        parts.append("Where a fake trial's time goes in the service (cProfile, cumulative ms per trial; "
                     "profiling inflates absolute times):\n\n"
                     + table(["function", "calls/trial", "ms/trial"],
                             [[r["what"], "" if r["what"].startswith("TrialLoop.run:") else fmt(r["calls_per_trial"]),
                               r["ms_per_trial"]] for r in prof]))
    return "\n".join(parts)


def targets(keras_rows: list[dict[str, Any]], growth: dict[str, Any] | None) -> list[Target]:
    out = []
    svc = next((r for r in keras_rows if r["system"] == "service" and r["backend"] == "sqlite"), None)
    if svc:
        out.append(Target("service overhead per trial, median, SQLite (Keras trials)",
                          f"{fmt(svc['overhead_ms'])} ms (mean {fmt(svc['overhead_mean_ms'])} ms, of which gc.collect "
                          f"{fmt(svc['gc_ms'])} ms)",
                          "<= 5 ms", svc["overhead_ms"] <= 5))
    if growth:
        ratio = growth["late_ms"] / growth["early_ms"]
        out.append(Target(f"overhead at trial ~{growth['trials']} vs ~100 (fake objective, SQLite)",
                          f"{fmt(ratio)}x ({fmt(growth['late_ms'])} vs {fmt(growth['early_ms'])} ms)",
                          "<= 1.5x", ratio <= 1.5))
        out.append(Target("service path per fake trial at ~100, SQLite", f"{fmt(growth['early_ms'])} ms", "<= 5 ms",
                          growth["early_ms"] <= 5))
    return out


def main() -> None:
    from _common import parser

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=200, help="Keras trials per system (default 200)")
    p.add_argument("--growth-trials", type=int, default=5000, help="fake trials for the growth figure (default 5000)")
    p.add_argument("--fake-trials", type=int, default=300, help="fake trials for the side-by-side and the profile")
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--url", default="", help=argparse.SUPPRESS)
    p.add_argument("--profile", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_child(args)
        return
    if args.quick:
        args.trials, args.growth_trials, args.fake_trials = 8, 400, 60
    with maybe_postgres(not args.no_postgres) as server, scratch_dir("overhead") as directory:
        if server is not None:
            log(f"overhead: PostgreSQL at {mask(server.url)}")
        keras_rows = measure_keras(args.trials, directory, server)
        growth = measure_growth(args.growth_trials, directory)
        fake_rows = measure_fake_references(args.fake_trials, directory)
        breakdown = measure_breakdown(args.fake_trials, directory)
        prof = measure_profile(args.fake_trials, directory)
    markdown = render(keras_rows, growth, fake_rows, prof, breakdown)
    data = {"keras": keras_rows, "growth": growth, "fake": fake_rows, "profile": prof, "breakdown": breakdown,
            "trials": args.trials}
    emit(args, "Per-trial overhead", markdown, data, targets(keras_rows, growth))


if __name__ == "__main__":
    main()
