"""Retrain a trial's configuration on train + validation, evaluate once on test, keep the model.

Rules (also in the README):

- **Which trial**: the best COMPLETE trial, or ``--trial N`` (which must be COMPLETE).
- **Epochs** (``--epochs auto``): the trial's best epoch, unscaled. Of the two standard ways
  to reuse an early-stopping point on more data (Goodfellow et al., *Deep Learning*, 7.8:
  the same number of parameter updates, or the same number of passes over the data) we take
  the same number of passes: it is what keras-tuner users do by hand, and the extra
  validation samples then add updates rather than being squeezed into fewer epochs.
- **Seeds** (``--seeds K``): K models trained with seeds ``seed, seed+1, ...``; the metrics
  report every seed and the mean and standard deviation of each test metric. The saved model
  is the *first* seed's: picking the best on the test set would make its test score a
  selection, not an estimate.
- **Output**: ``DIR/STUDY/retrain-<UTC timestamp>-<id>/`` with ``model.keras``,
  ``model.weights.h5``, ``hyperparameters.json``, a copy of the model source and
  ``metrics.json``; a new directory every time, never overwritten. Load it back with
  :func:`tuner_service.load_model` (:mod:`tuner_service.artifacts`), which works for every model
  style; ``metrics.json``'s ``load`` line says whether ``keras.models.load_model`` does too.
- **Callbacks**: ``fit.callbacks`` are built afresh for every seed and run as in the trials,
  writing under ``callbacks/seed-<seed>/`` of the run directory; there is no validation data
  (train + validation is the training set), so a callback watching a ``val_*`` metric sees none.
- The retrain is recorded in the study (user attr ``retrain``) so ``status`` and the dashboard
  show the deployed model's test score beside the search's best validation score.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner_service import study as study_mod
from tuner_service.errors import BadInput
from tuner_service.storage import open_storage

if TYPE_CHECKING:
    from rich.console import Console


def retrain(
    study_name: str,
    storage_url: str | None = None,
    *,
    trial: int | None = None,
    prefer: str | None = None,
    epochs: int | str = "auto",
    output: str | Path = "models",
    seeds: int = 1,
    verbose: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Retrain and evaluate; returns ``(model, metrics)`` where metrics is what metrics.json holds.

    The trial: ``trial`` (a number), else by ``prefer`` (an objective's name: the front's best
    in it), else the best trial; a multi-objective study needs one of the two."""
    storage = open_storage(storage_url, create=False)
    study = study_mod.load(storage, study_name)
    study_mod.refuse_facade_study(study)
    spec = study_mod.stored_spec(study)
    chosen = study_mod.choose_trial(study, trial=trial, prefer=prefer)
    # Grid points carry their own epochs (a grid key, or the estimator's); otherwise the trial's.
    n_epochs = chosen.params.get("epochs", spec.epochs) if spec.tuner.name == "grid" else _epochs(epochs, chosen)
    if seeds < 1:
        raise BadInput(f"--seeds {seeds} is not valid; give 1 or more")
    run_dir = _new_run_dir(Path(output), study_name)

    study_mod.servable_spec(study)  # the model source here must be the submitted one
    hp_values: dict[str, Any] = dict(chosen.params)
    if spec.tuner.name == "grid":
        from tuner_service.runners.grid import retrain_point

        fit_one = retrain_point(spec, chosen)
    else:
        fit_one = _keras_tuner_style(spec, chosen, n_epochs, verbose, run_dir, hp_values)
    results = []
    first_model = None
    for k in range(seeds):
        model, test_metrics, data = fit_one(spec.seed + k)
        results.append({"seed": spec.seed + k, "test_metrics": test_metrics})
        if first_model is None:
            first_model = model
    from tuner_service import artifacts

    saved = artifacts.save(run_dir, first_model, spec=spec, hp_values=hp_values, x=data.x_train)
    metrics = {**_metrics_document(study_name, spec, chosen, n_epochs, data, results, run_dir), **saved}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    record = {k: metrics[k] for k in ("test_metrics", "trial", "epochs", "trained_on", "seeds", "created_at")}
    record["model_path"] = str(run_dir / (saved["model_file"] or saved["weights_file"]))
    record["load"] = saved["load"]
    study.set_user_attr("retrain", record)
    _upload_artifacts(study, chosen, run_dir, storage_url)
    from tuner_service.notes import write_study_note

    write_study_note(study)
    return first_model, metrics


