"""Control over running studies and agents: pause/resume, stop, delete, and draining an agent
(`agent --drain` or SIGUSR1), with real `tuner-service` processes; `status` shows what is going on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ENV, MODELS, cli, write_study
from optuna.trial import TrialState

from tuner_service import study as study_mod
from tuner_service.lifecycle import claim
from tuner_service.storage import open_storage

SLOW = f"{MODELS / 'tiny.py'}:Slow"


def _spawn(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tuner_service", *args], cwd=cwd, env={**ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _submit(workdir: Path, name: str, trials: int) -> optuna.Study:
    study_file = write_study(workdir, name, model=SLOW, budget={"max_trials": trials, "max_epochs": 1})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", "--no-wait", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 't.db'}")


def _status(workdir: Path, name: str) -> dict:
    out = cli("status", name, "--storage", "sqlite:///t.db", "-f", "json", cwd=workdir)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


def _wait(predicate, timeout: float = 120, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_paused_study_starts_no_trial_from_the_moment_pause_returns(tmp_path: Path) -> None:
    """The claim's own transaction reads the flag: after `pause` returned, claims get nothing,
    retries (WAITING trials) included, until `resume`."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    storage = open_storage(url)
    study = optuna.create_study(study_name="p", storage=storage)
    study_mod.add_budget(storage, study._study_id, 2)
    study_mod.enqueue_slots(study, 1, [{"x": 1}])
    study_mod.set_control(study, study_mod.PAUSED)
    assert claim(study) is None
    study_mod.set_control(study, None)
    first = claim(study)
    assert first is not None and first.trial.suggest_int("x", 0, 9) == 1  # the enqueued point first
    study_mod.set_control(study, study_mod.STOPPED)
    assert claim(study) is None
    first.stop_heartbeat()


@pytest.mark.slow
def test_pause_then_resume_a_running_study(workdir: Path) -> None:
    study = _submit(workdir, "ps", 3)
    worker = _spawn(["worker", "ps", "--storage", "sqlite:///t.db"], workdir, {"TUNER_TEST_SLEEP": "4"})
    _wait(lambda: study.get_trials(states=(TrialState.RUNNING,)), what="a running trial")
    out = cli("pause", "ps", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0 and "paused" in out.stdout, out.stderr
    paused_at = time.time()
    assert _status(workdir, "ps")["state"] == "paused"
    # The running trial finishes; nothing starts while paused; the worker waits (does not exit).
    _wait(lambda: not study.get_trials(states=(TrialState.RUNNING,)), what="the running trial to finish")
    time.sleep(8)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    assert trials[0].datetime_start.timestamp() < paused_at
    assert worker.poll() is None, "a plain worker waits for `resume`"
    out = cli("resume", "ps", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0 and "resumed" in out.stdout, out.stderr
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3  # the budget, exactly


@pytest.mark.slow
def test_agent_drain_finishes_running_trials_and_hands_none_back(workdir: Path) -> None:
    """`agent --drain` (through the agents registry) and SIGUSR1: the agent's runners finish
    their trials, take no new ones, and the agent exits; `status` listed it while it served."""
    study = _submit(workdir, "dr", 6)
    agent = _spawn(["agent", "--gpus", "none", "--slots", "2", "--storage", "sqlite:///t.db"], workdir,
                   {"TUNER_TEST_SLEEP": "5"})
    _wait(lambda: len(study.get_trials(states=(TrialState.RUNNING,))) == 2, what="two running trials")
    agents = _status(workdir, "dr")["agents"]
    assert len(agents) == 1 and "2 slot(s)" in agents[0] and f"pid {agent.pid}" in agents[0]
    out = cli("agent", "--drain", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0 and f"draining agent pid {agent.pid}" in out.stdout, out.stdout + out.stderr
    output, _ = agent.communicate(timeout=180)
    assert agent.returncode == 0, output
    assert "drained" in output
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, output  # none handed back, none failed
    status = _status(workdir, "dr")
    assert status["waiting"] == 4 and "agents" not in status

    # SIGUSR1 to the agent itself does the same.
    agent = _spawn(["agent", "--gpus", "none", "--storage", "sqlite:///t.db"], workdir, {"TUNER_TEST_SLEEP": "5"})
    _wait(lambda: len(study.get_trials(states=(TrialState.RUNNING,))) == 1, what="a running trial")
    os.kill(agent.pid, signal.SIGUSR1)
    output, _ = agent.communicate(timeout=180)
    assert agent.returncode == 0 and "drained" in output, output
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3


def test_stop_resume_and_delete_from_the_command_line(workdir: Path) -> None:
    _submit(workdir, "sd", 2)
    out = cli("stop", "sd", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0 and "stopped" in out.stdout
    assert _status(workdir, "sd")["state"] == "stopped"
    worker = cli("worker", "sd", "--storage", "sqlite:///t.db", cwd=workdir)
    assert worker.returncode == 0 and "ran 0 trial(s)" in worker.stdout  # a stopped study starts nothing
    out = cli("resume", "sd", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0 and "was stopped" in out.stdout
    assert _status(workdir, "sd")["state"] == "waiting"
    # Deleting asks first; without a terminal it needs --yes and writes nothing.
    out = cli("delete", "sd", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 2 and "--yes" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert cli("status", "sd", "--storage", "sqlite:///t.db", cwd=workdir).returncode == 0
    out = cli("delete", "sd", "--yes", "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 0 and "deleted" in out.stdout
    gone = cli("status", "sd", "--storage", "sqlite:///t.db", cwd=workdir)
    assert gone.returncode == 2 and "no study named 'sd'" in gone.stderr
