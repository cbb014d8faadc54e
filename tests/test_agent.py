"""The agent: GPU slots (faked nvidia-smi), pinning, concurrency, crash recovery, hand-back."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ENV, MODELS, cli, write_study
from optuna.trial import TrialState

SLOW = f"{MODELS / 'tiny.py'}:Slow"


def _fake_nvidia_smi(directory):
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text('#!/bin/sh\ncase "$*" in *utilization.gpu*) printf "0, 40, 1200\\n1, 60, 2400\\n";; '
                      '*memory.total*) echo 16000;; *) printf "0\\n1\\n";; esac\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _spawn(args, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "tuner_service", *args], cwd=cwd, env={**ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _submit(workdir, name, trials, model=SLOW, epochs=2):
    study_file = write_study(workdir, name, model=model, budget={"max_trials": trials, "max_epochs": epochs})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", "--no-wait", cwd=workdir)
    assert out.returncode == 0, out.stderr
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 't.db'}")


def test_detect_gpus_without_tensorflow(tmp_path, monkeypatch):
    from tuner_service.agent import detect_gpus, make_slots

    monkeypatch.setenv("PATH", f"{_fake_nvidia_smi(tmp_path)}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert detect_gpus("all") == ["0", "1"]
    assert detect_gpus("1") == ["1"]
    assert detect_gpus("none") == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert detect_gpus("all") == ["1"]
    slots = make_slots(["0", "1"], 2, None)
    assert [s.label for s in slots] == ["gpu0/0", "gpu0/1", "gpu1/0", "gpu1/1"]
    assert [s.cuda_visible_devices for s in slots] == ["0", "0", "1", "1"]
    assert all(s.memory_mb == int(16000 * 0.9 / 2) for s in slots)
    assert [s.cuda_visible_devices for s in make_slots([], 1, 3)] == ["", "", ""]
    assert "tensorflow" not in sys.modules or True  # the agent module itself imports no framework
    code = "import sys, tuner_service.agent; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV).stdout.strip() == "False"


def test_agent_runs_four_trials_at_once_on_two_fake_gpus(workdir):
    study = _submit(workdir, "gpu", 4)
    env = {"PATH": f"{_fake_nvidia_smi(workdir)}:{os.environ['PATH']}", "TUNER_TEST_SLEEP": "8"}
    agent = _spawn(["agent", "--gpus", "0,1", "--trials-per-gpu", "2", "--once", "--storage", "sqlite:///t.db"],
                   workdir, env)
    out, _ = agent.communicate(timeout=300)
    assert agent.returncode == 0, out
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, out
    assert sorted(t.user_attrs["slot"] for t in trials) == ["gpu0/0", "gpu0/1", "gpu1/0", "gpu1/1"]
    assert sorted(t.user_attrs["cuda_visible_devices"] for t in trials) == ["0", "0", "1", "1"]
    # All four ran at the same time: their running intervals overlap.
    assert max(t.datetime_start for t in trials) < min(t.datetime_complete for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 4
    # GPU busy time: nvidia-smi (faked: GPU 0 40%, GPU 1 60% busy) sampled every 5 s while the
    # study's runners were on both GPUs, written to the study and shown by `status`.
    (busy,) = [v for k, v in study.user_attrs.items() if k.startswith("gpu_busy:")]
    assert busy["busy_pct"] == 50 and busy["gpus"] == "0,1" and busy["memory_used_mb_max"] == 2400, busy
    assert busy["samples"] >= 2 and busy["busy_gpu_s"] == busy["samples"] * 0.5 * 5
    status = cli("status", "gpu", "--storage", "sqlite:///t.db", cwd=workdir)
    line = next(x for x in status.stdout.splitlines() if x.startswith("gpu_busy:"))
    assert line.split(None, 1)[1].startswith("50% on ") and "(GPU 0,1, " in line, status.stdout


def test_agent_refuses_a_study_whose_code_changed(workdir):
    model_file = workdir / "m.py"
    model_file.write_text((MODELS / "tiny.py").read_text())
    study = _submit(workdir, "changed", 1, model=f"{model_file}:build_model")
    model_file.write_text(model_file.read_text() + "\n# edited after submit\n")
    agent = _spawn(["agent", "--gpus", "none", "--once", "--storage", "sqlite:///t.db"], workdir)
    out, _ = agent.communicate(timeout=120)
    assert agent.returncode == 0, out
    assert "refusing study 'changed'" in out and "differs from the submitted one" in out
    assert study.get_trials() == []  # nothing ran


def _wait_for_running(study, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [t for t in study.get_trials() if t.state == TrialState.RUNNING and "pid" in t.user_attrs]
        # build_model's last parameter drawn: the model is built and every parameter is stored.
        if running and "learning_rate" in running[0].params:
            return running[0]
        time.sleep(0.3)
    raise AssertionError("no trial started running")


@pytest.mark.slow
def test_killed_runner_fails_only_its_trial_and_the_retry_completes(workdir):
    study = _submit(workdir, "kill", 3)
    agent = _spawn(["agent", "--gpus", "none", "--once", "--storage", "sqlite:///t.db"], workdir,
                   {"TUNER_TEST_SLEEP": "4"})
    victim = _wait_for_running(study)
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    deadline = killed_at + 30
    while study.get_trials()[victim.number].state == TrialState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.2)
    assert study.get_trials()[victim.number].state == TrialState.FAIL
    assert time.monotonic() - killed_at < 30
    out, _ = agent.communicate(timeout=300)
    assert agent.returncode == 0, out
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and all(t.state != TrialState.RUNNING for t in trials)
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].params == trials[victim.number].params and retry[0].state == TrialState.COMPLETE
    assert "runner process died" in trials[victim.number].user_attrs["fail_reason"]


@pytest.mark.slow
def test_sigterm_hands_the_running_trial_back(workdir):
    study = _submit(workdir, "term", 2)
    worker = _spawn(["worker", "term", "--storage", "sqlite:///t.db"], workdir, {"TUNER_TEST_SLEEP": "30"})
    victim = _wait_for_running(study)
    t0 = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=60)
    assert time.monotonic() - t0 < 10, "the trial must be handed back, not waited out"
    trials = study.get_trials()
    assert trials[victim.number].state == TrialState.FAIL
    assert trials[victim.number].user_attrs["fail_reason"] == "handed back (SIGTERM)"
    assert not any(t.state == TrialState.COMPLETE for t in trials)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    # The hand-back, re-queued with every parameter the stopped run had drawn.
    assert len(waiting) == 1 and waiting[0].params == trials[victim.number].params
    # Starting again continues to exactly the budget.
    again = cli("worker", "term", "--storage", "sqlite:///t.db", cwd=workdir)
    assert again.returncode == 0, again.stderr
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 2 and TrialState.WAITING not in states


@pytest.mark.slow
def test_sigkilled_worker_is_recovered_by_heartbeat(workdir):
    study = _submit(workdir, "hb", 2)
    env = {"TUNER_SERVICE_HEARTBEAT_INTERVAL": "1", "TUNER_SERVICE_HEARTBEAT_GRACE": "3", "TUNER_TEST_SLEEP": "3"}
    first = _spawn(["worker", "hb", "--storage", "sqlite:///t.db"], workdir, env)
    victim = _wait_for_running(study)
    first.kill()
    first.wait()
    second = cli("worker", "hb", "--storage", "sqlite:///t.db", cwd=workdir, env=env)
    assert second.returncode == 0, second.stderr
    trials = study.get_trials()
    assert trials[victim.number].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].user_attrs["retry_reason"].startswith("heartbeat stale")
    assert retry[0].params == trials[victim.number].params
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 2
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


@pytest.mark.slow
def test_checkpointed_retry_resumes_from_the_last_finished_epoch(workdir):
    study_file = write_study(workdir, "ckpt", model=f"{MODELS / 'tiny.py'}:SlowEpochs",
                             budget={"max_trials": 1, "max_epochs": 6}, checkpoints=True)
    assert cli("submit", study_file, "--storage", "sqlite:///t.db", "--no-wait", cwd=workdir).returncode == 0
    study = optuna.load_study(study_name="ckpt", storage=f"sqlite:///{workdir / 't.db'}")
    env = {"TUNER_TEST_EPOCH_SLEEP": "1.5", "TUNER_SERVICE_HEARTBEAT_INTERVAL": "1", "TUNER_SERVICE_HEARTBEAT_GRACE": "3"}
    first = _spawn(["worker", "ckpt", "--storage", "sqlite:///t.db"], workdir, env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        trials = study.get_trials()
        if trials and len(trials[0].intermediate_values) >= 3:
            break
        time.sleep(0.2)
    first.kill()
    first.wait()
    epochs_before = len(study.get_trials()[0].intermediate_values)
    second = cli("worker", "ckpt", "--storage", "sqlite:///t.db", cwd=workdir, env=env)
    assert second.returncode == 0, second.stderr
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = trials[1]
    assert retry.params == trials[0].params
    # BackupAndRestore saved after each finished epoch: the retry starts where the run stopped.
    assert retry.user_attrs["resumed_from_epoch"] >= epochs_before - 1 >= 2
    assert max(retry.intermediate_values) == 6 and min(retry.intermediate_values) > 1


@pytest.mark.slow
@pytest.mark.postgres
def test_two_agents_share_a_postgres_study_through_a_server_restart(workdir, postgres_server, pg_url):
    study_file = write_study(workdir, "shared", model=SLOW, budget={"max_trials": 12, "max_epochs": 1})
    out = cli("submit", study_file, "--storage", pg_url, "--no-wait", cwd=workdir)
    assert out.returncode == 0, out.stderr
    env = {"TUNER_TEST_SLEEP": "1", "TUNER_SERVICE_STORAGE": pg_url, "TUNER_SERVICE_HEARTBEAT_GRACE": "120"}
    agents = [_spawn(["agent", "--gpus", "none", "--once"], workdir, env) for _ in range(2)]
    study = optuna.load_study(study_name="shared", storage=pg_url)
    deadline = time.monotonic() + 180
    while sum(t.state == TrialState.COMPLETE for t in study.get_trials()) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    postgres_server.restart()  # the agents and their runners ride it out
    outputs = [a.communicate(timeout=600)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs
    trials = optuna.load_study(study_name="shared", storage=pg_url).get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    failed = {t.number: t.user_attrs.get("fail_reason") for t in trials if t.state != TrialState.COMPLETE}
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 12, (failed, outputs)
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) >= 2, "both agents' runners ran trials"


def test_standby_runners_take_the_next_study_and_each_recycle_without_an_import(workdir):
    first, second = _submit(workdir, "first", 2, epochs=1), _submit(workdir, "second", 1, epochs=1)
    # --recycle-after 1: every trial needs a new runner process (a recycle, then a study switch).
    agent = _spawn(["agent", "--gpus", "none", "--once", "--recycle-after", "1", "--storage", "sqlite:///t.db"],
                   workdir)
    out, _ = agent.communicate(timeout=300)
    assert agent.returncode == 0, out
    trials = first.get_trials() + second.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, out
    started = [line for line in out.splitlines() if "runner pid" in line and "on study" in line]
    # The first runner starts cold; each later one is the standby started while its predecessor ran
    # (once that one had imported Keras), and the agent started a new standby behind it.
    assert len(started) == 3 and "standby" not in started[0], out
    assert all("(its standby runner, started in advance)" in line for line in started[1:]), out
    standby_pids = [int(line.split("standby runner pid ")[1].split()[0]) for line in out.splitlines()
                    if line.endswith("started") and "standby runner pid" in line]
    runner_pids = [int(line.split("runner pid ")[1].split()[0]) for line in started]
    assert runner_pids[1:] == standby_pids[:2], out
    assert [t.user_attrs["pid"] for t in trials] == runner_pids  # one trial per runner, in order
    # The standby left when the agent exited: no process of this agent lives on.
    for pid in standby_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_standby_runner_protocol_and_onednn_reimport(workdir):
    """A standby runner says ready before it reads its study; EOF means "not needed"; a study
    whose speed.onednn differs from the import's setting runs in a re-executed process."""
    env = {**ENV, "TUNER_SERVICE_STORAGE": f"sqlite:///{workdir / 't.db'}"}
    cmd = [sys.executable, "-m", "tuner_service.worker", "--standby", "--slot", "cpu/0", "--threads", "1"]
    idle = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert idle.stdout.readline() == "ready\n"
    out, err = idle.communicate("", timeout=60)  # EOF: nothing to do
    assert idle.returncode == 0 and out == "" and err == ""

    study_file = write_study(workdir, "onednn", speed={"onednn": True}, budget={"max_trials": 1, "max_epochs": 1})
    assert cli("submit", study_file, "--storage", "sqlite:///t.db", "--no-wait", cwd=workdir).returncode == 0
    runner = subprocess.Popen(cmd, cwd=workdir, env={**env, "TF_ENABLE_ONEDNN_OPTS": "0"}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "ready\n"
    out, err = runner.communicate('{"study": "onednn", "index": 7}\n', timeout=120)
    assert runner.returncode == 0, err
    assert "cannot apply" not in out + err  # apply_speed's warning had TensorFlow kept onednn off
    (trial,) = optuna.load_study(study_name="onednn", storage=f"sqlite:///{workdir / 't.db'}").get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["pid"] == runner.pid  # re-executed in place
    assert trial.user_attrs["worker"] == 7


def test_agent_idles_without_spinning_while_its_runner_trains(workdir):
    """The agent sleeps between polls: a runner's "ready" line on its pipe is read, never left to
    wake the loop again and again (with or without standby runners)."""
    study = _submit(workdir, "idle", 1, epochs=1)
    agent = _spawn(["agent", "--gpus", "none", "--once", "--no-standby", "--storage", "sqlite:///t.db"], workdir,
                   {"TUNER_TEST_SLEEP": "6"})

    def cpu_seconds() -> float:
        fields = (Path("/proc") / str(agent.pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    _wait_for_running(study)  # the runner imported, said ready, and is in its trial's 6 s sleep
    before = cpu_seconds()
    time.sleep(3)
    used = cpu_seconds() - before
    out, _ = agent.communicate(timeout=120)
    assert agent.returncode == 0, out
    assert used < 0.5, f"the agent used {used:.2f} s of CPU in 3 s while its only runner slept"
