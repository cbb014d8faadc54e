"""The lifecycle's promises as a user meets them, with real `tuner-service` processes and Keras:
hand-backs never use up crash retries, a trial that keeps crashing gives up with its reason in
`status`, a PostgreSQL outage longer than the grace period fails no live trial, an agent refuses
the study it cannot serve (once, no restart loop) and serves it when it can, and an agent's
runner leaves a study as soon as the study has nothing claimable. Default settings throughout,
unless the setting is what a test is about. Slow: ``make test-slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ENV, MODELS, cli, write_study
from optuna.trial import TrialState

from tuner_service.storage import open_storage

pytestmark = pytest.mark.slow
SLOW = f"{MODELS / 'tiny.py'}:Slow"


def _spawn(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tuner_service", *args], cwd=cwd, env={**ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _submit(workdir: Path, name: str, trials: int, storage: str = "sqlite:///t.db", **fields: object) -> optuna.Study:
    fields.setdefault("model", SLOW)
    fields.setdefault("budget", {"max_trials": trials, "max_epochs": 1})
    study_file = write_study(workdir, name, **fields)
    out = cli("submit", study_file, "--storage", storage, "--no-wait", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    url = f"sqlite:///{workdir / 't.db'}" if storage.startswith("sqlite") else storage
    # The service's storage (pooled connections pre-pinged): a plain URL's pool would hand this
    # test a connection that a PostgreSQL restart closed.
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _running(study: optuna.Study, timeout: float = 120, exclude: set[int] | None = None) -> optuna.trial.FrozenTrial:
    """The first RUNNING trial (not in ``exclude``) whose model is built (its last parameter drawn)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            if "learning_rate" in t.params and "pid" in t.user_attrs and t.number not in (exclude or set()):
                return t
        time.sleep(0.2)
    raise AssertionError("no trial started running")


def test_three_hand_backs_then_a_kill_keep_the_budget_exact(workdir: Path) -> None:
    """Issue 12.1: `max_trials: 2`; a plain worker stopped with SIGTERM mid-trial three times,
    then SIGKILLed: the killed trial is retried (after the default heartbeat grace) and the study
    ends with exactly 2 COMPLETE trials."""
    study = _submit(workdir, "hb", 2)
    env = {"TUNER_TEST_SLEEP": "30"}
    seen: set[int] = set()
    for _ in range(3):
        worker = _spawn(["worker", "hb", "--storage", "sqlite:///t.db"], workdir, env)
        victim = _running(study, exclude=seen)
        seen.add(victim.number)
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out
    worker = _spawn(["worker", "hb", "--storage", "sqlite:///t.db"], workdir, env)
    victim = _running(study, exclude=seen)
    worker.kill()
    worker.wait()
    out, _ = _spawn(["worker", "hb", "--storage", "sqlite:///t.db"], workdir).communicate(timeout=600)
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 2, out
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    killed = trials[victim.number]
    assert killed.user_attrs["fail_reason"].startswith("heartbeat stale")
    retry = next(t for t in trials if victim.number in t.system_attrs.get("retry_history", ()))
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert (retry.system_attrs["hand_backs"], retry.system_attrs["crashes"]) == (3, 1)
    assert all("handed back (SIGTERM)" == trials[n].user_attrs["fail_reason"] for n in seen)


def test_four_crashes_give_up_and_status_says_so(workdir: Path) -> None:
    """A trial whose runner dies every time (four SIGKILLs): retried three times with the same
    parameters, then FAIL with "gave up" in its reason, which `status` and `trials` show."""
    study = _submit(workdir, "crash", 1)
    agent = _spawn(["agent", "--gpus", "none", "--once", "--storage", "sqlite:///t.db"], workdir,
                   {"TUNER_TEST_SLEEP": "30"})
    killed: set[int] = set()
    for _ in range(4):
        victim = _running(study, exclude=killed)
        killed.add(victim.number)
        os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    out, _ = agent.communicate(timeout=300)
    assert agent.returncode == 0, out
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 4
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 1, "every retry ran the same point"
    last = trials[-1].user_attrs["fail_reason"]
    assert "runner process died" in last and "gave up after 3 retries" in last
    status = json.loads(cli("status", "crash", "--storage", "sqlite:///t.db", "-f", "json", cwd=workdir).stdout)[0]
    assert status["failed"] == 1 and status["retried"] == 3
    assert "gave up" in status["failures"][str(trials[-1].number)]


