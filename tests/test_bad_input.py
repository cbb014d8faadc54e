"""The bad-input matrix: one line naming the bad value and the fix, exit code 2, nothing written."""

from __future__ import annotations

import pytest
from conftest import MODELS, cli, write_study

TINY = MODELS / "tiny.py"
MULTI = MODELS / "multi_io.py"
STYLES = MODELS / "styles.py"
PLAIN = MODELS / "plain.py"
# A two-input, two-output model with its data: change one thing per case.
WIDE_DEEP = {"model": f"{MULTI}:build_model", "data": {"source": f"{MULTI}:load_dicts"}, "objective": "val_main_loss"}
PASSWORD = "s3cr3t-Pa55"

# (id, study fields or a raw file body, extra CLI args, text the message must contain)
CASES = [
    ("missing-file", None, [], "not found"),
    ("yaml-syntax", "name: [unclosed\n", [], "not valid YAML at line"),
    ("not-a-mapping", "- a\n- b\n", [], "must be a mapping"),
    ("unknown-field", {"colour": "red"}, [], "unknown field 'colour'"),
    ("unknown-nested-field", {"fit": {"epoch": 3}}, [], "unknown field 'epoch'"),
    ("unknown-tuner", {"tuner": "genetic"}, [], "valid tuners: bayesian"),
    ("unknown-tuner-flag", {}, ["--tuner", "annealing"], "unknown tuner 'annealing'"),
    ("unknown-tuner-option", {"tuner": {"name": "hyperband", "factr": 3}}, [], "valid options: factor"),
    ("bad-tuner-option-type", {"tuner": {"name": "hyperband", "factor": "x"}}, [], "factor"),
    ("negative-budget", {"budget": {"max_trials": -1}}, [], "budget.max_trials"),
    ("negative-budget-flag", {}, ["--max-trials", "-5"], "budget.max_trials"),
    ("zero-epochs", {"fit": {"epochs": 0}}, [], "fit.epochs"),
    ("epochs-over-max", {"fit": {"epochs": 5}, "budget": {"max_epochs": 2}}, [], "exceeds budget.max_epochs"),
    ("bad-name", {"name": "has space"}, [], "is not valid"),
    ("objective-direction-unknown", {"objective": "val_frobnication"}, [], "direction: maximize|minimize"),
    ("bad-direction", {"objective": {"name": "val_loss", "direction": "up"}}, [], "objective.direction"),
    ("bad-validation-split", {"data": {"source": "sklearn:digits", "validation_split": 1.5}}, [], "validation_split"),
    ("data-scheme", {"data": {"source": "s3://bucket/x"}}, [], "is not understood"),
    ("sklearn-dataset", {"data": {"source": "sklearn:imagenet"}}, [], "use one of: digits"),
    ("npz-missing", {"data": {"source": "npz:nope.npz"}}, [], "npz file 'nope.npz' not found"),
    ("model-file-missing", {"model": "nope.py:build_model"}, [], "model file 'nope.py' not found"),
    ("model-attr-missing", {"model": f"{TINY}:build_modle"}, [], "not found: tiny.py defines"),
    ("model-ref-no-attr", {"model": "just_a_name"}, [], "has no attribute"),
    ("set-without-equals", {}, ["--set", "fit.batch_size"], "is not KEY=VALUE"),
    ("storage-dir-missing", {}, ["--storage", "sqlite:///no/such/dir/t.db"], "does not exist"),
    ("storage-scheme", {}, ["--storage", "redis://localhost/0"], "not supported"),
    ("storage-unreachable", {}, ["--storage", f"postgresql+psycopg://bob:{PASSWORD}@127.0.0.1:9/db"], "cannot open storage"),
    ("resume-missing", {}, ["--resume"], "there is no study"),
    ("not-compiled", {"model": f"{TINY}:not_compiled"}, [], "not compiled"),
    ("returns-wrong-type", {"model": f"{TINY}:returns_string"}, [], "returned str"),
    ("metric-not-produced", {"model": f"{TINY}:no_accuracy"}, [], "objective 'val_accuracy' is not logged"),
    ("wrong-output-shape", {"model": f"{TINY}:wrong_output_shape"}, [], "fit raised"),
    # Keras wraps it in "Exception encountered when calling Sequential.call()": the line kept is
    # the one that says which shape was expected and which was received.
    ("wrong-input-shape", {"model": f"{TINY}:wrong_input_shape"}, [], "Expected shape (None, 64), but input has incompatible shape"),
    ("builder-raises", {"model": f"{TINY}:raises"}, [], "boom in build"),
    ("huge-model-oom", {"model": f"{TINY}:huge"}, [], "model check failed"),
    ("workers-zero", {}, ["--workers", "0"], "--workers"),
    # data sources (issues 17 and 18)
    ("data-function-raises", {**WIDE_DEEP, "data": {"source": f"{MULTI}:load_raises"}}, [],
     "load_raises() in"),
    ("data-function-missing", {**WIDE_DEEP, "data": {"source": f"{MULTI}:load_nothing"}}, [],
     "data function 'load_nothing' not found: multi_io.py defines"),
    ("labels-not-stratifiable", {**WIDE_DEEP, "model": f"{TINY}:build_model", "objective": "val_accuracy",
                                 "data": {"source": f"{MULTI}:load_one_sample_class"}}, [],
     "class 9 has 1 sample"),
    ("inputs-sample-counts", {**WIDE_DEEP, "data": {"source": f"{MULTI}:load_mismatched_counts"}}, [],
     "input 'wide' has 442 samples but input 'deep' has 441"),
    ("input-names", {**WIDE_DEEP, "data": {"source": f"{MULTI}:load_wrong_keys"}}, [],
     "the model's inputs are named wide, deep"),
    ("grid-several-inputs", {**WIDE_DEEP, "model": f"{PLAIN}:build_model",
                             "tuner": {"name": "grid", "param_grid": {"epochs": [1]}}}, [],
     "use a keras-tuner style study"),
    # objectives and fit (issue 18)
    ("objective-per-output-missing", {**WIDE_DEEP, "objective": "val_main_accuracy"}, [],
     "val_main_root_mean_squared_error"),
    ("unknown-callback", {"fit": {"callbacks": ["ReduceLROnPlatea"]}}, [], "unknown Keras callback 'ReduceLROnPlatea'"),
    ("unknown-callback-argument", {"fit": {"callbacks": [{"ReduceLROnPlateau": {"factr": 0.5}}]}}, [],
     "ReduceLROnPlateau has no argument 'factr'"),
    ("callback-argument-value", {"fit": {"callbacks": [{"ReduceLROnPlateau": {"factor": 1.5}}]}}, [],
     "does not support a factor >= 1.0"),
    ("callback-monitor-not-logged", {"fit": {"callbacks": [{"ReduceLROnPlateau": {"monitor": "val_acc"}}]}}, [],
     "monitors 'val_acc', which the model does not log"),
    ("callback-class-missing", {"fit": {"callbacks": [f"{STYLES}:RecordEpoch"]}}, [], "'RecordEpoch' not found"),
    ("callback-absolute-path", {"fit": {"callbacks": [{"CSVLogger": {"filename": "/tmp/log.csv"}}]}}, [],
     "must be a relative path"),
    ("callbacks-in-grid", {"model": f"{PLAIN}:build_model", "fit": {"callbacks": ["TerminateOnNaN"]},
                           "tuner": {"name": "grid", "param_grid": {"epochs": [1]}}}, [],
     "fit.callbacks is not used by tuner grid"),
    ("fit-validation-split", {"fit": {"validation_split": 0.1}}, [], "data.validation_split"),
]