def _keras_tuner_style(spec: Any, chosen: Any, n_epochs: int, verbose: int, run_dir: Path,
                       hp_values: dict[str, Any]) -> Any:
    """Train trial ``chosen``'s configuration on train + validation; ``hp_values`` receives
    the values the model was built with (defaults of parameters the trial did not draw too)."""
    from tuner_service import callbacks as user_callbacks
    from tuner_service.errors import TrialError, TunerServiceError, error_line
    from tuner_service.runners.keras import KerasRunner

    runner = KerasRunner(spec)
    keras = runner.keras
    d = runner.data
    if _len(d.x_test) == 0:
        raise BadInput(f"study {spec.name!r} has no test split (data.test_split is 0); nothing to evaluate on")
    x_all, y_all = _concat(d.x_train, d.x_val), _concat(d.y_train, d.y_val)
    fit_arguments = user_callbacks.fit_arguments(spec.fit, y_all, validation=False)

    def fit_one(seed: int) -> tuple[Any, dict[str, float], Any]:
        from tuner_service.hp import fixed

        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        hp = fixed(chosen.params)
        model = runner.build(hp)
        hp_values.update(hp.values)
        callbacks = user_callbacks.build(spec.fit.callbacks, run_dir / "callbacks" / f"seed-{seed}")
        try:
            runner.hypermodel.fit(hp, model, x_all, y_all, epochs=n_epochs, batch_size=spec.fit.batch_size,
                                  shuffle=spec.fit.shuffle, callbacks=callbacks, verbose=verbose, **fit_arguments)
        except TunerServiceError:
            raise
        except Exception as exc:
            hint = ("; retrain fits on train + validation without validation data, so a callback must not "
                    "require val_ metrics (use logs.get)") if "val_" in str(exc) else ""
            raise TrialError(f"retrain: fit raised {error_line(exc)}{hint}") from exc
        test = model.evaluate(d.x_test, d.y_test, batch_size=spec.fit.batch_size, return_dict=True, verbose=0)
        return model, {k: float(v) for k, v in test.items()}, d

    return fit_one


def _epochs(epochs: int | str, trial: Any) -> int:
    if isinstance(epochs, str) and epochs != "auto":
        if not epochs.isdigit() or int(epochs) < 1:
            raise BadInput(f"--epochs {epochs!r} is not valid; give 'auto' or a positive number")
        epochs = int(epochs)
    if epochs == "auto":
        best = trial.user_attrs.get("best_epoch") or trial.user_attrs.get("epochs_run")
        if not best:
            raise BadInput(f"trial {trial.number} recorded no best epoch; pass --epochs N")
        return int(best)
    return int(epochs)


def _new_run_dir(output: Path, study_name: str) -> Path:
    base = output / study_name
    try:
        base.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        run_dir = base / f"retrain-{stamp}-{uuid.uuid4().hex[:6]}"
        run_dir.mkdir(exist_ok=False)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BadInput(f"output directory {str(output)!r} is not writable ({exc.strerror}); pass --output DIR") from None
    return run_dir