@pytest.mark.postgres
def test_postgres_outage_longer_than_the_grace_fails_no_live_trial(workdir: Path, postgres_server, pg_url: str) -> None:  # noqa: ANN001
    """Issue 12.4: PostgreSQL stopped for 35 s (the default grace is 20 s) while an agent's two
    runners are mid-trial: every heartbeat stops at once; afterwards each driver gives live
    heartbeats the liveness margin to resume before judging any, so nothing is failed."""
    study = _submit(workdir, "pgout", 4, storage=pg_url)
    agent = _spawn(["agent", "--gpus", "none", "--slots", "2", "--once", "--storage", pg_url], workdir,
                   {"TUNER_TEST_SLEEP": "25"})
    first = _running(study)
    _running(study, exclude={first.number})
    postgres_server.stop()
    time.sleep(35)
    postgres_server.start()
    out, _ = agent.communicate(timeout=600)
    assert agent.returncode == 0, out
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, (out[-3000:], [t.user_attrs.get("fail_reason") for t in trials])


def test_agent_refuses_the_study_it_cannot_serve_once_then_serves_it(workdir: Path) -> None:
    """Two studies; one names a model file missing on the agent's machine: one log line, that
    study refused (and `status` says why), the other served, no runner restart loop; after the
    file appears, the refused study is served without restarting the agent. The re-check
    interval is what this test is about: 2 s instead of 30."""
    model = workdir / "mine.py"
    model.write_text((MODELS / "tiny.py").read_text())
    ok = _submit(workdir, "ok", 2)
    gone = _submit(workdir, "gone", 2, model=f"{model}:build_model")
    shutil.move(model, workdir / "elsewhere.py")
    agent = _spawn(["agent", "--gpus", "none", "--storage", "sqlite:///t.db"], workdir,
                   {"TUNER_SERVICE_REFUSAL_RECHECK": "2"})
    deadline = time.monotonic() + 300
    while len(ok.get_trials(states=(TrialState.COMPLETE,))) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(ok.get_trials(states=(TrialState.COMPLETE,))) == 2
    time.sleep(5)  # a few re-checks: still refused, still quiet
    assert gone.get_trials() == []
    status = json.loads(cli("status", "gone", "--storage", "sqlite:///t.db", "-f", "json", cwd=workdir).stdout)[0]
    assert "not found" in next(iter(status["refused_by"].values()))
    shutil.move(workdir / "elsewhere.py", model)
    while len(gone.get_trials(states=(TrialState.COMPLETE,))) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    agent.send_signal(signal.SIGTERM)
    out, _ = agent.communicate(timeout=120)
    assert len(gone.get_trials(states=(TrialState.COMPLETE,))) == 2, out
    assert out.count("refusing study 'gone'") == 1, out
    assert "serving study 'gone' again" in out
    assert "on study 'gone'" not in out.split("serving study 'gone' again")[0], "a runner was started for a refused study"
    status = json.loads(cli("status", "gone", "--storage", "sqlite:///t.db", "-f", "json", cwd=workdir).stdout)[0]
    assert "refused_by" not in status


def test_an_agent_runner_leaves_a_study_with_nothing_claimable(workdir: Path) -> None:
    """Issue 12.8: two slots, study A (higher priority, 3 trials) and B. When A's third trial
    takes one runner, the other has nothing of A to claim: it exits and its slot serves B while
    A's last trial still runs (before, it waited for A's trials to end, holding the slot)."""
    a = _submit(workdir, "a", 3, priority=1)
    b = _submit(workdir, "b", 2)
    agent = _spawn(["agent", "--gpus", "none", "--slots", "2", "--once", "--storage", "sqlite:///t.db"], workdir,
                   {"TUNER_TEST_SLEEP": "12"})
    out, _ = agent.communicate(timeout=600)
    assert agent.returncode == 0, out
    a_trials, b_trials = a.get_trials(), b.get_trials()
    assert [t.state for t in a_trials + b_trials] == [TrialState.COMPLETE] * 5, out
    last_a_end = max(t.datetime_complete for t in a_trials)
    assert min(t.datetime_start for t in b_trials) < last_a_end, out
