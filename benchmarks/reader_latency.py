"""Reader latency under writers on SQLite: the service's storage against plain Optuna's, side by side.

Eight writer processes run trials on one SQLite study through the service's lifecycle (claim,
three suggestions, two reports, finish: what every worker does), while two readers poll the
same file every 0.2 s with what ``status``, the progress bar and the dashboard do
(``get_all_trials`` of the study): one through ``tuner_service.storage.open_storage`` (read-only
transactions opened deferred), one through a plain ``optuna.storages.RDBStorage`` on the same
file. Both readers run at the same time in one process, alternating, so they see the same
writers and the same machine. Before issue 12 every transaction of the service's storage,
reads included, took the write lock (``BEGIN IMMEDIATE``); the figures then were p50 190 ms /
p95 1,196 ms for the service's reader against 102 / 543 ms for plain Optuna's.

Run: ``.venv/bin/python benchmarks/reader_latency.py [--writers 8] [--seconds 30] [--quick]``
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Target, emit, fmt, log, median, parser, percentile, scratch_dir, table  # noqa: E402


def _writer(url: str, stop_at: float, out: Any) -> None:
    import optuna

    from tuner_service.lifecycle import claim, finish
    from tuner_service.storage import open_storage

    study = optuna.load_study(study_name="r", storage=open_storage(url), sampler=optuna.samplers.RandomSampler())
    done = 0
    while time.time() < stop_at:
        claimed = claim(study, {"host": "bench"})
        if claimed is None:
            break
        trial = claimed.trial
        x = trial.suggest_float("x", 0, 1) + trial.suggest_int("n", 1, 9) + len(trial.suggest_categorical("c", ["a", "bb"]))
        trial.report(x, 1)
        trial.report(x, 2)
        finish(study, claimed, "COMPLETE", [x])
        done += 1
    out.put(done)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=0.2)
    args = p.parse_args()
    if args.quick:
        args.writers, args.seconds = 2, 5.0
    import optuna

    from tuner_service import study as study_mod
    from tuner_service.storage import open_storage

    with scratch_dir("reader") as d:
        url = f"sqlite:///{d / 'r.db'}"
        storage = open_storage(url)
        study = optuna.create_study(study_name="r", storage=storage)
        study_mod.add_budget(storage, study._study_id, 10**6)
        service_reader = open_storage(url)
        plain_reader = optuna.storages.RDBStorage(url)  # Optuna's defaults: deferred transactions
        study_id = study._study_id
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        start_at = time.time() + 3.0  # writers start together, after their imports
        stop_at = start_at + args.seconds
        procs = [ctx.Process(target=_writer, args=(url, stop_at, out)) for _ in range(args.writers)]
        for proc in procs:
            proc.start()
        while time.time() < start_at:
            time.sleep(0.05)
        samples: dict[str, list[float]] = {"service": [], "plain optuna": []}
        readers = [("service", service_reader), ("plain optuna", plain_reader)]
        turn = 0
        while time.time() < stop_at:
            name, reader = readers[turn % 2] if turn % 4 < 2 else readers[(turn + 1) % 2]  # ABBA order
            t0 = time.perf_counter()
            reader.get_all_trials(study_id, deepcopy=False)
            samples[name].append((time.perf_counter() - t0) * 1000)
            turn += 1
            time.sleep(args.interval)
        written = sum(out.get(timeout=120) for _ in procs)
        for proc in procs:
            proc.join(timeout=30)
    log(f"{written} trials written by {args.writers} writers in {args.seconds:.0f} s")
    rows = []
    data: dict[str, Any] = {"writers": args.writers, "seconds": args.seconds, "trials_written": written}
    for name, values in samples.items():
        p50, p95 = median(values), percentile(values, 95)
        rows.append([name, len(values), fmt(p50), fmt(p95), fmt(max(values))])
        data[name] = {"samples": len(values), "p50_ms": p50, "p95_ms": p95, "max_ms": max(values)}
    ratio95 = data["service"]["p95_ms"] / data["plain optuna"]["p95_ms"]
    markdown = (
        f"{args.writers} writer processes ({written} trials in {args.seconds:.0f} s through the lifecycle) and two "
        f"readers polling `get_all_trials` every {args.interval} s, alternating (ABBA), ms per read:\n\n"
        + table(["reader", "reads", "p50", "p95", "max"], rows)
        + f"\n\nService p95 / plain Optuna p95: {fmt(ratio95)}x (before issue 12: 1,196 / 543 ms = 2.2x)."
    )
    targets = [Target("SQLite reader p95 under writers, service / plain Optuna", f"{fmt(ratio95)}x", "<= 1.2x",
                      ratio95 <= 1.2)]
    emit(args, "Reader latency under writers (SQLite)", markdown, data, targets)


if __name__ == "__main__":
    main()
