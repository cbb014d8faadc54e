"""Retrain: best config on train + validation, test metric reproducible from the saved file."""

from __future__ import annotations

import json
import os
import stat

import optuna
import pytest
from conftest import MODELS, cli, write_study
from optuna.trial import TrialState


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    d = tmp_path_factory.mktemp("retrain")
    study_file = write_study(d, "rt", model=f"{MODELS / 'tiny.py'}:build_model", budget={"max_trials": 3, "max_epochs": 3})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=d)
    assert out.returncode == 0, out.stderr
    return d


def test_retrain_best_writes_a_model_whose_test_score_is_recorded(searched):
    import keras

    from tuner_service import data as data_mod
    from tuner_service.spec import StudySpec

    out = cli("retrain", "rt", "--storage", "sqlite:///t.db", "--output", "models", "--seeds", "2", cwd=searched)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted((searched / "models" / "rt").glob("retrain-*"))
    assert len(runs) == 1
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    study = optuna.load_study(study_name="rt", storage=f"sqlite:///{searched / 't.db'}")
    best = study.best_trial
    assert metrics["trial"] == best.number and metrics["params"] == best.params
    assert metrics["epochs"] == best.user_attrs["best_epoch"]
    spec = StudySpec.model_validate(study.user_attrs["spec"])
    data = data_mod.load(spec.data, spec.seed)
    assert metrics["trained_on"] == len(data.x_train) + len(data.x_val)
    assert metrics["test_samples"] == len(data.x_test)
    assert metrics["seeds"] == [spec.seed, spec.seed + 1] and len(metrics["per_seed"]) == 2
    assert set(metrics["versions"]) >= {"keras", "optuna", "python"}
    # The saved model reproduces the recorded test accuracy.
    model = keras.models.load_model(runs[0] / "model.keras")
    recomputed = model.evaluate(data.x_test, data.y_test, return_dict=True, verbose=0)
    assert recomputed["accuracy"] == pytest.approx(metrics["test_metrics"]["accuracy"], abs=1e-6)
    # Beside it: the weights, the hyperparameters and the model source; build_model(hp) +
    # load_weights gives the same model, and tuner_service.load_model reads the directory.
    import sys

    import tuner_service
    from tuner_service.hp import fixed

    assert metrics["restore"] == "keras" and "keras.models.load_model" in metrics["load"]
    assert (runs[0] / metrics["model_source"]["copy"]).read_bytes() == (MODELS / "tiny.py").read_bytes()
    hp_values = json.loads((runs[0] / metrics["hyperparameters_file"]).read_text())
    assert {k: hp_values[k] for k in best.params} == best.params
    sys.path.insert(0, str(MODELS))
    try:
        from tiny import build_model
    finally:
        sys.path.remove(str(MODELS))
    rebuilt = build_model(fixed(hp_values))
    rebuilt.load_weights(runs[0] / metrics["weights_file"])
    by_hand = rebuilt.evaluate(data.x_test, data.y_test, return_dict=True, verbose=0)
    assert by_hand["accuracy"] == pytest.approx(metrics["test_metrics"]["accuracy"], abs=1e-6)
    loaded = tuner_service.load_model(runs[0]).evaluate(data.x_test, data.y_test, return_dict=True, verbose=0)
    assert loaded["accuracy"] == pytest.approx(metrics["test_metrics"]["accuracy"], abs=1e-6)
    # Recorded in the study, shown by status.
    assert study.user_attrs["retrain"]["test_metrics"]["accuracy"] == metrics["test_metrics"]["accuracy"]
    status = json.loads(cli("status", "rt", "--storage", "sqlite:///t.db", "-f", "json", cwd=searched).stdout)[0]
    assert status["retrained_test_metrics"]["accuracy"] == metrics["test_metrics"]["accuracy"]
    assert status["best_value"] == pytest.approx(best.value)

    # A second retrain never overwrites the first.
    again = cli("retrain", "rt", "--storage", "sqlite:///t.db", "--output", "models", "--epochs", "1", cwd=searched)
    assert again.returncode == 0, again.stderr
    assert len(list((searched / "models" / "rt").glob("retrain-*"))) == 2
    assert (runs[0] / "model.keras").exists()


