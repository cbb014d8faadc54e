"""Dashboard notes and learning-curve images: what they say, where they land, and that they never raise."""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import optuna
import pytest
from dashboard_support import BEST_NUMBER, POINTS, history_for, make_study
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
from optuna_dashboard import get_note

from tuner_service import notes
from tuner_service.storage import open_storage

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    # open_storage: the engine settings (WAL, BEGIN IMMEDIATE) the workers use
    return make_study(open_storage(f"sqlite:///{tmp_path / 'tuner.db'}"))


def test_study_note_has_best_params_data_spec_and_retrain(study: optuna.Study) -> None:
    notes.write_study_note(study)
    note = get_note(study)  # read back the way optuna-dashboard does: from the study's system attrs
    best = POINTS[BEST_NUMBER]
    assert f"in trial #{BEST_NUMBER} at epoch 5" in note
    for name, value in best.items():
        assert f"| {name} | {value} |" in note
    assert "| train | 1077 |" in note and "| test | 360 |" in note
    assert "```yaml\nname: digits-demo\n" in note and "n_startup_trials: 3" in note
    assert "Retrained model" not in note

    study.set_user_attr("retrain", {"test_metrics": {"accuracy": 0.9611, "loss": 0.12}, "trial": BEST_NUMBER,
                                    "epochs": 5, "trained_on": 1437, "model_path": "models/digits-demo/model.keras"})
    notes.write_study_note(study)  # again: overwrites, version bumps
    note = get_note(study)
    assert "### Retrained model" in note and "| accuracy | 0.9611 |" in note and "model.keras" in note
    assert note.count("## digits-demo") == 1


def test_study_note_shrinks_cleanly(study: optuna.Study) -> None:
    # Notes are stored in ~2 kB chunks; a shorter rewrite must not keep the old tail.
    study.set_user_attr("retrain", {"test_metrics": {f"metric_{i}": i / 7 for i in range(300)}})
    notes.write_study_note(study)
    assert len(get_note(study)) > 5000
    study.set_user_attr("retrain", None)
    notes.write_study_note(study)
    assert get_note(study) == notes.study_note_markdown(study)


def test_study_note_without_completed_trials(tmp_path: Path) -> None:
    s = make_study(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'e.db'}"), "empty", points=[])
    notes.write_study_note(s)
    assert "No completed trial yet" in get_note(s)


SUMMARY = """Model: "sequential"
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━┓
┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━┩
│ dense (Dense)                   │ (None, 128)            │         8,320 │
└─────────────────────────────────┴────────────────────────┴───────────────┘
 Total params: 9,600 (37.50 KB)"""


def decorate(study: optuna.Study, trial: optuna.Trial, state: str = "COMPLETE", **overrides: object) -> None:
    """What the trial lifecycle passes for a finished Keras trial, while it is still RUNNING."""
    history = history_for(128)
    kwargs: dict = {
        "number": trial.number, "state": state, "values": [max(history["val_accuracy"])] if state == "COMPLETE" else None,
        "params": {"units": 128, "learning_rate": 0.003, "activation": "relu"},
        "attrs": {"param_count": 9600, "best_epoch": 5, "epochs_run": 5, "fit_seconds": 1.25, "trial_seconds": 1.5,
                  "device": "/device:GPU:0", "keras_backend": "tensorflow", "host": "h1", "pid": 42, "slot": 1},
        "details": {"history": history, "model_summary": SUMMARY},
        "objective": "val_accuracy", "artifact_store": None,
    }
    kwargs.update(overrides)
    notes.decorate_trial(study, trial._trial_id, **kwargs)


def trial_note(study: optuna.Study, trial_id: int) -> str:
    return get_note(optuna.Trial(study, trial_id))  # read back the way optuna-dashboard does


