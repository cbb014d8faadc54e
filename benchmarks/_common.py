"""Shared helpers for the benchmark scripts: arguments, statistics, tables, the machine,
storages (SQLite files and a throwaway PostgreSQL server), and Keras-free trial runners.

Nothing here imports Keras or TensorFlow, so the scheduler benchmarks (scaling, duplicates,
overhead growth) measure the service's claim/suggest/report/tell path and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MODELS = BENCH_DIR / "models.py"

# Same TensorFlow settings everywhere (the service's runner sets these defaults itself; the
# keras-tuner and plain-Optuna baselines must run under the same ones to be comparable).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


# --------------------------------------------------------------------------- arguments / output


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark has: --quick and --json."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repeat")
    p.add_argument("--json", type=Path, help="also write the figures as JSON to this file (run_all.py uses it)")
    return p


@dataclass
class Target:
    """One figure checked against a target from the benchmark issue."""

    name: str
    figure: str
    target: str
    met: bool | None  # None: could not be measured

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "figure": self.figure, "target": self.target, "met": self.met}


def emit(args: argparse.Namespace, title: str, markdown: str, data: dict[str, Any], targets: Sequence[Target]) -> None:
    """Print the benchmark's markdown and write its JSON (figures, targets, markdown) if asked."""
    print(f"## {title}\n\n{markdown.strip()}\n", flush=True)
    if targets:
        print(table(["target", "figure", "wanted", "met"],
                    [[t.name, t.figure, t.target, verdict(t.met)] for t in targets]), flush=True)
    if args.json:
        payload = {"title": title, "markdown": markdown, "data": data, "targets": [t.as_dict() for t in targets],
                   "quick": bool(args.quick)}
        args.json.write_text(json.dumps(payload, indent=1, default=str))


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    def cell(v: Any) -> str:
        return fmt(v) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt(v: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (no scientific notation for ordinary sizes)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if math.isinf(v):
        return "inf"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    decimals = max(0, digits - 1 - mag)
    return f"{v:,.{decimals}f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between order statistics."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def log(msg: str) -> None:
    """Progress to stderr (stdout carries the markdown)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, CPU model, memory, load, library versions."""
    info: dict[str, Any] = {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    info["loadavg"] = loadavg()
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "keras-tuner", "optuna", "sqlalchemy", "scikit-learn",
                 "psycopg", "numpy"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[dist] = version(dist)
    import sqlite3

    info["sqlite"] = sqlite3.sqlite_version
    with contextlib.suppress(Exception):
        info["postgresql"] = _pg_version()
    return info


def _pg_version() -> str:
    import subprocess

    pg = load_pg_module()
    import re

    out = subprocess.run([str(pg.find_pg_bin() / "pg_ctl"), "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"\d+(\.\d+)+", out.stdout)  # "pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    return found.group(0) if found else out.stdout.strip()


def loadavg() -> tuple[float, float, float]:
    try:
        a, b, c = Path("/proc/loadavg").read_text().split()[:3]
        return float(a), float(b), float(c)
    except (OSError, ValueError):
        return (float("nan"),) * 3  # type: ignore[return-value]


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory (VmRSS) of a process in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


# --------------------------------------------------------------------------- storages


def load_pg_module() -> Any:
    """tests/pg_server.py, imported by path (the benchmarks reuse the test fixture's server)."""
    name = "_bench_pg_server"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "pg_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def postgres() -> Iterator[Any]:
    """A throwaway local PostgreSQL server (``PostgresServer``), stopped and deleted afterwards."""
    pg = load_pg_module()
    server = pg.PostgresServer()
    try:
        server.setup()
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def maybe_postgres(enabled: bool = True) -> Iterator[Any]:
    """Like :func:`postgres`, but yields None (with a note on stderr) when no server can be started."""
    if not enabled:
        yield None
        return
    try:
        ctx = postgres()
        server = ctx.__enter__()
    except Exception as exc:  # the PostgreSQL figures are skipped, not the whole benchmark
        log(f"PostgreSQL unavailable, skipping its figures: {exc}")
        yield None
        return
    try:
        yield server
    finally:
        ctx.__exit__(None, None, None)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{prefix}-") as d:
        yield Path(d)


def sqlite_url(directory: Path, name: str = "bench") -> str:
    return f"sqlite:///{directory / name}.db"


def slot_timing(done: Sequence[Any], slots: int) -> dict[str, float]:
    """From completed trials run on ``slots`` slots: the first start (unix s), the span from
    it to the last completion, the summed trial durations, and utilisation = busy / (slots x span)."""
    first = min(t.datetime_start for t in done).timestamp()
    span = max(t.datetime_complete for t in done).timestamp() - first
    busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    return {"first": first, "span_s": span, "busy_s": busy, "utilisation": busy / (slots * span)}


def fresh_url(backend: str, directory: Path, server: Any, tag: str) -> str:
    """A new empty database of ``backend`` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        return sqlite_url(directory, tag)
    return server.create_database(f"b_{tag}_{os.getpid()}_{int(time.time() * 1000) % 10**8}")


def mask(url: str) -> str:
    from tuner_service.storage import mask_password

    return mask_password(url)


# --------------------------------------------------------------------------- studies


def make_spec(name: str, *, model: str | None = None, tuner: str | dict[str, Any] = "random", max_trials: int = 10,
              max_epochs: int = 1, seed: int = 0, data: dict[str, Any] | None = None, **fit: Any) -> Any:
    """A validated ``StudySpec`` (the model reference defaults to benchmarks/models.py)."""
    from tuner_service.spec import StudySpec

    raw: dict[str, Any] = {
        "name": name,
        "model": model or f"{MODELS}:build_trivial",
        "tuner": tuner,
        "budget": {"max_trials": max_trials, "max_epochs": max_epochs},
        "seed": seed,
        "fit": {"batch_size": 64, **fit},
    }
    if data is not None:
        raw["data"] = data
    return StudySpec.model_validate(raw)


def create_study(spec: Any, url: str) -> None:
    """Register the study the way ``submit`` does (spec stored, budget enqueued), then let go of
    the connections so forked worker processes open their own."""
    from tuner_service import study as study_mod
    from tuner_service.storage import open_storage

    storage = open_storage(url)
    study_mod.create(spec, storage)
    storage.engine.dispose()


# --------------------------------------------------------------------------- Keras-free runners

#: What ``KerasRunner.run`` records per trial, with the sizes of a small model (the fake runners
#: write the same attributes, so the storage does the same work as for a Keras trial).
FAKE_SUMMARY = "Model: \"sequential\"\n" + "\n".join(f"dense_{i} (Dense)   (None, 32)   544" for i in range(12))


def fake_attrs(epochs: int, value: float) -> dict[str, Any]:
    return {
        "param_count": 1234,
        "fit_seconds": 0.0,
        "trial_seconds": 0.0,
        "best_epoch": epochs,
        "epochs_run": epochs,
    }


def fake_details(epochs: int, value: float) -> dict[str, Any]:
    return {
        "model_summary": FAKE_SUMMARY,
        "history": {k: [round(value, 6)] * epochs for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
    }


class FakeRunner:
    """A ``KerasRunner`` stand-in without Keras: suggests 3 parameters, reports ``epochs``
    intermediate values, optionally sleeps, and returns the attributes a Keras trial records.

    ``Worker(..., runner=FakeRunner())`` then exercises exactly the service's claim / heartbeat /
    attrs / suggest / report / tell path; nothing else runs between them.
    """

    device = "CPU"
    backend = "none"

    def __init__(self, sleep: float = 0.0, epochs: int = 5) -> None:
        self.sleep, self.epochs = sleep, epochs

    def run(self, trial: Any, *, prune: bool, extra_callbacks: Any = None) -> Any:
        from tuner_service.runners import Outcome

        x = trial.suggest_float("x", -1.0, 1.0)
        n = trial.suggest_int("n", 0, 10)
        c = trial.suggest_categorical("c", ["a", "b"])
        value = x * x + 0.01 * n + (0.1 if c == "b" else 0.0)
        if self.sleep:
            time.sleep(self.sleep)
        for epoch in range(1, self.epochs + 1):
            trial.report(value + 1.0 / epoch, epoch)
        return Outcome([value], False, fake_attrs(self.epochs, value), fake_details(self.epochs, value))


class FunctionRunner:
    """A runner that evaluates a pure function of the trial's parameters (no Keras).

    ``space(trial) -> params`` draws the parameters; ``fn(params) -> value``; optional sleep.
    """

    device = "CPU"
    backend = "none"

    def __init__(self, space: Callable[[Any], dict[str, Any]], fn: Callable[[dict[str, Any]], float],
                 sleep: float = 0.0) -> None:
        self.space, self.fn, self.sleep = space, fn, sleep

    def run(self, trial: Any, *, prune: bool, extra_callbacks: Any = None) -> Any:
        from tuner_service.runners import Outcome

        params = self.space(trial)
        value = float(self.fn(params))
        if self.sleep:
            time.sleep(self.sleep)
        trial.report(value, 1)
        return Outcome([value], False, fake_attrs(1, value), fake_details(1, value))


def run_json(cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> tuple[dict[str, Any], float]:
    """Run a child benchmark process that prints one JSON object as its last stdout line;
    returns (that object, wall seconds of the whole process)."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd[:4])}... printed no JSON: {proc.stdout[-500:]} {proc.stderr[-1500:]}")
    return json.loads(lines[-1]), wall