@pytest.mark.parametrize("case, fields, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(workdir, case, fields, args, expected):
    if fields is None:
        study_file = workdir / "missing.yaml"
    elif isinstance(fields, str):
        study_file = workdir / "raw.yaml"
        study_file.write_text(fields)
    else:
        study_file = write_study(workdir, **fields) if "name" not in fields else write_study(workdir, **fields)
    storage = [] if "--storage" in args else ["--storage", "sqlite:///t.db"]
    out = cli("submit", study_file, *storage, *args, cwd=workdir)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(lines) == 1, out.stderr
    assert expected in lines[0], lines[0]
    assert PASSWORD not in out.stdout + out.stderr
    assert list(workdir.glob("*.db*")) == [], "bad input must not write a database"


def test_study_name_taken_says_how_to_resume(workdir):
    study_file = write_study(workdir, "taken", budget={"max_trials": 1, "max_epochs": 1})
    first = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    assert first.returncode == 0, first.stderr
    before = (workdir / "t.db").stat().st_size
    again = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--resume" in again.stderr
    assert len([line for line in again.stderr.splitlines() if line.strip()]) == 1
    import optuna

    study = optuna.load_study(study_name="taken", storage="sqlite:///t.db")
    assert len(study.trials) == 1
    assert (workdir / "t.db").stat().st_size == before


@pytest.mark.parametrize("arrays, expected", [
    ({"features": [[0.0]] * 10, "labels": [0] * 10}, "has no x array (it has features, labels); it needs arrays x and y"),
    ({"x_wide": [[0.0]] * 10, "x": [[0.0]] * 10, "y": [0] * 10}, "has both x and x_* arrays (it has x, x_wide, y); use x for one array"),
], ids=["npz-without-x-and-y", "npz-x-and-x_star"])
def test_npz_without_the_expected_keys(workdir, arrays, expected):
    import numpy as np

    np.savez(workdir / "d.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    study_file = write_study(workdir, data={"source": "npz:d.npz"})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert expected in lines[0], lines[0]
    assert list(workdir.glob("*.db*")) == []
