"""The trial lifecycle under faults, with real processes on SQLite and PostgreSQL.

A storage error is injected at every step of every transaction (claim, finish, fail, hand-back,
the reaper's crash re-queue, the stale check), and a process is SIGKILLed at every one of those
steps and right after every commit. Whatever happens, each study ends with exactly its budget
of ended trials (COMPLETE, or FAIL for good with its reason), none RUNNING or WAITING, every
enqueued point run once, every retry with its failed run's parameters, the counter at zero.

The workers are the real ``Worker`` with a Keras-free runner (``tests/lifecycle_harness.py``);
the dead runner's trial is re-queued by the agent's own reaper (``Agent.requeue_trials_of``), as
an agent does when its runner dies. Slow: ``make test-slow``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import ENV, MODELS
from optuna.trial import TrialState

from tuner_service import study as study_mod
from tuner_service.spec import StudySpec
from tuner_service.storage import open_storage

pytestmark = pytest.mark.slow
HARNESS = Path(__file__).parent / "lifecycle_harness.py"
REPO = Path(__file__).parent.parent
BUDGET, POINTS = 4, 2
FIXED = [10**6 + k for k in range(POINTS)]
#: In every test the first enqueued point is a model that raises (the fail arrow), whichever
#: process runs it: each study ends with exactly one trial failed for good.
MODEL_ERROR = {"HARNESS_FAIL_X": str(FIXED[0])}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'f.db'}"
    return str(request.getfixturevalue("pg_url"))


def _study(url: str, name: str = "f") -> optuna.Study:
    spec = StudySpec.model_validate({"name": name, "model": f"{MODELS / 'tiny.py'}:build_model", "tuner": "random",
                                     "budget": {"max_trials": BUDGET}})
    study = study_mod.create(spec, open_storage(url))
    study_mod.enqueue_slots(study, POINTS, [{"x": x} for x in FIXED])
    return study


def _spawn(command: str, url: str, *extra: str, faults: str = "", env: dict[str, str] | None = None,
           name: str = "f") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HARNESS), command, url, name, *extra], cwd=REPO,
        env={**ENV, "PYTHONPATH": str(REPO), "TUNER_SERVICE_FAILPOINTS": faults, **MODEL_ERROR, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(command: str, url: str, *extra: str, faults: str = "", env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = _spawn(command, url, *extra, faults=faults, env=env)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _until_started(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """Read the harness's output until a trial has started; returns what it printed."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        seen += line
        if line.startswith("started"):
            return seen
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no trial started:\n{seen}")


def _reap_and_finish(url: str, pid: int) -> None:
    """What an agent does after its runner died: re-queue its trial; then a clean worker runs the rest."""
    code, out = _run("reap", url, str(pid))
    assert code == 0, out
    code, out = _run("work", url)
    assert code == 0, out


def _running(url: str) -> list[int]:
    study = optuna.load_study(study_name="f", storage=open_storage(url))
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]


def _check(url: str, *, failures: int = 1) -> None:
    """The promise: budget exact, nothing lost, no point run twice, every permanent failure explained."""
    study = optuna.load_study(study_name="f", storage=open_storage(url))
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    assert not states[TrialState.RUNNING] and not states[TrialState.WAITING], states
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    final_fail = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) + len(final_fail) == BUDGET + POINTS, [(t.number, t.state.name) for t in trials]
    assert len(final_fail) == failures, [t.user_attrs.get("fail_reason") for t in final_fail]
    assert all(t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL), "a failure without reason"
    ran_points = Counter(t.params["x"] for t in complete + final_fail if t.params.get("x") in FIXED)
    assert ran_points == dict.fromkeys(FIXED, 1), f"enqueued points ran {ran_points}"
    by_number = {t.number: t for t in trials}
    for t in trials:
        history = t.system_attrs.get("retry_history")
        if history:
            failed = by_number[history[-1]]
            assert failed.state == TrialState.FAIL and failed.params.items() <= t.params.items(), \
                "a retry must run its failed run's parameters"
    assert study_mod.remaining_budget(study._storage, study._study_id) == 0


# ---------------------------------------------------------------------------- storage errors


IN_TRANSACTION = ["claim.begin", "claim.waiting.running", "claim.waiting.commit",
                  "claim.slot.taken", "claim.slot.created", "claim.slot.commit", "finish.begin", "finish.attrs",
                  "finish.commit", "error.begin", "error.failed", "error.commit"]


def test_a_storage_error_at_every_step_of_claim_finish_and_fail(url: str) -> None:
    """Each step fails once with a connection error: the transaction rolls back, is retried, and
    the study ends exactly as without faults (one trial failed by the model, with its reason)."""
    _study(url)
    faults = ",".join(f"{p}=error" for p in IN_TRANSACTION)
    code, out = _run("work", url, faults=faults)
    assert code == 0, out
    assert all(f"failpoint {p} fired" in out for p in IN_TRANSACTION), out  # every fault fired and was retried
    _check(url)


