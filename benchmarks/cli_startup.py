"""CLI start-up: how long the read commands take on a small study, against Optuna's own CLI.

Why: ``ls``, ``status``, ``best`` and ``trials`` read a few rows, so their wall time is almost
all start-up: the interpreter, the imports, opening the storage. Issue 17 asked for under a
second each (they took about 2 s, where ``optuna trials`` took 1.1 s).

What: a SQLite study of ``--trials`` trials written by the service's own ``Worker`` (with the
Keras-free runner of ``_common.py``, so the rows and attributes are the ones a real run
writes). Each command runs ``--repeats`` times as a fresh process (after one warm-up run, so
the file cache is warm for all alike); the figure is the median wall time. Side by side in
the same run: Optuna's CLI on the same database (``optuna studies``, ``best-trial``,
``trials``), a bare ``python -c pass``, and with ``--compare-rev REV`` the project's CLI at
that git revision (exported to a temporary directory), e.g. the code before the change.
``python -X importtime`` of ``trials`` then names the largest imports of each variant.

Run: ``.venv/bin/python benchmarks/cli_startup.py [--repeats 7] [--trials 20] [--compare-rev REV] [--quick]``
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    REPO,
    FakeRunner,
    Target,
    create_study,
    emit,
    fmt,
    log,
    make_spec,
    median,
    parser,
    scratch_dir,
    sqlite_url,
    table,
)

NAME = "cli-bench"
TARGET_S = 1.0
OPTUNA_CLI = str(Path(sys.executable).with_name("optuna"))


def commands(url: str) -> list[tuple[str, list[str], list[str] | None]]:
    """(label, project arguments, Optuna CLI arguments doing the same, or None)."""
    return [
        ("--help", ["--help"], ["--help"]),
        ("ls", ["ls", "--storage", url], ["studies", "--storage", url]),
        ("status", ["status", NAME, "--storage", url], None),
        ("best", ["best", NAME, "--storage", url], ["best-trial", "--study-name", NAME, "--storage", url]),
        ("trials", ["trials", NAME, "--storage", url], ["trials", "--study-name", NAME, "--storage", url]),
    ]


def wall(cmd: list[str], env: dict[str, str], repeats: int, cwd: Path) -> float:
    """Median seconds of ``repeats`` runs after a warm-up; the command must succeed."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
        if i:
            times.append(elapsed)
    return median(times)


def top_imports(cmd: list[str], env: dict[str, str], cwd: Path, n: int = 6) -> list[tuple[str, float]]:
    """The ``n`` top-level imports with the largest cumulative time (``python -X importtime``)."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)
    found: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)", line)
        if m and not m[2]:  # top level only: nested imports are inside these figures
            found[m[3]] = found.get(m[3], 0.0) + int(m[1]) / 1e6
    return sorted(found.items(), key=lambda kv: -kv[1])[:n]


def export_revision(rev: str, directory: Path) -> Path:
    """``tuner_service`` at git revision ``rev``, exported (read-only git) into ``directory``."""
    archive = directory / "rev.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", rev, "tuner_service"], cwd=REPO, stdout=f, check=True, timeout=60)
    with tarfile.open(archive) as tar:
        tar.extractall(directory / "rev", filter="data")
    return directory / "rev"


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--compare-rev", help="also time the project's CLI at this git revision")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.trials = 1, 3
    env = {k: v for k, v in os.environ.items() if k not in ("TUNER_SERVICE_STORAGE", "COLUMNS", "PYTHONPATH")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with scratch_dir("cli") as tmp:
        url = sqlite_url(tmp, "cli")
        log(f"writing {args.trials} trials with the service's worker")
        create_study(make_spec(NAME, max_trials=args.trials, max_epochs=3), url)
        from tuner_service.worker import Worker

        Worker(NAME, url, runner=FakeRunner(epochs=3)).run()

        variants: dict[str, tuple[list[str], dict[str, str]]] = {"this code": ([sys.executable, "-m", "tuner_service"],
                                                                              env)}
        if args.compare_rev:
            old = export_revision(args.compare_rev, tmp)
            variants[f"at {args.compare_rev}"] = ([sys.executable, "-m", "tuner_service"],
                                                  {**env, "PYTHONPATH": str(old)})
            probe = subprocess.run([sys.executable, "-c", "import tuner_service.cli; print(tuner_service.cli.__file__)"],
                                   capture_output=True, text=True, env=variants[f"at {args.compare_rev}"][1], cwd=tmp)
            assert probe.stdout.strip().startswith(str(old)), f"the old revision was not imported: {probe.stdout}"

        rows, data = [], {"commands": {}}
        # Run outside the checkout: `python -m` puts the working directory first on sys.path, which
        # would shadow the exported revision with this one.
        baseline = wall([sys.executable, "-c", "pass"], env, args.repeats, tmp)
        for label, ours, theirs in commands(url):
            figures: dict[str, Any] = {}
            for variant, (prefix, venv) in variants.items():
                log(f"{variant}: tuner-service {label}")
                figures[variant] = wall([*prefix, *ours], venv, args.repeats, tmp)
            if theirs is not None:
                log(f"optuna {theirs[0]}")
                figures["optuna CLI"] = wall([OPTUNA_CLI, *theirs], env, args.repeats, tmp)
            data["commands"][label] = figures
            rows.append([f"`{label}`", *(fmt(figures[v]) for v in variants),
                         f"`optuna {theirs[0]}`" if theirs else "(none)",
                         fmt(figures["optuna CLI"]) if theirs else "-"])
        imports = {variant: top_imports([*prefix, "trials", NAME, "--storage", url], venv, tmp)
                   for variant, (prefix, venv) in variants.items()}
        imports["optuna CLI"] = top_imports([sys.executable, OPTUNA_CLI, "trials", "--study-name", NAME,
                                             "--storage", url], env, tmp)

    data["python_baseline_s"] = baseline
    data["imports"] = imports
    markdown = (
        f"Median wall time in seconds of {args.repeats} runs (after a warm-up) of each command as a fresh process, "
        f"on a SQLite study of {args.trials} trials written by the service's worker; `python -c pass` takes "
        f"{fmt(baseline)} s.\n\n"
        + table(["command", *(f"tuner-service, {v}" for v in variants), "Optuna CLI equivalent", "Optuna CLI"], rows)
        + "\nLargest top-level imports of `trials` (`python -X importtime`, cumulative seconds, one run):\n\n"
        + table(["variant", "imports"], [[v, ", ".join(f"{m} {fmt(s)}" for m, s in found)]
                                        for v, found in imports.items()])
    )
    ours = data["commands"]
    slowest = max(ours[c]["this code"] for c in ("ls", "status", "best", "trials"))
    targets = [Target("slowest read command (ls, status, best, trials), median", f"{fmt(slowest)} s",
                      f"< {TARGET_S:g} s", slowest < TARGET_S)]
    emit(args, "CLI start-up (read commands)", markdown, data, targets)


if __name__ == "__main__":
    main()