def _metrics_document(study_name: str, spec: Any, trial: Any, n_epochs: int, data: Any,
                      results: list[dict[str, Any]], run_dir: Path) -> dict[str, Any]:
    first = results[0]["test_metrics"]
    summary = {}
    for name in first:
        values = [r["test_metrics"][name] for r in results]
        summary[name] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}
    return {
        "study": study_name,
        "trial": trial.number,
        "params": trial.params,
        "search_value": trial.values[0],
        "objective": spec.objective.name,
        **({"search_values": dict(zip([o.name for o in spec.objectives], trial.values))}
           if len(spec.objectives) > 1 else {}),
        "epochs": n_epochs,
        "trained_on": _len(data.x_train) + _len(data.x_val),
        "test_samples": _len(data.x_test),
        "data": {"source": spec.data.source, "hash": data.hash},
        "test_metrics": first,  # the saved model's (first seed's) metrics
        "seeds": [r["seed"] for r in results],
        "per_seed": results,
        "seed_summary": summary,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "directory": str(run_dir),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("tuner-service", "keras", "tensorflow-cpu", "tensorflow", "keras-tuner", "optuna", "scikit-learn",
                "scikeras", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _upload_artifacts(study: Any, trial: Any, run_dir: Path, storage_url: str | None) -> None:
    """Attach metrics and model to the source trial in the study's artifact store (for SQLite,
    beside the database file unless configured otherwise: ``dashboard.default_artifact_store``)."""
    from tuner_service.dashboard import default_artifact_store
    from tuner_service.notes import upload_trial_file

    store = default_artifact_store(storage_url)
    if store is None:
        return
    from tuner_service.artifacts import FILES

    for name in ("metrics.json", *FILES):
        if (run_dir / name).is_file():
            upload_trial_file(study, trial._trial_id, run_dir / name, store)


def _concat(a: Any, b: Any) -> Any:
    from tuner_service.data import tree_concat

    return tree_concat(a, b)


def _len(x: Any) -> int:
    from tuner_service.data import _len as length

    return length(x)


REQUEST_ATTR = "retrain_request"
#: An agent running a retrain refreshes the request's ``beat_at`` this often (seconds) ...
REQUEST_BEAT_SECONDS = float(os.environ.get("TUNER_SERVICE_RETRAIN_BEAT", "10"))
#: ... and a "running" request not refreshed for this long is taken over (its agent died).
REQUEST_STALE_SECONDS = float(os.environ.get("TUNER_SERVICE_RETRAIN_STALE", "60"))


def compare_and_set_study_user_attr(storage: Any, study_id: int, key: str, expected: Any, new: Any) -> bool:
    """Set a study user attr to ``new`` only if it still holds ``expected``; atomic.

    One ``UPDATE ... WHERE value_json = <expected>`` on Optuna's own table (the JSON Optuna
    itself writes), so of several agents exactly one wins a job.
    """
    import json

    from optuna.storages._rdb import models
    from sqlalchemy import update

    from tuner_service.storage import rdb

    table = models.StudyUserAttributeModel.__table__
    with rdb(storage).engine.begin() as conn:
        result = conn.execute(
            update(table)
            .where(table.c.study_id == study_id, table.c.key == key, table.c.value_json == json.dumps(expected))
            .values(value_json=json.dumps(new))
        )
        return result.rowcount == 1


def request_is_stale(request: dict[str, Any], now: float | None = None) -> bool:
    """A "running" request whose agent stopped refreshing it (killed, machine lost)."""
    if request.get("status") != "running":
        return False
    beat = request.get("beat_at")
    return beat is None or (now if now is not None else time.time()) - float(beat) > REQUEST_STALE_SECONDS


def request_on_agent(study_name: str, storage_url: str | None, *, trial: int | None, epochs: str, output: Path,
                     seeds: int, prefer: str | None = None) -> dict[str, Any]:
    """Queue a retrain for an agent slot (``retrain --on-agent``); an agent claims it atomically."""
    storage = open_storage(storage_url, create=False)
    study = study_mod.load(storage, study_name)
    study_mod.refuse_facade_study(study)
    # Fail now, not on the agent, when nothing completed (or the choice is ambiguous); the
    # agent retrains the number chosen here.
    trial = study_mod.choose_trial(study, trial=trial, prefer=prefer).number
    current = study.user_attrs.get(REQUEST_ATTR)
    if current and current.get("status") in ("pending", "running") and not request_is_stale(current):
        raise BadInput(f"study {study_name!r} already has a retrain {current['status']} on an agent "
                       f"(requested {current.get('requested_at')}); wait for it")
    request = {"id": uuid.uuid4().hex[:8], "status": "pending", "trial": trial, "epochs": epochs,
               "output": str(output), "seeds": seeds,
               "requested_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    study.set_user_attr(REQUEST_ATTR, request)
    return request


def wait_for_request(study_name: str, storage_url: str | None, request_id: str, console: Console,
                     poll: float = 2.0) -> dict[str, Any]:
    storage = open_storage(storage_url, create=False)
    study = study_mod.load(storage, study_name)
    announced = ""
    while True:
        request = study_mod.load(storage, study_name).user_attrs.get(REQUEST_ATTR) or {}
        if request.get("id") != request_id:
            raise BadInput(f"the retrain request of {study_name!r} was replaced by another one")
        status = request.get("status", "")
        if status != announced:
            console.print({"pending": "waiting for an agent with a free slot (tuner-service agent ...)",
                           "running": f"running on {request.get('host')} slot {request.get('slot')}"}.get(status, status))
            announced = status
        if status in ("done", "failed"):
            break
        time.sleep(poll)
    if status == "failed":
        raise BadInput(f"the retrain failed on the agent: {request.get('error', 'see the agent log')}")
    return study.user_attrs.get("retrain") or {}


def retrain_cli(study: str, storage: str | None, *, trial: int | None, epochs: str, output: Path, seeds: int,
                on_agent: bool, console: Console, prefer: str | None = None) -> None:
    if on_agent:
        request = request_on_agent(study, storage, trial=trial, epochs=epochs, output=output, seeds=seeds,
                                   prefer=prefer)
        record = wait_for_request(study, storage, request["id"], console)
        console.print(f"retrained trial #{record.get('trial')} of {study!r} on an agent: "
                      f"test {record.get('test_metrics')}; model at {record.get('model_path')} (on the agent's machine)")
        return
    _, m = retrain(study, storage, trial=trial, prefer=prefer, epochs=epochs, output=output, seeds=seeds, verbose=2)
    console.print(f"retrained trial #{m['trial']} of {study!r} on {m['trained_on']} samples for {m['epochs']} epochs")
    for name, value in m["test_metrics"].items():
        spread = m["seed_summary"][name]
        extra = f"  (mean {spread['mean']:.4f} ± {spread['std']:.4f} over {len(m['seeds'])} seeds)" if seeds > 1 else ""
        console.print(f"  test {name}: {value:.4f}{extra}")
    files = ", ".join(f for f in (m["model_file"], m["weights_file"], m["hyperparameters_file"]) if f)
    console.print(f"saved {files} and metrics.json in {m['directory']}")
    console.print(f"load it with {m['load']}")
