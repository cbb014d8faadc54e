"""End to end against keras-tuner: the same random search, wall time and best val_accuracy.

Why: the service's promise is "the keras-tuner workflow, but in a database and parallel"; it
should not cost more wall time than keras-tuner for the same search, and with two workers on
two cores it should cost less. Measured side by side in one run:

- keras-tuner ``RandomSearch`` in a fresh process;
- ``tuner-service submit STUDY.yaml --workers 1`` and ``--workers 2`` in a fresh process each
  (the CLI, so startup is counted honestly: the submit process imports TensorFlow for the
  submit-time model check, and with 2 workers each worker process imports it again).

Same space (``studies/digits_model.py``: 1-3 layers, widths, activation, dropout, log learning
rate, optimizer), same data (scikit-learn digits scaled /16, the service's seeded stratified
split: 60% train, 20% validation), 20 trials x 5 epochs, batch 32. Wall time is the whole
process, launch to exit; repeats are interleaved (the order rotates) and the figures are
medians of the per-repeat values and ratios.

Run: ``.venv/bin/python benchmarks/vs_keras_tuner.py [--trials 20] [--epochs 5] [--repeats 3] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, Target, emit, fmt, log, median, parser, run_json, scratch_dir, table  # noqa: E402

MODEL = REPO / "studies" / "digits_model.py"
SYSTEMS = ("keras-tuner", "service 1 worker", "service 2 workers")


def data_spec() -> dict[str, Any]:
    return {"source": "sklearn:digits", "validation_split": 0.2, "test_split": 0.2}


# --------------------------------------------------------------------------- keras-tuner child


def child_keras_tuner(args: argparse.Namespace) -> None:
    """keras-tuner RandomSearch on the service's exact split; prints timestamps and the best score."""
    launched = time.time()
    import keras_tuner as kt
    from models import keras_tuner_without_tensorboard

    from tuner_service import data as data_mod
    from tuner_service.runners._user_code import import_user_object
    from tuner_service.spec import DataSpec

    keras_tuner_without_tensorboard()
    build_model = import_user_object(f"{MODEL}:build_model")
    d = data_mod.load(DataSpec(**data_spec()), args.seed)
    started = time.time()
    tuner = kt.RandomSearch(build_model, objective="val_accuracy", max_trials=args.trials, seed=args.seed,
                            overwrite=True, directory=args.directory, project_name="vs_kt")
    tuner.search(d.x_train, d.y_train, validation_data=(d.x_val, d.y_val), epochs=args.epochs, batch_size=32,
                 verbose=0)
    finished = time.time()
    best = tuner.oracle.get_best_trials(1)[0]
    print(json.dumps({"best": float(best.score), "trials": len(tuner.oracle.trials), "imported": started - launched,
                      "search_start": started, "search_end": finished}))


# --------------------------------------------------------------------------- the service


def write_study(directory: Path, name: str, trials: int, epochs: int, seed: int) -> Path:
    import yaml

    spec = {"name": name, "model": f"{MODEL}:build_model", "data": data_spec(), "objective": "val_accuracy",
            "tuner": "random", "budget": {"max_trials": trials, "max_epochs": epochs}, "fit": {"batch_size": 32},
            "seed": seed}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_service(directory: Path, workers: int, trials: int, epochs: int, seed: int, rep: int,
                timeout: float) -> dict[str, Any]:
    """``tuner-service submit`` in a subprocess; the whole process is timed."""
    import subprocess

    from tuner_service import service

    name = f"vs_kt_w{workers}_r{rep}"
    url = f"sqlite:///{directory / name}.db"
    study_file = write_study(directory, name, trials, epochs, seed)
    submit = ["submit", str(study_file), "--workers", str(workers), "--storage", url]
    cmd = [sys.executable, "-m", "tuner_service", *submit]
    launched = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=directory)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"submit --workers {workers} exited {proc.returncode}: {proc.stderr[-1500:]}")
    rows = service.trials(name, url)
    starts = [r for r in _trial_times(name, url)]
    best = service.best(name, url)
    return {"wall": wall, "best": float(best["value"]), "trials": len(rows),
            "startup": min(s for s, _ in starts) - launched, "searching": max(e for _, e in starts) - min(s for s, _ in starts)}


