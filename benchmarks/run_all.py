"""Run every benchmark and write ``benchmarks/RESULTS.md`` (what ``make bench`` calls).

Each benchmark runs in its own process with ``--json``; its markdown, its figures checked
against the issue's targets, the exact command, its duration, the machine and the date go into
RESULTS.md. ``benchmarks/kt_dropin.py`` (the keras-tuner drop-in comparison) is run too when
present and its output recorded verbatim. A benchmark that fails or times out is recorded as
such; this script always exits 0 (benchmarks never fail CI).

The arguments below keep the whole run near 25 minutes on 2 cores: 20 instead of 200 Keras
trials per system in ``overhead.py`` (how the overhead grows over 200 trials is what
``memory.py`` measures), 2 instead of 3 repeats and 12 instead of 25 trials per process in
``scaling.py``. Every script run alone with no arguments uses the full sizes, and ``--quick`` on
any of them is a smoke run.

Run: ``.venv/bin/python benchmarks/run_all.py [--quick] [--only overhead,scaling] [--output PATH]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DIR, REPO, fmt, loadavg, machine, median, table, verdict  # noqa: E402

#: (script, arguments for the full run, timeout in seconds)
BENCHMARKS: list[tuple[str, list[str], int]] = [
    ("overhead.py", ["--trials", "20", "--fake-trials", "200"], 1200),
    ("vs_keras_tuner.py", [], 900),
    ("scaling.py", ["--repeats", "2", "--limit-trials", "12"], 900),
    ("search_quality.py", [], 900),
    ("memory.py", [], 900),
    ("cli_startup.py", [], 300),
    ("trial_note.py", [], 600),
    ("reader_latency.py", [], 300),
    ("multi_objective.py", [], 900),
    ("time_to_quality.py", [], 1800),
    ("onednn.py", [], 600),
    ("agent_standby.py", [], 900),
]
DROPIN = ("kt_dropin.py", [], 600)


def run_benchmark(script: str, extra: list[str], timeout: int, quick: bool, log_dir: Path) -> dict[str, Any]:
    """Run one benchmark; returns its JSON payload plus command, duration and status."""
    json_path = log_dir / f"{Path(script).stem}.json"
    args = [*extra, "--quick"] if quick else extra
    cmd = [sys.executable, str(BENCH_DIR / script), *args, "--json", str(json_path)]
    shown = " ".join([".venv/bin/python", f"benchmarks/{script}", *args])
    print(f"[{time.strftime('%H:%M:%S')}] running {shown}", flush=True)
    t0 = time.perf_counter()
    status, stdout, stderr = "ok", "", ""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        stdout, stderr = proc.stdout, proc.stderr
        if proc.returncode != 0:
            status = f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired as exc:
        status = f"timed out after {timeout} s"
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    seconds = time.perf_counter() - t0
    (log_dir / f"{Path(script).stem}.log").write_text(stdout + "\n--- stderr ---\n" + stderr)
    sys.stdout.write(stdout)
    payload: dict[str, Any] = {}
    if json_path.exists() and status == "ok":
        payload = json.loads(json_path.read_text())
    print(f"[{time.strftime('%H:%M:%S')}] {script}: {status} in {seconds:.0f} s", flush=True)
    return {"script": script, "command": shown, "seconds": seconds, "status": status, "payload": payload,
            "stderr_tail": "\n".join(stderr.strip().splitlines()[-15:])}


def run_dropin(timeout: int, quick: bool) -> dict[str, Any] | None:
    """``benchmarks/kt_dropin.py`` (owned elsewhere): run with its defaults, output kept verbatim."""
    script, extra, _ = DROPIN
    extra = ["--trials", "2", "--epochs", "1"] if quick else extra
    path = BENCH_DIR / script
    if not path.exists():
        return None
    shown = " ".join([".venv/bin/python", f"benchmarks/{script}", *extra])
    print(f"[{time.strftime('%H:%M:%S')}] running {shown}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(path), *extra], capture_output=True, text=True, timeout=timeout,
                              cwd=REPO)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        output = proc.stdout.strip() or proc.stderr.strip()[-3000:]
        if proc.returncode != 0:
            output = (proc.stdout.strip() + "\n" + proc.stderr.strip()[-3000:]).strip()
    except subprocess.TimeoutExpired:
        status, output = f"timed out after {timeout} s", ""
    print(output, flush=True)
    return {"command": shown, "seconds": time.perf_counter() - t0, "status": status, "output": output}


class LoadSampler:
    """The 1-minute load average every ``interval`` seconds while the benchmarks run (a thread)."""

    def __init__(self, interval: float = 15.0) -> None:
        import threading

        self.interval, self.samples = interval, [loadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(loadavg()[0])

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.samples


def git_state() -> str:
    """The commit, and a fingerprint of uncommitted changes to the package (read-only git commands)."""
    import hashlib

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                              timeout=10).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "tuner_service"], capture_output=True, text=True,
                              cwd=REPO, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not diff:
        return head
    return f"{head} with uncommitted changes to tuner_service (diff {hashlib.sha1(diff.encode()).hexdigest()[:8]})"


def render(results: list[dict[str, Any]], dropin: dict[str, Any] | None, info: dict[str, Any],
           started: dt.datetime, total: float, load_before: tuple[float, ...], load_after: tuple[float, ...],
           load_during: list[float], quick: bool, code_at_start: str) -> str:
    lines = ["# Benchmark results", "",
             f"Generated by `.venv/bin/python benchmarks/run_all.py{' --quick' if quick else ''}`"
             f"{'' if quick else ' (`make bench`)'} on "
             f"{started:%Y-%m-%d} at {started:%H:%M} UTC, {fmt(total / 60)} minutes in all; code at {code_at_start}"
             + ("." if git_state() == code_at_start else f" at the start and {git_state()} at the end (the package "
                                                          "changed during the run)."),
             "All comparisons are measured side by side within one run (the machine is shared and noisy); "
             "medians of repeats or of per-trial samples as each section says. Interpretation of missed targets "
             "and the recommended changes: [ANALYSIS.md](ANALYSIS.md).", "", "## Machine", ""]
    versions = ", ".join(f"{k} {info[k]}" for k in ("python", "tensorflow-cpu", "tensorflow", "keras", "keras-tuner",
                                                     "optuna", "sqlalchemy", "scikit-learn", "numpy", "psycopg",
                                                     "sqlite", "postgresql") if k in info)
    lines += [f"- {info.get('nproc')} cores (`nproc`), CPU: {info.get('cpu', '?')}, {info.get('memory_gib', '?')} GiB "
              f"memory, {info.get('platform')}",
              f"- {versions}",
              f"- load average (1, 5, 15 min) before: {', '.join(fmt(x) for x in load_before)}; after: "
              f"{', '.join(fmt(x) for x in load_after)}; 1-minute load sampled every 15 s during the run: median "
              f"{fmt(median(load_during))}, max {fmt(max(load_during))} (the benchmarks themselves use up to 2 cores; "
              "the scaling limit run briefly starts 32 processes)", ""]
    lines += ["## Targets", "", table(["benchmark", "target", "figure", "wanted", "met"],
                                      [[r["script"], t["name"], t["figure"], t["target"], verdict(t["met"])]
                                       for r in results for t in r["payload"].get("targets", [])]), ""]
    for r in results:
        title = r["payload"].get("title") or r["script"]
        lines += [f"## {title}", "", f"Command: `{r['command']}` ({fmt(r['seconds'])} s, {r['status']})", ""]
        if r["payload"]:
            lines += [r["payload"]["markdown"].strip(), ""]
        else:
            lines += ["No figures: the benchmark did not finish. Last lines of its stderr:", "", "```",
                      r["stderr_tail"], "```", ""]
    if dropin is not None:
        lines += ["## keras-tuner drop-in (`benchmarks/kt_dropin.py`)", "",
                  f"Command: `{dropin['command']}` ({fmt(dropin['seconds'])} s, {dropin['status']}); output verbatim:",
                  "", "```", dropin["output"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run of every benchmark (RESULTS.md is not touched "
                                                        "unless --output is given)")
    p.add_argument("--only", help="comma-separated benchmark names (e.g. overhead,scaling)")
    p.add_argument("--no-dropin", action="store_true", help="skip benchmarks/kt_dropin.py")
    p.add_argument("--output", type=Path, help="where to write the results (default benchmarks/RESULTS.md)")
    p.add_argument("--logs", type=Path, help="directory for each benchmark's full output and JSON")
    args = p.parse_args()
    output = args.output or (None if args.quick else BENCH_DIR / "RESULTS.md")
    only = {n.strip().removesuffix(".py") for n in args.only.split(",")} if args.only else None
    started = dt.datetime.now(dt.timezone.utc)
    load_before = loadavg()
    code_at_start = git_state()
    sampler = LoadSampler()
    t0 = time.perf_counter()
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="bench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for script, extra, timeout in BENCHMARKS:
        if only and Path(script).stem not in only:
            continue
        try:
            results.append(run_benchmark(script, extra, timeout, args.quick, log_dir))
        except Exception as exc:  # never fail the caller
            results.append({"script": script, "command": script, "seconds": 0.0, "status": f"error: {exc}",
                            "payload": {}, "stderr_tail": str(exc)})
    dropin = None
    if not args.no_dropin and (not only or "kt_dropin" in only):
        try:
            dropin = run_dropin(DROPIN[2], args.quick)
        except Exception as exc:
            dropin = {"command": DROPIN[0], "seconds": 0.0, "status": f"error: {exc}", "output": ""}
    total = time.perf_counter() - t0
    markdown = render(results, dropin, machine(), started, total, load_before, loadavg(), sampler.stop(), args.quick,
                      code_at_start)
    if output is not None:
        output.write_text(markdown)
        print(f"wrote {output.relative_to(REPO) if output.is_relative_to(REPO) else output}")
    print(f"all benchmarks: {total / 60:.1f} minutes; logs in {log_dir}")


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # benchmarks never fail CI
        print(f"run_all: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(0)
