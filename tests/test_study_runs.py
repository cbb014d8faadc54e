"""End to end: every tuner runs a study on digits with 2 workers, results land in SQLite."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import MODELS, cli, write_study
from optuna.trial import TrialState


def _load(db, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


@pytest.mark.parametrize(
    "tuner, trials, epochs, quality",
    [
        ("random", 4, 3, None),
        # The model-based tuners reach a quality bar: 20 trials each, so in `make test-slow`.
        pytest.param("tpe", 20, 6, 0.95, marks=pytest.mark.slow),
        pytest.param("bayesian", 20, 6, 0.95, marks=pytest.mark.slow),
    ],
)
def test_tuner_two_workers(workdir, tuner, trials, epochs, quality):
    model = f"{MODELS.parent.parent / 'studies' / 'digits_model.py'}:build_model" if quality else None
    study_file = write_study(workdir, tuner, model=model, tuner=tuner, budget={"max_trials": trials, "max_epochs": epochs},
                             fit={"batch_size": 32})
    out = cli("submit", study_file, "--workers", "2", "--storage", "sqlite:///t.db", cwd=workdir, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "best trial" in out.stdout
    study = _load(workdir / "t.db", tuner)
    states = [t.state for t in study.trials]
    # The budget is exact across workers: never more, nothing left behind.
    assert len(study.trials) == trials
    assert states.count(TrialState.COMPLETE) == trials
    numbers = [t.number for t in study.trials]
    assert len(set(numbers)) == len(numbers)
    pids = {t.user_attrs["pid"] for t in study.trials}
    assert len(pids) == 2, "both worker processes ran trials"
    for t in study.trials:
        assert len(t.intermediate_values) == t.user_attrs["epochs_run"] >= 1
        assert t.user_attrs["best_epoch"] in t.intermediate_values
        assert t.value == pytest.approx(max(t.intermediate_values.values()))
        for key in ("param_count", "fit_seconds", "host", "device", "keras_backend"):
            assert key in t.user_attrs, key
        for key in ("model_summary", "history"):  # long texts: system attrs, off the dashboard's attr list
            assert key in t.system_attrs and key not in t.user_attrs, key
    if quality:
        assert study.best_value >= quality, f"{tuner}: best val_accuracy {study.best_value:.4f} < {quality}"


def test_hyperband_prunes(workdir):
    study_file = write_study(workdir, "hb", tuner={"name": "hyperband", "factor": 3},
                             budget={"max_trials": None, "max_epochs": 9})
    out = cli("submit", study_file, "--workers", "2", "--storage", "sqlite:///t.db", cwd=workdir, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    study = _load(workdir / "t.db", "hb")
    # keras-tuner's trial count for one Hyperband iteration with max_epochs=9, factor=3: 3 + 5 + 9.
    assert len(study.trials) == 17
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "hyperband pruned nothing"
    assert all(len(t.intermediate_values) < 9 for t in pruned), "a trial that ran every epoch is COMPLETE"
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}


def test_hypermodel_tuning_fit_and_queries(workdir):
    study_file = write_study(workdir, "hm", model=f"{MODELS / 'tiny.py'}:TunedFit", budget={"max_trials": 4})
    db = "sqlite:///t.db"
    out = cli("submit", study_file, "--storage", db, cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    study = _load(workdir / "t.db", "hm")
    assert all({"normalize", "shuffle", "num_layers"} <= set(t.params) for t in study.trials)
    # Conditional space: units_i exists exactly for i < num_layers.
    for t in study.trials:
        assert {k for k in t.params if k.startswith("units_")} == {f"units_{i}" for i in range(t.params["num_layers"])}

    best = json.loads(cli("best", "hm", "--storage", db, "--format", "json", cwd=workdir).stdout)
    assert best["number"] == study.best_trial.number
    assert best["value"] == pytest.approx(study.best_value)
    assert best["params"] == study.best_params
    assert best["best_epoch"] == study.best_trial.user_attrs["best_epoch"]

    rows = json.loads(cli("trials", "hm", "--storage", db, "--format", "json", "--top", "2", cwd=workdir).stdout)
    assert [r["number"] for r in rows] == [t.number for t in sorted(study.trials, key=lambda t: (-t.value, t.number))[:2]]
    csv_out = cli("trials", "hm", "--storage", db, "--format", "csv", cwd=workdir).stdout.splitlines()
    assert csv_out[0].startswith("number,state,value") and len(csv_out) == 5
    listing = json.loads(cli("ls", "--storage", db, "--format", "json", cwd=workdir).stdout)
    assert listing[0]["name"] == "hm" and listing[0]["complete"] == 4
    status = json.loads(cli("status", "hm", "--storage", db, "--format", "json", cwd=workdir).stdout)[0]
    assert status["state"] == "done" and status["best_trial"] == study.best_trial.number

    # Optuna's own CLI and SQL read the same tables: no private format.
    optuna_cli = subprocess.run([str(Path(sys.executable).parent / "optuna"), "best-trial", "--study-name", "hm", "--storage", db,
                                 "-f", "json"], cwd=workdir, capture_output=True, text=True)
    assert optuna_cli.returncode == 0, optuna_cli.stderr
    assert json.loads(optuna_cli.stdout)["number"] == study.best_trial.number
    with sqlite3.connect(workdir / "t.db") as con:
        n = con.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0]
    assert n == 4


def test_failing_trials_are_recorded_and_the_worker_goes_on(workdir):
    study_file = write_study(workdir, "nan", model=f"{MODELS / 'tiny.py'}:nan_sometimes", objective="val_loss",
                             tuner="random", budget={"max_trials": 6}, seed=3)
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir,
              env={"TUNER_SERVICE_MAX_CONSECUTIVE_FAILURES": "10"})
    assert out.returncode == 0, out.stdout + out.stderr
    study = _load(workdir / "t.db", "nan")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(study.trials) == 6 and failed and complete
    assert all(t.params["poison"] for t in failed)
    assert all("is nan at epoch 1" in t.user_attrs["fail_reason"] for t in failed)
    assert not any(t.params["poison"] for t in complete)


def test_three_failures_in_a_row_stop_the_study_and_submit_says_why(workdir):
    """The user's default (3 consecutive final failures stop the study): submit exits 3 with
    the reason in one line, and no trial is left RUNNING or WAITING."""
    study_file = write_study(workdir, "poisoned", model=f"{MODELS / 'tiny.py'}:nan_sometimes", objective="val_loss",
                             budget={"max_trials": 6}, enqueue=[{"poison": True}] * 3)
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 3, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if "stopped" in line]
    assert len(lines) == 1 and "study 'poisoned' stopped:" in lines[0] and "3" in lines[0], out.stderr
    # Each trial's new model is traced once by design: TensorFlow's retracing alarm is not shown.
    assert "retracing" not in out.stdout + out.stderr
    study = _load(workdir / "t.db", "poisoned")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 3 and TrialState.RUNNING not in states and TrialState.WAITING not in states


def test_builder_that_always_raises_is_rejected_before_writing(workdir):
    study_file = write_study(workdir, "boom", model=f"{MODELS / 'tiny.py'}:raises", budget={"max_trials": 10})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    assert out.returncode == 2 and "boom in build" in out.stderr
    assert not (workdir / "t.db").exists()


def test_per_trial_tensorboard_logs_with_hparams(workdir):
    study_file = write_study(workdir, "tb", budget={"max_trials": 2, "max_epochs": 2})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", "--tensorboard", "tb", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    for n in (0, 1):
        trial_dir = workdir / "tb" / "tb" / f"trial-{n}"
        events = [p for p in trial_dir.rglob("events.out.tfevents.*")]
        assert events, f"no TensorBoard events for trial {n}"
        blob = b"".join(p.read_bytes() for p in events)
        assert b"hparams" in blob and b"learning_rate" in blob  # the HParams plugin's session record
        assert (trial_dir / "train").is_dir() and (trial_dir / "validation").is_dir()


def test_resume_with_a_raised_budget_runs_only_the_extra_trials(workdir):
    study_file = write_study(workdir, "grow", budget={"max_trials": 2, "max_epochs": 1})
    assert cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir).returncode == 0
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", "--resume", "--max-trials", "3", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 more trial slot" in out.stdout
    study = _load(workdir / "t.db", "grow")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    epochs = cli("submit", study_file, "--storage", "sqlite:///t.db", "--resume", "--epochs", "1", cwd=workdir)
    assert epochs.returncode == 0 and len(_load(workdir / "t.db", "grow").trials) == 3  # nothing left to run


def test_a_runner_leaves_no_tensorflow_graphs_behind(workdir):
    """Keras' TensorFlow optimizer registers a ``tf.custom_gradient`` per trace that TensorFlow
    never drops; each keeps a FuncGraph alive (~4 MB per trial in a long-lived runner)."""
    from tuner_service.runners.keras import KerasRunner, _tf_gradient_registry
    from tuner_service.spec import load_spec

    spec = load_spec(write_study(workdir, "leak", budget={"max_trials": 3, "max_epochs": 1}))
    runner = KerasRunner(spec)
    registry = _tf_gradient_registry()
    assert registry is not None, "TensorFlow's gradient registry moved: update _tf_gradient_registry"
    custom = lambda: {k for k in registry if k.startswith("CustomGradient-")}  # noqa: E731
    before = custom()
    study = optuna.create_study(direction="maximize")
    for _ in range(3):
        trial = study.ask()
        outcome = runner.run(trial, prune=False)
        study.tell(trial, outcome.value)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert custom() == before


def test_warm_workers_go_away_when_the_model_check_fails(workdir):
    """`submit --workers 2` starts its workers before the model check (they import TensorFlow
    meanwhile); a check that fails stops them, writes nothing and prints one line."""
    study_file = write_study(workdir, "warmfail", model=f"{MODELS / 'tiny.py'}:raises")
    out = cli("submit", study_file, "--workers", "2", "--storage", "sqlite:///t.db", cwd=workdir, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "boom in build" in lines[0], out.stderr
    left = subprocess.run(["pgrep", "-f", "tuner_service.worker warmfail"], capture_output=True, text=True).stdout
    assert left.strip() == "", f"warm workers left running: {left}"
    if (workdir / "t.db").exists():  # nothing written
        with sqlite3.connect(workdir / "t.db") as con:
            assert "warmfail" not in [r[0] for r in con.execute("select study_name from studies")]
