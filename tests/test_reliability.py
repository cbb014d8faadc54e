"""Reliability under faults: kills, chaos, concurrency, crash durability, outages, resume, secrets.

Slow: `make test-slow` (CI runs it too).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import ENV, MODELS, cli, write_study
from optuna.trial import TrialState

pytestmark = pytest.mark.slow
TRIVIAL = Path(__file__).parent / "trivial_worker.py"
REPO = Path(__file__).parent.parent


def _trivial_workers(url: str, study: str, n: int, cwd: Path) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, str(TRIVIAL), url, study], cwd=cwd, env={**ENV, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _integrity(url: str, study_name: str, n_workers: int, cwd: Path, budget: int = 1800, points: int = 200) -> None:
    from tuner_service import study as study_mod
    from tuner_service.storage import open_storage
    from tuner_service.study import add_budget

    storage = open_storage(url)
    study = optuna.create_study(study_name=study_name, storage=storage)
    study_mod.enqueue_slots(study, points, [{"p": 10**6 + k} for k in range(points)])  # enqueued points
    add_budget(storage, study._study_id, budget)
    results = _trivial_workers(url, study_name, n_workers, cwd)
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[:5]
    trials = optuna.load_study(study_name=study_name, storage=url).get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == budget + points, "duplicate or missing trial numbers"
    assert all(t.state == TrialState.COMPLETE for t in trials), "a result was lost"
    ran = collections.Counter(n for r in results for n in r["ran"])
    assert all(c == 1 for c in ran.values()) and len(ran) == budget + points, "a trial ran twice"
    fixed = collections.Counter(t.params["p"] for t in trials if t.params["p"] >= 10**6)
    assert sorted(fixed) == [10**6 + k for k in range(points)] and set(fixed.values()) == {1}, "a point ran twice"
    assert len({r["pid"] for r in results if r["ran"]}) == n_workers


def test_concurrency_integrity_sqlite_8_workers(tmp_path):
    _integrity(f"sqlite:///{tmp_path / 'c.db'}", "c", 8, tmp_path)


@pytest.mark.postgres
def test_concurrency_integrity_postgres_16_workers(tmp_path, pg_url):
    _integrity(pg_url, "c", 16, tmp_path)


def _read_lines(proc: subprocess.Popen, lines: list[str]) -> None:
    lines.extend(iter(proc.stdout.readline, ""))


def test_crash_durability_kill_9_during_writes(tmp_path):
    """kill -9 the writer mid-write, 50 rounds: integrity_check ok, every reported result present."""
    from tuner_service.storage import open_storage
    from tuner_service.study import add_budget

    db = tmp_path / "d.db"
    url = f"sqlite:///{db}"
    storage = open_storage(url)
    study = optuna.create_study(study_name="d", storage=storage)
    add_budget(storage, study._study_id, 100_000)
    reported: dict[int, int] = {}
    rng = random.Random(0)
    for _ in range(50):
        proc = subprocess.Popen([sys.executable, str(TRIVIAL), url, "d", "--print-done"], cwd=tmp_path,
                                env={**ENV, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=_read_lines, args=(proc, lines), daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while not any(line.startswith("done") for line in lines) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))  # land the kill at a random point of the next writes
        proc.kill()
        proc.wait()
        reader.join(5)
        for line in lines:
            if line.startswith("done"):
                _, number, p = line.split()
                reported[int(number)] = int(p)
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(reported) >= 50
    trials = {t.number: t for t in optuna.load_study(study_name="d", storage=url).get_trials()}
    for number, p in reported.items():
        assert trials[number].state == TrialState.COMPLETE and trials[number].value == p


def test_unreadable_sqlite_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    before = bad.read_bytes()
    out = cli("status", "x", "--storage", f"sqlite:///{bad}", cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "cannot open storage" in lines[0], out.stderr
    assert bad.read_bytes() == before, "the file must not be touched"


@pytest.mark.postgres
def test_postgres_outage_workers_wait_and_the_study_completes(tmp_path, postgres_server, pg_url):
    """PostgreSQL stopped for 20 s mid-study: workers back off, reconnect, nothing is lost."""
    study_file = write_study(tmp_path, "outage", model=f"{MODELS / 'tiny.py'}:Slow", budget={"max_trials": 6, "max_epochs": 2})
    out = cli("submit", study_file, "--storage", pg_url, "--no-wait", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    env = {**ENV, "TUNER_TEST_SLEEP": "1.5", "TUNER_SERVICE_HEARTBEAT_GRACE": "120", "TUNER_SERVICE_STORAGE": pg_url}
    worker = subprocess.Popen([sys.executable, "-m", "tuner_service", "worker", "outage"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    study = optuna.load_study(study_name="outage", storage=pg_url)
    deadline = time.monotonic() + 120
    while not any(t.state == TrialState.COMPLETE for t in study.get_trials()) and time.monotonic() < deadline:
        time.sleep(0.5)
    postgres_server.stop()
    time.sleep(20)
    postgres_server.start()
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output[-3000:]
    assert "storage unavailable" in output and "reachable again" in output
    trials = optuna.load_study(study_name="outage", storage=pg_url).get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 6
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


def test_chaos_agent_runners_killed_every_few_seconds(tmp_path):
    """40 short trials on 4 runner slots while a killer SIGKILLs a random runner every few
    seconds: every trial ends COMPLETE with its full epoch count; nothing duplicated or lost."""
    study_file = write_study(tmp_path, "chaos", budget={"max_trials": 40, "max_epochs": 2})
    assert cli("submit", study_file, "--storage", "sqlite:///t.db", "--no-wait", cwd=tmp_path).returncode == 0
    # Near the end one retry chain may be the only running trial and draw every kill; the crash
    # retry limit (3, against models that kill their runner every time) must not end it here.
    agent = subprocess.Popen([sys.executable, "-m", "tuner_service", "agent", "--gpus", "none", "--slots", "4",
                              "--once", "--storage", "sqlite:///t.db", "--recycle-after", "1000"], cwd=tmp_path,
                             env={**ENV, "TUNER_SERVICE_MAX_RETRIES": "10"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    study = optuna.load_study(study_name="chaos", storage=f"sqlite:///{tmp_path / 't.db'}")
    killed = []
    rng = random.Random(1)

    def killer() -> None:
        while agent.poll() is None and len(killed) < 6:
            time.sleep(rng.uniform(4, 8))
            running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if "pid" in t.user_attrs]
            if running:
                victim = rng.choice(running)
                try:
                    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
                    killed.append(victim.number)
                except ProcessLookupError:
                    pass

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    output, _ = agent.communicate(timeout=900)
    thread.join(10)
    assert agent.returncode == 0, output[-3000:]
    assert killed, "the killer never struck"
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 40, output[-3000:]
    assert all(t.user_attrs["epochs_run"] == len(t.intermediate_values) == 2 for t in complete)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert {t.number for t in failed} <= set(killed)
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    # Each killed run has a retry (retry_history names every run of the chain) with its parameters.
    retried_params = {n: t.params for t in trials for n in t.system_attrs.get("retry_history", ())}
    for f in failed:
        # A run killed while drawing its parameters recorded only some; the retry keeps those.
        retry = retried_params.get(f.number)
        assert retry is not None and f.params.items() <= retry.items(), "a killed trial must be retried with its parameters"


def test_resume_after_stopping_submit(tmp_path):
    study_file = write_study(tmp_path, "resume", model=f"{MODELS / 'tiny.py'}:Slow", budget={"max_trials": 5, "max_epochs": 1})
    proc = subprocess.Popen([sys.executable, "-m", "tuner_service", "submit", str(study_file), "--storage",
                             "sqlite:///t.db"], cwd=tmp_path, env={**ENV, "TUNER_TEST_SLEEP": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"sqlite:///{tmp_path / 't.db'}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            done = [t for t in optuna.load_study(study_name="resume", storage=url).get_trials() if t.state.is_finished()]
        except KeyError:
            done = []
        if len(done) >= 2:
            break
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    again = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = cli("submit", study_file, "--storage", "sqlite:///t.db", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = optuna.load_study(study_name="resume", storage=url).get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 5
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


@pytest.mark.postgres
def test_password_never_appears_anywhere(tmp_path, postgres_server, pg_url):
    """Run the service against PostgreSQL with a known password; grep everything it wrote."""
    password = postgres_server.password
    study_file = write_study(tmp_path, "secret", budget={"max_trials": 2, "max_epochs": 1})
    outputs = []
    seen_in_ps = []

    def watch_ps() -> None:
        while not stop.is_set():
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            if password in ps:
                seen_in_ps.append(True)
            time.sleep(0.2)

    stop = threading.Event()
    watcher = threading.Thread(target=watch_ps, daemon=True)
    watcher.start()
    runs = [
        ["submit", study_file, "--storage", pg_url, "--workers", "2"],
        ["ls", "--storage", pg_url], ["status", "secret", "--storage", pg_url], ["best", "secret", "--storage", pg_url],
        ["trials", "secret", "--storage", pg_url, "-f", "csv"], ["submit", study_file, "--storage", pg_url],
        ["status", "nope", "--storage", pg_url], ["best", "secret", "--storage", pg_url.replace(password, "wrong")],
        ["report", "secret", "--storage", pg_url, "-o", "r.html"],
        ["agent", "--gpus", "none", "--once", "--storage", pg_url],
    ]
    for args in runs:
        out = cli(*args, cwd=tmp_path)
        outputs.append(out.stdout + out.stderr)
    stop.set()
    watcher.join(2)
    assert not [o for o in outputs if password in o]
    assert not seen_in_ps, "the password was visible in a process's command line"
    study = optuna.load_study(study_name="secret", storage=pg_url)
    study_system_attrs = study._storage.get_study_system_attrs(study._study_id)
    stored = json.dumps([study.user_attrs, study_system_attrs] + [[t.user_attrs, t.system_attrs] for t in study.trials],
                        default=str)
    assert password not in stored
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
