"""Time to a good model: how long the service takes to reach keras-tuner's best, side by side.

Why: what a user waits for is not a trial but a model as good as the one keras-tuner would give
them. Per repeat, in one run on one machine:

1. keras-tuner ``RandomSearch`` (the workflow users arrive with) in a fresh process: its best
   validation accuracy K and the wall time from launch until the trial that reached K finished;
2. the service, ``tuner-service submit --workers 2`` in a fresh process, for each of its tuners
   below on the same space and budget: the wall time from launch until the first trial reaching
   K (or better) finished; "not reached" when none did (then its whole wall time, flagged).

Same space (``studies/digits_model.py``: 1-3 layers, widths, activation, dropout, log learning
rate, optimizer), same data (scikit-learn digits, the service's seeded stratified split), the same
budget: ``--trials`` trials of at most ``--epochs`` epochs, batch 32 (Hyperband and BOHB stop
some trials early; that is their point). The order of the systems rotates per repeat; figures
are medians of the per-repeat ratios (service time to K / keras-tuner's time to K).

Run: ``.venv/bin/python benchmarks/time_to_quality.py [--trials 16] [--epochs 9] [--repeats 3] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Target, emit, fmt, log, median, parser, run_json, scratch_dir, table  # noqa: E402
from vs_keras_tuner import MODEL, data_spec  # noqa: E402  (the same space and data as the end-to-end run)

TUNERS = ("tpe", "hyperband", "bohb")


def child_keras_tuner(args: argparse.Namespace) -> None:
    """keras-tuner RandomSearch on the service's exact split; prints each trial's finish time and score."""
    launched = time.time()
    import keras_tuner as kt
    from models import keras_tuner_without_tensorboard

    from tuner_service import data as data_mod
    from tuner_service.runners._user_code import import_user_object
    from tuner_service.spec import DataSpec

    keras_tuner_without_tensorboard()
    build_model = import_user_object(f"{MODEL}:build_model")
    d = data_mod.load(DataSpec(**data_spec()), args.seed)
    finished: list[tuple[float, float]] = []

    class Timed(kt.RandomSearch):
        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            finished.append((time.time() - launched, float(trial.score) if trial.score is not None else float("nan")))

    tuner = Timed(build_model, objective="val_accuracy", max_trials=args.trials, seed=args.seed, overwrite=True,
                  directory=args.directory, project_name="ttq")
    tuner.search(d.x_train, d.y_train, validation_data=(d.x_val, d.y_val), epochs=args.epochs, batch_size=32,
                 verbose=0)
    print(json.dumps({"trials": finished, "wall": time.time() - launched}))


def run_keras_tuner(directory: Path, args: argparse.Namespace, seed: int, rep: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--trials", str(args.trials), "--epochs", str(args.epochs),
           "--seed", str(seed), "--directory", str(directory / f"kt_r{rep}")]
    out, wall = run_json(cmd, timeout=300 + 20 * args.trials * args.epochs)
    scored = [(t, s) for t, s in out["trials"] if s == s]
    best = max(s for _, s in scored)
    return {"best": best, "time_to_best": min(t for t, s in scored if s >= best), "wall": wall}


def run_service(directory: Path, tuner: str, args: argparse.Namespace, seed: int, rep: int, target: float) -> dict[str, Any]:
    import subprocess

    import yaml

    from tuner_service import study as study_mod
    from tuner_service.storage import open_storage

    name = f"ttq_{tuner}_r{rep}"
    url = f"sqlite:///{directory / name}.db"
    spec = {"name": name, "model": f"{MODEL}:build_model", "data": data_spec(), "objective": "val_accuracy",
            "tuner": {"name": tuner, "factor": 3} if tuner in ("hyperband", "bohb") else tuner,
            "budget": {"max_trials": args.trials, "max_epochs": args.epochs}, "fit": {"batch_size": 32}, "seed": seed}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    launched = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuner_service", "submit", str(path), "--workers", "2", "--storage",
                           url], capture_output=True, text=True, cwd=directory, timeout=300 + 20 * args.trials * args.epochs)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"submit {tuner} exited {proc.returncode}: {proc.stderr[-1500:]}")
    study = study_mod.load(open_storage(url, create=False), name)
    done = [(t.user_attrs["finished_at_unix"] - launched, t.value) for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and t.value is not None and "finished_at_unix" in t.user_attrs]
    reached = [t for t, v in done if v >= target]
    return {"best": max(v for _, v in done), "time_to_target": min(reached) if reached else wall,
            "reached": bool(reached), "wall": wall}


def one_repeat(directory: Path, rep: int, args: argparse.Namespace) -> dict[str, Any]:
    seed = 42 + rep
    log(f"time_to_quality: repeat {rep + 1}, keras-tuner")
    out: dict[str, Any] = {"keras-tuner": run_keras_tuner(directory, args, seed, rep)}
    target = out["keras-tuner"]["best"]
    tuners = list(TUNERS)
    for tuner in tuners[rep % len(tuners):] + tuners[:rep % len(tuners)]:
        log(f"time_to_quality: repeat {rep + 1}, service {tuner}, target {target:.4f}")
        out[tuner] = run_service(directory, tuner, args, seed, rep, target)
    return out


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    p.add_argument("--directory", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_keras_tuner(args)
        return
    if args.quick:
        args.trials, args.epochs, args.repeats = 4, 2, 1
    repeats = []
    with scratch_dir("ttq") as directory:
        for rep in range(args.repeats):
            try:
                repeats.append(one_repeat(directory, rep, args))
            except Exception as exc:
                log(f"time_to_quality: repeat {rep + 1} failed: {exc}")
    kt_runs = [r["keras-tuner"] for r in repeats]
    rows = [["keras-tuner RandomSearch (1 process)", fmt(median([r["time_to_best"] for r in kt_runs])),
             " / ".join(fmt(r["time_to_best"]) for r in kt_runs), "1 (its own best)", fmt(median([r["wall"] for r in kt_runs])),
             fmt(median([r["best"] for r in kt_runs]), 4)]]
    data: dict[str, Any] = {"keras-tuner": kt_runs}
    best_ratio, best_tuner = float("inf"), None
    for tuner in TUNERS:
        runs = [(r[tuner], r["keras-tuner"]) for r in repeats if tuner in r]
        if not runs:
            continue
        ratios = [s["time_to_target"] / k["time_to_best"] for s, k in runs]
        ratio = median(ratios)
        data[tuner] = {"runs": [s for s, _ in runs], "ratio": ratio, "ratios": ratios}
        if all(s["reached"] for s, _ in runs) and ratio < best_ratio:
            best_ratio, best_tuner = ratio, tuner
        rows.append([f"service {tuner} (2 workers)",
                     fmt(median([s["time_to_target"] for s, _ in runs])),
                     " / ".join(fmt(s["time_to_target"]) + ("" if s["reached"] else " (not reached)") for s, _ in runs),
                     fmt(ratio), fmt(median([s["wall"] for s, _ in runs])), fmt(median([s["best"] for s, _ in runs]), 4)])
    md = (f"{args.trials} trials of at most {args.epochs} epochs on digits (batch 32), {len(repeats)} repeat(s); the "
          "target is keras-tuner's best val_accuracy in the same repeat; times from process launch.\n\n"
          + table(["system", "time to target s (median)", "per repeat", "time / keras-tuner's (median ratio)",
                   "whole run s", "best val_accuracy (median)"], rows))
    targets = [Target("time to keras-tuner's best, the service's best tuner (2 workers) / keras-tuner",
                      f"{fmt(best_ratio)}x ({best_tuner})" if best_tuner else "not reached in every repeat", "<= 0.33x",
                      best_tuner is not None and best_ratio <= 0.33)]
    emit(args, "Time to quality vs keras-tuner", md, {"systems": data, "trials": args.trials, "epochs": args.epochs,
                                                       "repeats": len(repeats)}, targets)


if __name__ == "__main__":
    main()