def _trial_times(name: str, url: str) -> list[tuple[float, float]]:
    from tuner_service import study as study_mod
    from tuner_service.storage import open_storage

    study = study_mod.load(open_storage(url, create=False), name)
    return [(t.user_attrs["started_at_unix"], t.user_attrs["finished_at_unix"]) for t in study.get_trials(deepcopy=False)
            if "started_at_unix" in t.user_attrs and "finished_at_unix" in t.user_attrs]


def run_keras_tuner(directory: Path, trials: int, epochs: int, seed: int, rep: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--trials", str(trials), "--epochs", str(epochs), "--seed", str(seed),
           "--directory", str(directory / f"kt_r{rep}")]
    launched = time.time()
    out, wall = run_json(cmd, timeout=timeout)
    return {"wall": wall, "best": out["best"], "trials": out["trials"], "startup": out["search_start"] - launched,
            "searching": out["search_end"] - out["search_start"]}


def one_repeat(directory: Path, rep: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    seed = 42 + rep
    timeout = 120 + 30 * args.trials * args.epochs
    runs = {
        "keras-tuner": lambda: run_keras_tuner(directory, args.trials, args.epochs, seed, rep, timeout),
        "service 1 worker": lambda: run_service(directory, 1, args.trials, args.epochs, seed, rep, timeout),
        "service 2 workers": lambda: run_service(directory, 2, args.trials, args.epochs, seed, rep, timeout),
    }
    systems = list(SYSTEMS)
    order = systems[rep % len(systems):] + systems[:rep % len(systems)]  # rotate: no system always runs first
    out = {}
    for system in order:
        log(f"vs_keras_tuner: repeat {rep + 1}, {system}")
        out[system] = runs[system]()
    return out


def summarise(repeats: list[dict[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    rows, data = [], {}
    for system in SYSTEMS:
        runs = [r[system] for r in repeats if system in r]
        if not runs:
            continue
        ratio = [r[system]["wall"] / r["keras-tuner"]["wall"] for r in repeats if system in r and "keras-tuner" in r]
        data[system] = {"wall_s": median([x["wall"] for x in runs]), "best": median([x["best"] for x in runs]),
                        "ratio": median(ratio), "walls": [x["wall"] for x in runs], "bests": [x["best"] for x in runs],
                        "startup_s": median([x["startup"] for x in runs]),
                        "searching_s": median([x["searching"] for x in runs])}
        d = data[system]
        rows.append([system, d["wall_s"], " / ".join(fmt(w) for w in d["walls"]), d["startup_s"], d["searching_s"],
                     fmt(d["ratio"]), fmt(d["best"], 4), " / ".join(fmt(b, 4) for b in d["bests"])])
    md = table(["system", "wall s (median)", "wall s per repeat", "launch to first trial s", "first trial start to "
                "last trial end s", "wall / keras-tuner (median of per-repeat ratios)", "best val_accuracy (median)",
                "best per repeat"], rows)
    return md, data


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
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
    with scratch_dir("vs_kt") as directory:
        for rep in range(args.repeats):
            try:
                repeats.append(one_repeat(directory, rep, args))
            except Exception as exc:
                log(f"vs_keras_tuner: repeat {rep + 1} failed: {exc}")
    md, data = summarise(repeats)
    md = (f"RandomSearch, {args.trials} trials x {args.epochs} epochs on digits (batch 32), {len(repeats)} repeat(s), "
          "seed 42 + repeat for both systems; wall time = the whole process, launch to exit.\n\n" + md)
    one = data.get("service 1 worker", {}).get("ratio", float("nan"))
    targets = [Target("end to end wall time, service 1 worker / keras-tuner", f"{fmt(one)}x", "<= 0.8x", one <= 0.8)]
    two = data.get("service 2 workers", {}).get("ratio", float("nan"))
    targets.append(Target("end to end wall time, service 2 workers / keras-tuner (no target)", f"{fmt(two)}x", "-",
                          None))
    emit(args, "End to end vs keras-tuner", md, {"systems": data, "trials": args.trials, "epochs": args.epochs,
                                                  "repeats": len(repeats)}, targets)


if __name__ == "__main__":
    main()