def test_retrain_bad_input(searched):
    db = optuna.load_study(study_name="rt", storage=f"sqlite:///{searched / 't.db'}")
    # A trial that did not complete cannot be retrained.
    failed = optuna.trial.create_trial(state=TrialState.FAIL)
    db.add_trial(failed)
    failed_number = db.trials[-1].number
    cases = [
        (["--trial", str(failed_number)], "is FAIL, not COMPLETE"),
        (["--trial", "999"], "has no trial 999"),
        (["--epochs", "zero"], "--epochs 'zero' is not valid"),
    ]
    ro = searched / "readonly"
    ro.mkdir()
    os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() != 0:  # root ignores permissions; the check below then cannot fail
        cases.append((["--output", str(ro / "x")], "is not writable"))
    for args, expected in cases:
        out = cli("retrain", "rt", "--storage", "sqlite:///t.db", *args, cwd=searched)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2, (args, out.stderr)
        assert len(lines) == 1 and expected in lines[0], (args, out.stderr)


def test_retrain_output_not_writable(searched):
    blocker = searched / "a-file"
    blocker.write_text("x")  # a path under a regular file cannot be created, even by root
    out = cli("retrain", "rt", "--storage", "sqlite:///t.db", "--output", str(blocker / "sub"), cwd=searched)
    assert out.returncode == 2 and "is not writable" in out.stderr


def test_retrain_study_without_completed_trials(workdir):
    storage = f"sqlite:///{workdir / 'e.db'}"
    study = optuna.create_study(study_name="empty", storage=storage)
    study.set_user_attr("spec", {"name": "empty", "model": "x.py:f"})
    out = cli("retrain", "empty", "--storage", storage, cwd=workdir)
    assert out.returncode == 2 and "has no completed trial" in out.stderr


def test_retrain_on_agent_runs_in_an_agent_slot(searched):
    import subprocess
    import sys
    import time

    from conftest import ENV

    waiter = subprocess.Popen([sys.executable, "-m", "tuner_service", "retrain", "rt", "--storage", "sqlite:///t.db",
                               "--on-agent", "--output", "agent-models"], cwd=searched, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"sqlite:///{searched / 't.db'}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (optuna.load_study(study_name="rt", storage=url).user_attrs.get("retrain_request") or {}).get("status"):
            break
        time.sleep(0.2)
    agent = cli("agent", "--gpus", "none", "--once", "--storage", "sqlite:///t.db", cwd=searched)
    assert agent.returncode == 0, agent.stdout + agent.stderr
    assert "retraining 'rt'" in agent.stdout and "retrain of 'rt' done" in agent.stdout
    output, _ = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, output
    assert "on an agent" in output
    runs = list((searched / "agent-models" / "rt").glob("retrain-*"))
    assert len(runs) == 1 and (runs[0] / "model.keras").exists()
    request = optuna.load_study(study_name="rt", storage=url).user_attrs["retrain_request"]
    assert request["status"] == "done" and request["slot"] == "cpu/0"


def test_a_retrain_whose_agent_died_is_taken_over(searched):
    """A "running" request nobody refreshes any more (its agent was killed) blocks nothing: a new
    ``--on-agent`` request is refused only while the old one is alive, and an agent takes a stale
    one over."""
    import time

    url = f"sqlite:///{searched / 't.db'}"
    study = optuna.load_study(study_name="rt", storage=url)
    alive = {"id": "dead0001", "status": "running", "trial": None, "epochs": "auto", "output": "takeover-models",
             "seeds": 1, "host": "lost-host", "slot": "gpu3/0", "beat_at": time.time()}
    study.set_user_attr("retrain_request", alive)
    refused = cli("retrain", "rt", "--storage", "sqlite:///t.db", "--on-agent", cwd=searched)
    assert refused.returncode == 2 and "already has a retrain running" in refused.stderr
    study.set_user_attr("retrain_request", {**alive, "beat_at": time.time() - 3600})  # its agent died an hour ago
    agent = cli("agent", "--gpus", "none", "--once", "--storage", "sqlite:///t.db", cwd=searched)
    assert agent.returncode == 0, agent.stdout + agent.stderr
    assert "taken over from lost-host slot gpu3/0" in agent.stdout and "retrain of 'rt' done" in agent.stdout
    request = optuna.load_study(study_name="rt", storage=url).user_attrs["retrain_request"]
    assert request["status"] == "done" and request["id"] == "dead0001" and request["slot"] == "cpu/0"
    assert len(list((searched / "takeover-models" / "rt").glob("retrain-*/model.keras"))) == 1