def test_a_storage_error_at_every_step_of_hand_back_and_reap(url: str) -> None:
    _study(url)
    # Hand-back: SIGTERM mid-trial; every step of the hand-back transaction fails once.
    worker = _spawn("work", url, faults=",".join(f"hand_back.{p}=error" for p in ("begin", "failed", "enqueued", "commit")),
                    env={"HARNESS_SLEEP": "2"})
    _until_started(worker)
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0 and out.count("failpoint hand_back.") == 4, out
    # Crash: a runner SIGKILLed mid-trial; every step of the reaper's transaction fails once.
    worker = _spawn("work", url, env={"HARNESS_SLEEP": "2"})
    _until_started(worker)
    worker.kill()
    worker.wait()
    code, out = _run("reap", url, str(worker.pid), faults=",".join(f"crash.{p}=error" for p in ("begin", "failed", "enqueued", "commit")))
    assert code == 0 and out.count("failpoint crash.") == 4, out
    code, out = _run("work", url)
    assert code == 0, out
    _check(url)


# ---------------------------------------------------------------------------- kills


KILL_POINTS = [*IN_TRANSACTION, "claim.committed", "finish.committed", "error.committed"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_worker_killed_at_every_step(url: str, point: str) -> None:
    _study(url)
    worker = _spawn("work", url, faults=f"{point}=kill")
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == -signal.SIGKILL, f"{point} was never reached:\n{out}"
    _reap_and_finish(url, worker.pid)
    _check(url)


@pytest.mark.parametrize("point", ["begin", "failed", "enqueued", "commit", "committed"])
def test_a_worker_killed_while_handing_a_trial_back(url: str, point: str) -> None:
    _study(url)
    worker = _spawn("work", url, faults=f"hand_back.{point}=kill", env={"HARNESS_SLEEP": "2"})
    _until_started(worker)
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=120)
    assert worker.returncode == -signal.SIGKILL
    _reap_and_finish(url, worker.pid)
    _check(url)


@pytest.mark.parametrize("point", ["begin", "failed", "enqueued", "commit", "committed"])
def test_the_reaper_killed_while_re_queueing(url: str, point: str) -> None:
    _study(url)
    worker = _spawn("work", url, env={"HARNESS_SLEEP": "2"})
    _until_started(worker)
    worker.kill()
    worker.wait()
    code, out = _run("reap", url, str(worker.pid), faults=f"crash.{point}=kill")
    assert code == -signal.SIGKILL, out
    _reap_and_finish(url, worker.pid)  # the next look re-queues it (or finds it already done)
    _check(url)


@pytest.mark.parametrize("faults", ["stale.found=kill", "crash.failed=kill", "crash.commit=error,crash.enqueued=error"])
def test_the_stale_check_under_faults(url: str, faults: str) -> None:
    """A run whose process is gone without a reaper (a lost machine) is found by any driver's
    stale check; a check that dies or errs part-way leaves the trial for the next one. The grace
    period is what this test is about, so it is shortened (1 s beats, 3 s grace)."""
    _study(url)
    fast = {"TUNER_SERVICE_HEARTBEAT_INTERVAL": "1", "TUNER_SERVICE_HEARTBEAT_GRACE": "3", "HARNESS_SLEEP": "2"}
    worker = _spawn("work", url, env=fast)
    _until_started(worker)
    worker.kill()
    worker.wait()
    time.sleep(4)  # the heartbeat is now older than the grace period
    code, out = _run("stale", url, faults=faults, env=fast)
    assert code in (0, -signal.SIGKILL), out
    deadline = time.monotonic() + 60
    while _running(url) and time.monotonic() < deadline:  # the next checks resume where it stopped
        code, out = _run("stale", url, env=fast)
        assert code == 0, out
    assert not _running(url)
    code, out = _run("work", url, env=fast)
    assert code == 0, out
    _check(url)


def test_the_harness_itself_needs_no_keras() -> None:
    """The fault tests must stay fast: the harness imports neither Keras nor TensorFlow."""
    code = subprocess.run([sys.executable, "-c", "import sys; sys.argv=['x']; import lifecycle_harness, "
                           "tuner_service.worker, tuner_service.agent; "
                           "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, sorted(sys.modules)"],
                          cwd=Path(__file__).parent, env={**ENV, "PYTHONPATH": f"{REPO}{os.pathsep}{Path(__file__).parent}"},
                          capture_output=True, text=True)
    assert code.returncode == 0, code.stderr[-2000:]
