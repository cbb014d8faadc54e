"""keras-tuner's chief/worker variables on the drop-in: every process joins one study. The
chief's address answers which study and storage to join; a worker waits for it, never deletes
or replaces the study, and claims from the same budget (real processes, real sockets)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ENV
from optuna.trial import TrialState

from tuner_service.keras_tuner import _chief

SCRIPT = """
import sys, time
import tuner_service.keras_tuner as kt

class Slow(kt.RandomSearch):
    def run_trial(self, trial, *args, **kwargs):
        time.sleep(0.4)
        return (trial.hyperparameters.Float("x", -1.0, 1.0) - 0.5) ** 2

tuner = Slow(max_trials=int(sys.argv[2]), seed=3, directory=sys.argv[1], project_name="group", overwrite=True)
tuner.search(verbose=1)
print("TRIALS", len(tuner.oracle.trials))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp_path: Path, tuner_id: str, port: int, trials: int) -> subprocess.Popen[str]:
    env = {**ENV, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(port)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), str(trials)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_chief_and_worker_share_one_study(tmp_path: Path) -> None:
    port = _free_port()
    storage = f"sqlite:///{tmp_path / 'group.db'}"
    # A stale study of the same name (an earlier run): the worker must not join it before the
    # chief replaces it (overwrite=True), nor delete it itself.
    stale = optuna.create_study(study_name="group", storage=storage)
    stale.set_user_attr("stale", True)
    worker = _start(tmp_path, "tuner0", port, 8)
    time.sleep(2)
    assert worker.poll() is None, "the worker did not wait for the chief"
    assert optuna.load_study(study_name="group", storage=storage).user_attrs == {"stale": True}
    chief = _start(tmp_path, "chief", port, 8)
    outputs = {}
    for name, proc in (("chief", chief), ("tuner0", worker)):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}:\n{out[-2000:]}\n{err[-3000:]}"
        outputs[name] = out
    study = optuna.load_study(study_name="group", storage=storage)
    assert "stale" not in study.user_attrs
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)  # the budget, exactly
    by_process = {name: sum(t.user_attrs["tuner_id"] == name for t in trials) for name in outputs}
    assert all(n >= 1 for n in by_process.values()), by_process
    for name, out in outputs.items():  # each process prints its own trials, keras-tuner's way
        assert out.count("Search: Running Trial #") == by_process[name]
        assert "TRIALS 8" in out  # and sees all of them in oracle.trials


def test_the_chief_answers_with_its_study_and_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    for key, value in {"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "127.0.0.1",
                       "KERASTUNER_ORACLE_PORT": str(port), _chief.CHIEF_WAIT_ENV: "3"}.items():
        monkeypatch.setenv(key, value)
    assert _chief.role() == "chief"
    url = "postgresql+psycopg://tuner:s3cret@db/tuner"
    server = _chief.ChiefServer(_chief.chief_info("p", url, 7))
    try:
        answer = _chief.ask_chief("p")
        assert answer == {"project": "p", "storage": "postgresql+psycopg://tuner:***@db/tuner", "study_id": 7}
        assert _chief.worker_storage(answer, url) == url  # the worker's own URL names the same database
        with pytest.raises(RuntimeError, match=r"tuner:\*\*\*@db/tuner; give this worker the same URL"):
            _chief.worker_storage(answer, "sqlite:///elsewhere.db")
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"no chief serves project 'other' at 127\.0\.0\.1:\d+ .*"
                                               r"KERASTUNER_TUNER_ID=chief"):
            _chief.ask_chief("other")
        assert 3 <= time.monotonic() - started < 10
    finally:
        server.close()
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    assert _chief.role() == "worker"
    monkeypatch.delenv("KERASTUNER_TUNER_ID")
    with pytest.raises(RuntimeError, match="KERASTUNER_TUNER_ID"):  # keras-tuner's own check
        _chief.role()
