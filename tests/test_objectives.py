"""Several objectives, constraints, warm start and known configurations, BOHB: through the real
CLI on digits, with the example study files of `studies/`."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import MODELS, cli, write_study
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from tuner_service.storage import open_storage

STUDIES = Path(__file__).parent.parent / "studies"


def _load(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 't.db'}")


@pytest.mark.slow
def test_pareto_front_with_a_parameter_cap_then_retrain_the_most_accurate(workdir: Path) -> None:
    """studies/digits_pareto.yaml (accuracy against parameters, at most 20,000 of them), 2 workers:
    a non-empty front of feasible trials that `best -f json` lists; `retrain --prefer
    val_accuracy` retrains its most accurate trial."""
    out = cli("submit", STUDIES / "digits_pareto.yaml", "--storage", "sqlite:///t.db", "--workers", "2",
              "--max-trials", "10", "--max-epochs", "2", cwd=workdir, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Pareto front:" in out.stdout
    study = _load(workdir, "digits_pareto")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 10
    for t in trials:  # the runner measured the parameters and recorded the cap as Optuna's constraint
        assert t.values[1] == t.user_attrs["params"] <= t.user_attrs["param_count"]
        assert t.constraints == {"params.max": t.values[1] - 20000}
    best = json.loads(cli("best", "digits_pareto", "--storage", "sqlite:///t.db", "-f", "json", cwd=workdir).stdout)
    front = {f["number"] for f in best["front"]}
    assert best["objectives"] == ["val_accuracy", "params"] and front
    feasible = [t for t in trials if t.values[1] <= 20000]
    assert all(t.values[1] <= 20000 for t in trials if t.number in front), "an infeasible trial on the front"
    # The front is exactly the feasible trials no other feasible trial dominates (Optuna's own answer).
    assert front == {t.number for t in study.best_trials if t.values[1] <= 20000}
    most_accurate = max((t for t in feasible if t.number in front), key=lambda t: (t.values[0], -t.number))
    status = json.loads(cli("status", "digits_pareto", "--storage", "sqlite:///t.db", "-f", "json", cwd=workdir).stdout)[0]
    assert sorted(status["pareto_front"]) == sorted(front) and status.get("infeasible", 0) == len(trials) - len(feasible)
    refused = cli("retrain", "digits_pareto", "--storage", "sqlite:///t.db", cwd=workdir)
    assert refused.returncode == 2 and "--prefer" in refused.stderr and str(sorted(front)) in refused.stderr
    out = cli("retrain", "digits_pareto", "--storage", "sqlite:///t.db", "--prefer", "val_accuracy", "--epochs", "1",
              "--output", "models", cwd=workdir, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = json.loads(next((workdir / "models" / "digits_pareto").glob("retrain-*/metrics.json")).read_text())
    assert metrics["trial"] == most_accurate.number
    assert metrics["search_values"] == {"val_accuracy": most_accurate.values[0], "params": most_accurate.values[1]}


def test_warm_start_and_enqueued_configurations_come_first(workdir: Path) -> None:
    """`warm_start` takes the earlier study's top-k configurations, `enqueue` the written ones:
    they are the new study's first trials (WAITING, with Optuna's fixed_params) within its budget;
    a parameter the model does not have, or a value outside its range, is dropped with a warning."""
    storage = open_storage(f"sqlite:///{workdir / 't.db'}")
    earlier = optuna.create_study(study_name="earlier", storage=storage, direction="maximize")
    dists = {"num_layers": IntDistribution(1, 3), "units_0": IntDistribution(8, 64, step=8),
             "learning_rate": FloatDistribution(1e-3, 3e-2, log=True), "old_knob": CategoricalDistribution(["a", "b"])}
    for value, layers, units in [(0.9, 2, 32), (0.5, 1, 8), (0.95, 1, 64), (0.7, 3, 16)]:
        earlier.add_trial(create_trial(value=value, distributions=dists, params={
            "num_layers": layers, "units_0": units, "learning_rate": 0.01, "old_knob": "a"}))
    study_file = write_study(workdir, "warm", budget={"max_trials": 5, "max_epochs": 1},
                             warm_start={"study": "earlier", "top_k": 2},
                             enqueue=[{"num_layers": 2, "units_0": 24, "learning_rate": 0.5}])
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", "--no-wait", cwd=workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "'old_knob' is not in this model's space; dropped" in out.stdout
    assert "learning_rate=0.5 is outside" in out.stdout
    assert "the first 3 of them known configurations" in out.stdout
    warm = _load(workdir, "warm")
    fixed = [t.system_attrs["fixed_params"] for t in warm.get_trials(states=(TrialState.WAITING,))]
    assert fixed == [{"num_layers": 2, "units_0": 24},
                     {"num_layers": 1, "units_0": 64, "learning_rate": 0.01},
                     {"num_layers": 2, "units_0": 32, "learning_rate": 0.01}]
    out = cli("worker", "warm", "--storage", "sqlite:///t.db", cwd=workdir, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    trials = warm.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5  # the budget, known configurations included
    for t, point in zip(trials[:3], fixed, strict=True):
        assert point.items() <= t.params.items()


@pytest.mark.parametrize(("fields", "message"), [
    ({"objective": ["val_accuracy", "params"], "tuner": "hyperband"}, "tuner 'hyperband' optimises one objective"),
    ({"objective": ["val_accuracy", "val_accuracy"]}, "names a metric twice"),
    ({"constraints": {"params": {}}}, "a constraint needs min:, max: or both"),
    ({"constraints": {"params": {"min": 5, "max": 1}}}, "min 5.0 is above max 1.0"),
    ({"objective": ["val_accuracy", {"name": "val_sharpness", "direction": "maximize"}]},
     "'val_sharpness' is not a metric the model logs"),
    ({"constraints": {"bogus_metric": {"max": 1}}}, "'bogus_metric' is not a metric the model logs"),
    ({"tuner": "grid", "enqueue": [{"a": 1}]}, "enqueue:/warm_start: do not apply to tuner grid"),
    ({"warm_start": {"study": "nope"}}, "warm_start.study: no study named 'nope'"),
])
def test_bad_objectives_and_constraints_are_one_line(workdir: Path, fields: dict, message: str) -> None:
    if "warm_start" in fields:  # a database with some other study, so the lookup reaches it
        optuna.create_study(study_name="other", storage=open_storage(f"sqlite:///{workdir / 't.db'}"))
    study_file = write_study(workdir, "bad", **fields)
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", "--no-wait", cwd=workdir)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stdout + out.stderr
    if (workdir / "t.db").exists():  # nothing written
        assert "bad" not in [s.study_name for s in open_storage(f"sqlite:///{workdir / 't.db'}").get_all_studies()]


def test_bohb_runs_hyperband_with_the_unique_tpe(workdir: Path) -> None:
    study_file = write_study(workdir, "bohb", model=f"{MODELS / 'tiny.py'}:build_model",
                             tuner={"name": "bohb", "factor": 3, "n_startup_trials": 2},
                             budget={"max_trials": 6, "max_epochs": 3})
    out = cli("submit", study_file, "--storage", "sqlite:///t.db", cwd=workdir, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    trials = _load(workdir, "bohb").get_trials()
    assert len(trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    points = {json.dumps(t.params, sort_keys=True) for t in trials}
    assert len(points) == 6, "the service's TPE proposes no parameter set twice"