def test_decorated_trial_note_has_everything_a_keras_user_looks_for(study: optuna.Study, tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path)
    trial = study.ask()
    decorate(study, trial, artifact_store=store)
    study.tell(trial, 0.948)  # the lifecycle commits the outcome after decorating
    note = trial_note(study, trial._trial_id)
    assert note.startswith(f"## Trial {trial.number}: complete\n")
    assert "**val_accuracy = 0.948** at epoch 5 of 5." in note
    for row in ("| units | 128 |", "| learning_rate | 0.003 |", "| activation | relu |", "| best epoch | 5 |",
                "| val_accuracy at best epoch | 0.948 |", "| parameter count | 9,600 |", "| fit time | 1.25 s |",
                "| device | /device:GPU:0 |", "| Keras backend | tensorflow |", "| slot | 1 |"):
        assert row in note, row
    # The per-epoch table: every logged metric, training beside validation, the best epoch marked.
    assert "| epoch | loss | val_loss | accuracy | val_accuracy |" in note
    assert "| 1 | 1.5 | 1.65 | 0.648 | 0.628 |" in note and "| **5** (best) | 0.3 | 0.37 | 0.968 | 0.948 |" in note
    assert "### Model summary\n\n```text\nModel: \"sequential\"\n┏━" in note and " Total params: 9,600" in note
    assert "Traceback" not in note and "Failed" not in note
    # The learning curves: an artifact of the trial, recorded while it was running.
    (meta,) = get_all_artifact_meta(study.trials[trial.number], storage=study._storage)
    assert meta.filename == f"learning-curves-trial-{trial.number}.svg" and meta.mimetype == "image/svg+xml"
    assert (tmp_path / meta.artifact_id).read_text().startswith("<svg")
    assert get_note(study) == ""  # the trial note is its own, not the study's


def test_failed_trial_note_says_why(study: optuna.Study) -> None:
    trial = study.ask()
    trace = "Traceback (most recent call last):\n" + "".join(f"  frame {i}\n" for i in range(100)) + "ValueError: shapes"
    decorate(study, trial, state="FAIL", attrs={"fail_reason": "fit raised ValueError: expected shape (None, 8, 8)\n"
                                                               "received (None, 64)", "epochs_run": 0},
             details={"traceback": trace})
    note = trial_note(study, trial._trial_id)
    assert "**Failed:** fit raised ValueError: expected shape (None, 8, 8) received (None, 64)" in note
    assert "### Traceback (last lines)" in note and note.rstrip().endswith("ValueError: shapes\n```")
    assert "(72 earlier lines)" in note and "frame 70\n" not in note and "frame 71\n" in note
    assert "Per epoch" not in note and "Model summary" not in note


def test_pruned_trial_note_and_long_runs_stay_compact(study: optuna.Study) -> None:
    trial = study.ask()
    history = {"loss": [1 / (e + 1) for e in range(200)], "val_loss": [1 / (e + 1) + 0.1 for e in range(200)],
               "val_accuracy": [min(0.99, e / 100) for e in range(200)]}
    decorate(study, trial, state="PRUNED", attrs={"best_epoch": 100, "epochs_run": 200},
             details={"history": history})
    note = trial_note(study, trial._trial_id)
    assert "Pruned after epoch 200; best val_accuracy 0.99 at epoch 100." in note
    epoch_rows = [line for line in note.splitlines() if line.startswith("| ") and line.split("|")[1].strip()[:1] in "0123456789*"]
    epochs = [line.split("|")[1].strip() for line in epoch_rows]
    assert epochs[0] == "1" and epochs[-1] == "200" and "**100** (best)" in epochs
    assert len(epoch_rows) <= notes.MAX_EPOCH_ROWS + 2 and "| … |" in note
    assert len(note) < 4000


def test_decorating_again_replaces_the_note_whole(study: optuna.Study) -> None:
    """A second note for the same trial (not what the lifecycle does) takes the general path:
    the next version, and no stale chunk of the longer first note left behind."""
    trial = study.ask()
    decorate(study, trial, details={"model_summary": "x" * 5000})
    assert len(trial_note(study, trial._trial_id)) > 5000
    decorate(study, trial, details={})
    note = trial_note(study, trial._trial_id)
    assert "Model summary" not in note and len(note) < 2000
    assert study._storage.get_study_system_attrs(study._study_id)[f"dashboard:{trial._trial_id}:note_ver"] == 2


