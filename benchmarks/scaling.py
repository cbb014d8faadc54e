"""Scheduling throughput with 1, 2, 4, 8 worker processes, and the storage's limit.

Why: a study's wall time should fall as 1/N with N workers as long as trials are long compared
with the scheduler's own work; where it stops doing so is the service's scaling limit.

- Efficiency: N plain worker processes (``Worker(..., runner=FakeRunner(sleep=1))``: the service's
  claim / heartbeat / suggest / report / tell path around a 1 s sleep, no Keras) share one study
  on SQLite and on PostgreSQL. Throughput = trials / (last completion - start), with every
  worker constructed (storage open, study loaded) before the common start; efficiency =
  throughput / (N x single-worker throughput). Repeats are interleaved; medians are reported.
- Storage limit: 32+ processes run trivial trials (no sleep) against a local PostgreSQL;
  completions per second, and where the CPU goes (PostgreSQL backends vs the worker processes vs
  idle) from /proc. On a 2-core machine this is CPU-bound by construction: the figure is the
  machine's, not PostgreSQL's.

Run: ``.venv/bin/python benchmarks/scaling.py [--trials 16] [--sleep 1] [--repeats 3] [--limit-procs 32] [--quick]``
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    FakeRunner,
    Target,
    cpu_seconds,
    create_study,
    emit,
    fmt,
    fresh_url,
    log,
    make_spec,
    maybe_postgres,
    median,
    parser,
    scratch_dir,
    table,
)

WORKER_COUNTS = (1, 2, 4, 8)
CTX = mp.get_context("fork")  # no re-import per process: starting 32 workers stays cheap


# --------------------------------------------------------------------------- worker processes


def worker_main(index: int, url: str, name: str, sleep: float, max_trials: int | None, ready: Any, go: Any,
                results: Any, release: Any) -> None:
    """One worker process: set up, wait for the common start, run, report completion times."""
    from tuner_service.worker import Worker, WorkerOptions

    worker = Worker(name, url, WorkerOptions(index=index, max_trials=max_trials), runner=FakeRunner(sleep=sleep))
    ready.put(index)
    go.wait()
    done: list[float] = []
    worker.run(on_trial_done=lambda _s: done.append(time.time()))
    results.put({"index": index, "done": done})
    release.wait(300)  # keep the connections (and their server backends) until the parent has measured


class CpuSampler:
    """Samples CPU counters every ``interval`` s in a thread: the whole machine (/proc/stat), the
    PostgreSQL server's processes and the worker processes (/proc/PID/stat)."""

    def __init__(self, server: Any, pids: list[int], interval: float = 0.2) -> None:
        import threading

        self.server, self.pids, self.interval = server, pids, interval
        self.samples: list[tuple[float, float, float, float]] = []  # (time, machine busy, postgres, workers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.samples.append((time.time(), _machine_busy()[0], sum(_pg_cpu(self.server).values()),
                                 sum(cpu_seconds(pid) for pid in self.pids)))
            if self._stop.wait(self.interval):
                return

    def window(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds used between the samples nearest ``start`` and ``end``."""
        a = min(self.samples, key=lambda s: abs(s[0] - start))
        b = min(self.samples, key=lambda s: abs(s[0] - end))
        return {"window_s": b[0] - a[0], "machine_busy_s": b[1] - a[1], "postgres_cpu_s": b[2] - a[2],
                "clients_cpu_s": b[3] - a[3]}


def run_workers(url: str, name: str, n: int, sleep: float, max_trials: int | None = None,
                server: Any = None) -> dict[str, Any]:
    """Start ``n`` workers on an existing study; all begin together; returns timings and CPU use."""
    # Imported once here, not in every forked worker (the study note a worker writes when it stops
    # imports optuna_dashboard: ~1,000 modules, ~0.9 s of CPU in a process without scikit-learn).
    import optuna_dashboard  # noqa: F401

    import tuner_service.notes  # noqa: F401
    import tuner_service.runners.keras  # noqa: F401
    import tuner_service.worker  # noqa: F401

    ready, results = CTX.Queue(), CTX.Queue()
    go, release = CTX.Event(), CTX.Event()
    procs = [CTX.Process(target=worker_main, args=(i, url, name, sleep, max_trials, ready, go, results, release))
             for i in range(n)]
    for p in procs:
        p.start()
    try:
        for _ in range(n):
            ready.get(timeout=300)
        with CpuSampler(server, [p.pid for p in procs if p.pid]) as sampler:
            time.sleep(0.3)
            t0 = time.time()
            go.set()
            out = [results.get(timeout=900) for _ in range(n)]
    finally:
        release.set()
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.terminate()
    done = sorted(t for r in out for t in r["done"])
    span = (done[-1] - t0) if done else float("nan")
    return {"workers": n, "completed": len(done), "span_s": span, "throughput": len(done) / span,
            **sampler.window(t0, done[-1] if done else t0)}


# --------------------------------------------------------------------------- CPU accounting


def _pg_cpu(server: Any) -> dict[int, float]:
    """CPU seconds of the PostgreSQL postmaster and all its children (backends, writers)."""
    if server is None:
        return {}
    try:
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == postmaster:
                pids.append(int(entry.name))
    return {pid: cpu_seconds(pid) for pid in pids}


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / tick, sum(fields) / tick


# --------------------------------------------------------------------------- the measurements


def efficiency_runs(backend: str, directory: Path, server: Any, trials: int, sleep: float,
                    repeats: int) -> dict[int, list[float]]:
    """Throughput per worker count, one list entry per repeat (interleaved)."""
    thr: dict[int, list[float]] = {n: [] for n in WORKER_COUNTS}
    for rep in range(repeats):
        for n in WORKER_COUNTS:
            name = f"scale_{backend}_{n}_{rep}"
            url = fresh_url(backend, directory, server, name)
            create_study(make_spec(name, max_trials=trials, seed=rep), url)
            log(f"scaling: {backend}, {n} worker(s), repeat {rep + 1}")
            r = run_workers(url, name, n, sleep)
            if r["completed"] != trials:
                log(f"scaling: expected {trials} completions, got {r['completed']}")
            thr[n].append(r["throughput"])
    return thr


def limit_run(server: Any, procs: int, per_proc: int, directory: Path) -> dict[str, Any]:
    name = "limit"
    url = fresh_url("postgresql", directory, server, name)
    create_study(make_spec(name, max_trials=procs * per_proc), url)
    log(f"scaling: storage limit, {procs} processes x {per_proc} trivial trials on PostgreSQL")
    return run_workers(url, name, procs, 0.0, max_trials=per_proc, server=server)


def render_efficiency(results: dict[str, dict[int, list[float]]], sleep: float, trials: int) -> tuple[str, dict[str, Any]]:
    rows, data = [], {}
    for backend, thr in results.items():
        base = median(thr[1])
        for n in WORKER_COUNTS:
            t = median(thr[n])
            eff = t / (n * base)
            data[f"{backend}:{n}"] = {"throughput": t, "efficiency": eff, "runs": thr[n]}
            rows.append([backend, n, fmt(t), " / ".join(fmt(x) for x in thr[n]), fmt(eff)])
    md = (f"{trials} trials of {fmt(sleep)} s (sleep) per configuration; throughput in trials/s (median of repeats); "
          "efficiency = throughput / (N x 1-worker throughput).\n\n"
          + table(["storage", "workers", "trials/s", "per repeat", "efficiency"], rows))
    return md, data


def render_limit(r: dict[str, Any], procs: int) -> str:
    span = r["window_s"]
    cores = os.cpu_count() or 1
    busy = r["machine_busy_s"] / span
    pg, clients = r["postgres_cpu_s"] / span, r["clients_cpu_s"] / span
    rows = [["completions/s", fmt(r["throughput"])],
            ["trials completed / seconds", f"{r['completed']} / {fmt(r['span_s'])}"],
            ["PostgreSQL CPU (cores busy)", fmt(pg)],
            ["worker processes CPU (cores busy)", fmt(clients)],
            ["whole machine busy (cores, of " f"{cores})", fmt(busy)],
            ["per completed trial: PostgreSQL / workers CPU ms", f"{fmt(1000 * r['postgres_cpu_s'] / r['completed'])} / "
             f"{fmt(1000 * r['clients_cpu_s'] / r['completed'])}"]]
    saturated = "CPU: the machine's cores are busy" if busy > 0.85 * cores else "not CPU (cores left idle)"
    return (f"{procs} worker processes, trivial trials (no sleep), local PostgreSQL:\n\n" + table(["", ""], rows)
            + f"\nWhat saturates: {saturated}; the worker processes (Python, SQLAlchemy, Optuna) use "
            f"{fmt(clients / max(pg, 1e-9))}x the CPU PostgreSQL does.\n")


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--sleep", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit-procs", type=int, default=32)
    p.add_argument("--limit-trials", type=int, default=25, help="trivial trials per process in the limit run")
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.trials, args.sleep, args.repeats, args.limit_procs, args.limit_trials = 8, 0.2, 1, 32, 4
    results: dict[str, dict[int, list[float]]] = {}
    limit = None
    with maybe_postgres(not args.no_postgres) as server, scratch_dir("scaling") as directory:
        for backend in ("sqlite", "postgresql"):
            if backend == "postgresql" and server is None:
                continue
            results[backend] = efficiency_runs(backend, directory, server, args.trials, args.sleep, args.repeats)
        if server is not None and args.limit_procs:
            limit = limit_run(server, args.limit_procs, args.limit_trials, directory)
    md, data = render_efficiency(results, args.sleep, args.trials)
    if limit:
        md += "\n" + render_limit(limit, args.limit_procs)
        data["limit"] = limit
    targets = []
    for backend in results:
        eff = data[f"{backend}:2"]["efficiency"]
        targets.append(Target(f"scheduling efficiency, 2 workers, {fmt(args.sleep)} s trials, {backend}", fmt(eff),
                              ">= 0.95", eff >= 0.95))
    if limit:
        targets.append(Target(f"storage limit, {args.limit_procs} processes, PostgreSQL (no target)",
                              f"{fmt(limit['throughput'])} completions/s", "-", None))
    emit(args, "Scaling with worker processes", md, data, targets)


if __name__ == "__main__":
    main()
