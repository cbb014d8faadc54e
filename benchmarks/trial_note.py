"""The cost per trial of the dashboard's trial note and learning-curve image.

Why: the trial lifecycle calls ``notes.decorate_trial`` for every finished trial, inside the
trial's critical path, so its cost is part of the per-trial overhead; and optuna-dashboard
keeps every note in the study's system attrs, so a note written the obvious way
(``optuna_dashboard.save_note``, which reads all of them to pick the next version) costs more
as the study grows.

What: a SQLite study (the service's engine settings) already holding N finished trials with
their notes and curves, for N in ``--sizes``; then ``--trials`` more trials, each asked,
decorated while RUNNING and told, as the lifecycle does. Per trial, side by side in one run:
``decorate_trial`` (note + SVG + artifact record in one transaction) and the earlier way
(``save_note`` through a trial handle, then ``upload_trial_curves``: a temporary file and
``optuna.artifacts.upload_artifact``). Medians in milliseconds; also the note's size, which
the dashboard sends for every trial on every poll.

Run: ``.venv/bin/python benchmarks/trial_note.py [--sizes 10,1000] [--trials 30] [--quick]``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Target, emit, fmt, log, median, parser, scratch_dir, sqlite_url, table  # noqa: E402

TARGET_MS = 5.0
SUMMARY = "\n".join(['Model: "sequential"', "┏" + "━" * 70 + "┓"]
                    + [f"│ dense_{i} (Dense)        │ (None, 64)        │   4,160 │" for i in range(8)]
                    + [" Total params: 33,930 (132.54 KB)"])


def history(epochs: int = 10) -> dict[str, list[float]]:
    return {"loss": [round(1 / (e + 1), 6) for e in range(epochs)],
            "accuracy": [round(0.5 + e / 30, 6) for e in range(epochs)],
            "val_loss": [round(1.1 / (e + 1), 6) for e in range(epochs)],
            "val_accuracy": [round(0.48 + e / 30, 6) for e in range(epochs)]}


ATTRS = {"param_count": 33930, "best_epoch": 10, "epochs_run": 10, "fit_seconds": 2.5, "trial_seconds": 2.7,
         "device": "CPU", "keras_backend": "tensorflow", "host": "bench", "pid": 1}


def decorate(study: Any, trial: Any, store: Any) -> None:
    from tuner_service.notes import decorate_trial

    decorate_trial(study, trial._trial_id, number=trial.number, state="COMPLETE", values=[0.8],
                   params={"units": 64, "learning_rate": 0.01}, attrs=ATTRS,
                   details={"history": history(), "model_summary": SUMMARY}, objective="val_accuracy",
                   artifact_store=store)


def earlier_way(study: Any, trial: Any, store: Any) -> None:
    """What a lifecycle without decorate_trial would do: optuna-dashboard's save_note + upload."""
    from optuna_dashboard import save_note

    from tuner_service.notes import _TrialHandle, trial_note_body, upload_trial_curves

    body = trial_note_body(number=trial.number, state="COMPLETE", values=[0.8],
                           params={"units": 64, "learning_rate": 0.01}, attrs=ATTRS,
                           details={"history": history(), "model_summary": SUMMARY}, objective="val_accuracy")
    save_note(_TrialHandle(study, trial._trial_id), body)  # type: ignore[arg-type]
    upload_trial_curves(study, trial._trial_id, history(), store, objective="val_accuracy", best_epoch=10)


def measure(directory: Path, size: int, trials: int, how: str) -> list[float]:
    """ms per trial of ``how`` on a study that already has ``size`` decorated trials."""
    import optuna
    from optuna.artifacts import FileSystemArtifactStore

    from tuner_service.storage import open_storage

    url = sqlite_url(directory, f"{how}-{size}")
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="notes", direction="maximize")
    store = FileSystemArtifactStore(directory / f"{how}-{size}-artifacts")
    (directory / f"{how}-{size}-artifacts").mkdir()
    dist = {"units": optuna.distributions.IntDistribution(16, 128)}
    for _ in range(size):  # the study so far: finished trials with their notes
        trial = study.ask(dist)
        decorate(study, trial, store)
        study.tell(trial, 0.8)
    step = decorate if how == "decorate_trial" else earlier_way
    times = []
    for _ in range(trials):
        trial = study.ask(dist)
        t0 = time.perf_counter()
        step(study, trial, store)
        times.append((time.perf_counter() - t0) * 1000)
        study.tell(trial, 0.8)
    storage.engine.dispose()
    return times


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,1000")
    p.add_argument("--trials", type=int, default=30)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.trials = [5, 50], 5
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from tuner_service.notes import trial_note_body

    note_bytes = len(trial_note_body(number=1, state="COMPLETE", values=[0.8], params={"units": 64, "learning_rate": 0.01},
                                     attrs=ATTRS, details={"history": history(), "model_summary": SUMMARY},
                                     objective="val_accuracy").encode())
    rows, data = [], {}
    with scratch_dir("notes") as tmp:
        for size in sizes:
            for how in ("decorate_trial", "save_note + upload_trial_curves"):
                log(f"{how} at {size} trials")
                times = measure(tmp, size, args.trials, how)
                data[f"{how}@{size}"] = times
                rows.append([how, size, fmt(median(times)), fmt(max(times))])
    markdown = (f"ms per trial (median and max of {args.trials} trials) to write a trial's note and learning-curve "
                f"image, on a SQLite study (WAL, `BEGIN IMMEDIATE`) already holding that many decorated trials; a "
                f"10-epoch, 4-metric trial's note is {note_bytes:,} bytes.\n\n"
                + table(["how", "trials in the study", "median ms", "max ms"], rows))
    largest = max(sizes)
    ours = median(data[f"decorate_trial@{largest}"])
    targets = [Target(f"decorate_trial per trial at {largest} trials, median", f"{fmt(ours)} ms", f"<= {TARGET_MS:g} ms",
                      ours <= TARGET_MS)]
    emit(args, "Trial note cost", markdown, {"ms": data, "note_bytes": note_bytes}, targets)


if __name__ == "__main__":
    main()