def test_finished_trials_are_not_decorated_and_nothing_raises(study: optuna.Study, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tuner_service.notes")
    trial = study.ask()
    study.tell(trial, 0.5)
    decorate(study, trial)  # too late: Optuna's rule, finished trials are immutable
    assert trial_note(study, trial._trial_id) == ""
    decorate(study, study.ask(), artifact_store=FileSystemArtifactStore(tmp_path / "missing" / "dir"))
    decorate(study, study.ask(), details=None)
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(":")[0] for m in messages] == [
        "could not write the dashboard note of trial 5 of 'digits-demo'",
        "could not store the learning curves of trial 6 of 'digits-demo'",  # the note is still written
        "could not write the dashboard note of trial 7 of 'digits-demo'"]
    assert "Per epoch" in trial_note(study, study.trials[6]._trial_id)


@pytest.mark.postgres
def test_decorate_trial_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    study = make_study(open_storage(pg_url), "pg")
    trial = study.ask()
    decorate(study, trial, artifact_store=FileSystemArtifactStore(tmp_path))
    study.tell(trial, 0.9)
    assert "| **5** (best) |" in trial_note(study, trial._trial_id)
    assert len(get_all_artifact_meta(study.trials[trial.number], storage=study._storage)) == 1


def test_stored_trial_note_from_user_attrs(study: optuna.Study) -> None:
    """Trials recorded before decorate_trial (history and summary as user attrs) still get a note."""
    trial = study.get_trials()[BEST_NUMBER]
    notes.write_trial_note(study, trial._trial_id)
    note = trial_note(study, trial._trial_id)
    assert f"## Trial {BEST_NUMBER}: complete" in note
    assert f"| parameter count | {128 * 75:,} |" in note and "| best epoch | 5 |" in note
    assert "| **5** (best) |" in note and "Total params: 9,600" in note


def test_learning_curve_svg_is_valid_and_has_both_panels() -> None:
    history = history_for(64)
    history["loss"][2] = math.nan  # a diverged epoch leaves a gap, not a broken chart
    root = ET.fromstring(notes.learning_curve_svg(history, objective="val_accuracy", best_epoch=4))
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {"loss", "accuracy", "training", "validation", "epoch"} <= texts
    # loss: training split in two by the NaN + validation; accuracy: training + validation
    assert len(list(root.iter(f"{SVG}polyline"))) == 5
    assert any(el.find(f"{SVG}title") is not None for el in root.iter(f"{SVG}line"))  # best-epoch marker


def test_learning_curve_svg_edge_cases() -> None:
    assert "no per-epoch history" in notes.learning_curve_svg({})
    one_epoch = ET.fromstring(notes.learning_curve_svg({"loss": [0.5], "val_loss": [0.6]}))
    assert len(list(one_epoch.iter(f"{SVG}circle"))) == 2
    # Without an objective the first non-loss metric is drawn.
    regression = notes.learning_curve_svg({"loss": [3, 2, 2, 2], "mae": [1.0, 0.9, 0.9, 0.9], "val_mae": [1, 1, 1, 1]})
    assert ">mae<" in regression


def test_upload_curves_to_running_and_finished_trials(study: optuna.Study, tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path)
    history = history_for(32)

    running = study.ask()  # as the worker does: upload before tell
    aid = notes.upload_trial_curves(study, running._trial_id, history, store)
    assert aid is not None
    (meta,) = get_all_artifact_meta(running, storage=study._storage)
    assert meta.mimetype == "image/svg+xml" and meta.filename == f"learning-curves-trial-{running.number}.svg"
    assert (tmp_path / aid).read_text().startswith("<svg")

    # A finished trial cannot take trial attrs; the dashboard's study-level record is used instead.
    done = study.get_trials()[0]
    aid = notes.upload_trial_curves(study, done._trial_id, history, store)
    assert aid is not None and (tmp_path / aid).is_file()
    assert f"dashboard:artifacts:{done._trial_id}:{aid}" in study._storage.get_study_system_attrs(study._study_id)


def test_failures_are_logged_never_raised(study: optuna.Study, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tuner_service.notes")
    assert notes.upload_trial_curves(study, 10_000, history_for(32), FileSystemArtifactStore(tmp_path)) is None
    notes.write_trial_note(study, 10_000)
    notes.write_study_note(object())  # type: ignore[arg-type]
    assert notes.upload_trial_curves(study, 1, history_for(32), None) is None  # no store: nothing to do, silently
    assert len(caplog.records) == 3, [r.getMessage() for r in caplog.records]
